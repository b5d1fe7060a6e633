"""``mm-eval``: the text+image model on the shapes set's evaluation split (issue 16).

Three numbers per split (``seen``: combinations from training; ``unseen``: a held-out
colour–shape pair or relation combination — :func:`djepa.multimodal.shapes.eval_prompts`):

* **text → image**: ``<|user|> draw CAPTION <|assistant|>`` then the image (the span forced, as
  ``/draw`` does), judged by the text-to-image judge (:mod:`djepa.multimodal.judge`: object +
  colour, count, relation, correct); also the share of prompts after which the model *itself*
  puts ``<|visual_start|>`` first (greedy) — whether it learned to emit the start token.
* **image → text**: a fresh rendering of the prompt (its own seed; in the layout the model was
  trained on, ``--layout``), ``what is in this picture?``,
  greedy decoding; the answer is parsed (:func:`~djepa.multimodal.shapes.parse_caption`):
  ``attributes`` = the named objects (colour + shape, and the count) equal the truth,
  ``relation`` = the relation prompts' objects and axis/order right, ``correct`` = the same
  meaning, ``parsed`` = the answer is a caption of the set at all.
* **perplexity** of the captions alone (``<bos> caption <eos>``, every phrasing of the split's
  prompts): ``exp(mean next-token CE)`` over their tokens; the unseen split's captions never
  occur in training.

Writes ``OUT/mm_eval.json`` (numbers, settings, per-prompt records) and ``OUT/t2i_grid.png``.
Image ``i`` draws its order and noise from its own generator (``--seed + i``): the same images at
any ``--batch-size``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from djepa.core.cli import UserError, parse, run_main
from djepa.core.sampler_flags import SamplerFlags, resolve_device

__all__ = ["MMEvalConfig", "run", "main", "evaluate_t2i", "evaluate_i2t", "caption_perplexity"]


@dataclass(frozen=True)
class MMEvalConfig:
    """Evaluate a text+image D-JEPA (mm-train) on the shapes evaluation split."""

    checkpoint: str = "runs/mm"
    """An mm-train run folder, its pretrained/ export, or one checkpoint."""
    output_dir: str = "eval/mm"
    """Where mm_eval.json and t2i_grid.png go."""
    num_prompts: int = 200
    """Prompts of each split (seen / unseen)."""
    splits: Literal["both", "seen", "unseen"] = "both"
    """Which evaluation splits."""
    batch_size: int = 50
    """Rows generated / decoded together."""
    skip_t2i: bool = False
    """Skip text → image (the slow part)."""
    layout: Literal["run", "random", "slots"] = "run"
    """Layout of the images rendered for image → text: ``run`` = the one the model was trained on
    (the run folder's config.json; ``random`` when it records none), or a layout of
    :func:`djepa.multimodal.shapes.sample_scene`."""
    sampler: SamplerFlags = field(default_factory=lambda: SamplerFlags(ar_steps=16, denoise_steps=50, precision="fp32"))
    """Image sampling (Algorithm 1): AR steps, cfg, temperature, denoising steps, seed, device."""


def _draw_rows(model, captions):
    from djepa.multimodal.mm_sample import user_turn
    from djepa.multimodal.mm_sequence import Text

    vs = model.tokenizer().visual_start
    return [user_turn(model, f"draw {c}", None, True) + [Text((vs,))] for c in captions]


@torch.no_grad()
def evaluate_t2i(model, pixel, prompts, sampler, *, seed: int, batch_size: int):
    """Judge verdicts, decoded images ``[n, 3, H, W]`` and the emits-start share for ``prompts``
    (``(Prompt, caption)`` pairs)."""
    from djepa.core.rng import row_generators
    from djepa.multimodal.judge import judge_image
    from djepa.multimodal.mm_sample import encode_prefix, user_turn

    verdicts, images, starts = [], [], 0
    vs = model.tokenizer().visual_start
    for lo in range(0, len(prompts), batch_size):
        part = prompts[lo:lo + batch_size]
        pre = encode_prefix(model, [user_turn(model, f"draw {c}", None, True) for _, c in part])
        starts += int((model.logits(pre.h[:, -1]).argmax(-1) == vs).sum())
        from djepa.multimodal.mm_sample import generate_images

        toks = generate_images(model, _draw_rows(model, [c for _, c in part]), sampler,
                               generators=row_generators(range(seed + lo, seed + lo + len(part))))
        imgs = pixel.decode(toks.cpu()).clamp(0, 1)
        images.append(imgs)
        verdicts += [judge_image(p, im) for (p, _), im in zip(part, imgs)]
    return verdicts, torch.cat(images), starts / max(1, len(prompts))


@torch.no_grad()
def evaluate_i2t(model, pixel, prompts, *, seed: int, batch_size: int, layout: str = "random"):
    """Per prompt: ``dict(answer, parsed, attributes, relation, correct)`` (module docstring);
    the images are rendered with ``layout`` (:func:`djepa.multimodal.shapes.sample_scene`)."""
    from djepa.multimodal import shapes
    from djepa.multimodal.mm_sample import TextSampling, decode_text, user_turn

    tok = model.tokenizer()
    out = []
    for lo in range(0, len(prompts), batch_size):
        part = prompts[lo:lo + batch_size]
        rows = []
        for j, (p, _) in enumerate(part):
            img = shapes.render_scene(p, random.Random(50_000 + seed + lo + j), layout=layout)
            rows.append(user_turn(model, "what is in this picture?", pixel.encode(img[None]).float()[0], True))
        ids, _ = decode_text(model, rows, TextSampling(0.0, 1.0, 24), stop_on_visual=True)
        for (p, _), i in zip(part, ids):
            answer = tok.decode(i).strip()
            rec = dict(prompt=p.canonical, answer=answer, parsed=False, attributes=False, relation=None,
                       correct=False)
            if p.kind == "relation":
                rec["relation"] = False
            try:
                q = shapes.parse_caption(answer)
            except ValueError:
                out.append(rec)
                continue
            rec["parsed"] = True
            rec["attributes"] = sorted(q.objects) == sorted(p.objects) and q.count == p.count and q.kind == p.kind
            if p.kind == "relation":
                rec["relation"] = q == p
            rec["correct"] = q == p
            out.append(rec)
    return out


@torch.no_grad()
def caption_perplexity(model, captions: list[str], batch_size: int = 64) -> float:
    """``exp(mean next-token CE)`` of ``<bos> caption <eos>`` over all predicted tokens."""
    import torch.nn.functional as F

    from djepa.multimodal.mm_sequence import IGNORE, attention_mask, pack, text_example

    tok = model.tokenizer()
    dev = next(model.parameters()).device
    total, count = 0.0, 0
    for lo in range(0, len(captions), batch_size):
        b = pack([text_example(tok, c) for c in captions[lo:lo + batch_size]], model.config.token_dim).to(dev)
        h, _ = model.encode(model.embed(b), b.positions, attention_mask(b))
        sel = b.targets != IGNORE
        total += float(F.cross_entropy(model.logits(h[sel]), b.targets[sel], reduction="sum"))
        count += int(sel.sum())
    return math.exp(total / max(1, count))


def _mean(vals):
    vals = [bool(v) for v in vals if v is not None]
    return None if not vals else sum(vals) / len(vals)


def run(cfg: MMEvalConfig) -> int:
    """Evaluate; print one summary line per split; write ``OUT/mm_eval.json``."""
    from djepa.core.train.observe import make_grid, write_png
    from djepa.multimodal import shapes
    from djepa.multimodal.judge import summarise
    from djepa.multimodal.mm_model import load_mm

    if cfg.num_prompts < 1 or cfg.batch_size < 1:
        raise UserError("--num-prompts and --batch-size must be >= 1")
    if cfg.sampler.compile:
        raise UserError("--compile is not supported for the text+image model (its blocks run with a KV cache)")
    device = resolve_device(cfg.sampler.device)
    model, pixel, run_cfg = load_mm(cfg.checkpoint, device)
    sampler = cfg.sampler.sampler_config(model.config.num_image_tokens)
    layout = cfg.layout if cfg.layout != "run" else str(run_cfg.get("mm", {}).get("layout", "random"))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = ["seen", "unseen"] if cfg.splits == "both" else [cfg.splits]
    result: dict = dict(checkpoint=str(cfg.checkpoint), sampler=dataclasses.asdict(sampler),
                        num_prompts=cfg.num_prompts, seed=cfg.sampler.seed, i2t_layout=layout, splits={})
    grids = []
    for split in splits:
        prompts = shapes.eval_prompts(split, cfg.num_prompts, seed=cfg.sampler.seed)
        rec: dict = {}
        t0 = time.perf_counter()
        if not cfg.skip_t2i:
            with cfg.sampler.autocast(device):
                verdicts, images, starts = evaluate_t2i(model, pixel, prompts, sampler, seed=cfg.sampler.seed,
                                                        batch_size=cfg.batch_size)
            rec["t2i"] = dict(summarise(verdicts), emits_visual_start=starts, seconds=round(time.perf_counter() - t0, 1))
            grids.append(images[:32])
        t1 = time.perf_counter()
        i2t = evaluate_i2t(model, pixel, prompts, seed=cfg.sampler.seed, batch_size=cfg.batch_size, layout=layout)
        rec["i2t"] = dict(n=len(i2t), parsed=_mean(r["parsed"] for r in i2t),
                          attributes=_mean(r["attributes"] for r in i2t), relation=_mean(r["relation"] for r in i2t),
                          correct=_mean(r["correct"] for r in i2t), seconds=round(time.perf_counter() - t1, 1),
                          examples=i2t[:20])
        caps = sorted({c for p, _ in prompts for c in shapes.captions(p)})
        rec["perplexity"] = dict(value=caption_perplexity(model, caps), num_captions=len(caps))
        result["splits"][split] = rec
        t2i = rec.get("t2i", {})
        fmt = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        print(f"mm-eval {split}: t2i object+colour {fmt(t2i.get('object_colour'))} relation {fmt(t2i.get('relation'))} "
              f"count {fmt(t2i.get('count'))} correct {fmt(t2i.get('correct'))} | i2t attributes "
              f"{fmt(rec['i2t']['attributes'])} relation {fmt(rec['i2t']['relation'])} correct "
              f"{fmt(rec['i2t']['correct'])} | caption perplexity {rec['perplexity']['value']:.3f}")
    path = out / "mm_eval.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if grids:
        write_png(out / "t2i_grid.png", make_grid(torch.cat(grids)))
    print(f"mm-eval: wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mm-eval``."""
    return run_main("mm-eval", lambda: run(parse(MMEvalConfig, argv, prog="mm-eval")))


if __name__ == "__main__":
    raise SystemExit(main())
