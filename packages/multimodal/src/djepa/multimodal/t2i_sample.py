"""``t2i-sample "prompt"``: generate images from text with a trained text-to-image D-JEPA
(Algorithm 1, paper §3.5; CFG against the null text).

Prompts come from the positional argument, ``--file prompts.txt`` (one per line; blank lines
are empty prompts = unconditional samples) or ``--eval-split seen|unseen|both`` (the shapes set's
evaluation prompts, ``--num-prompts`` of each part). Writes ``OUT/images/NNNNN.png``, a
``OUT/manifest.jsonl`` line per image (``file``, ``prompt``, ``seed``, ``split``: the layout
``t2i-eval`` reads), ``OUT/grid.png`` (a row per prompt, the prompt beside it; the first 32
prompts) and ``OUT/summary.json``; prints the paths.

Image ``i`` (in output order) draws its orders and noise from its own generator seeded
``--seed + i``: the same images at any ``--batch-size``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import SamplerFlags, resolve_device

__all__ = ["T2ISampleConfig", "load_t2i", "read_prompts", "run", "main", "MANIFEST"]

MANIFEST = "manifest.jsonl"
_GRID_PROMPTS = 32


@dataclass(frozen=True, kw_only=True)
class T2ISampleConfig:
    """Generate images from text prompts with a trained text-to-image D-JEPA."""

    prompt: tyro.conf.Positional[str | None] = None
    """The prompt ('' = an unconditional sample)."""
    sampler: SamplerFlags = field(default_factory=SamplerFlags)
    """Sampler settings of Algorithm 1 (§3.5), seed, device and precision (core SamplerFlags)."""
    checkpoint: str = "runs/t2i"
    """A t2i-train output folder, its pretrained/ export, or one checkpoint RUN/checkpoints/step_N."""
    file: str | None = None
    """A text file of prompts, one per line (instead of the positional prompt)."""
    eval_split: Literal["none", "seen", "unseen", "both"] = "none"
    """Sample the shapes set's evaluation prompts (seen / unseen combinations / both)."""
    num_prompts: int = 100
    """With --eval-split: prompts drawn from each part."""
    num_samples: int = 1
    """Images per prompt."""
    batch_size: int = 64
    """Images generated per batch."""
    output_dir: str = "samples/t2i"
    """Where images/, manifest.jsonl, grid.png and summary.json go."""
    text_encoder: str | None = None
    """Override the text-encoder folder recorded in the run (same model, moved)."""
    overwrite: bool = False
    """Replace the samples of an output folder that already holds some (refused otherwise)."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def load_t2i(path: str | Path, device: torch.device | str = "cpu", text_encoder: str | None = None):
    """``(model, tokenizer, text_encoder, info)`` of a text-to-image run (a run folder, its export
    or one checkpoint; :func:`djepa.core.runs.load_run`).

    Raises:
        UserError: a checkpoint of another modality, or a text encoder whose width differs from
            the model's. As :func:`~djepa.core.runs.load_run` and
            :class:`~djepa.multimodal.text_encoder.TextEncoder` otherwise.
    """
    import djepa.image.tokenizer  # noqa: F401  (register the image tokenizer kinds)
    import djepa.image.vae  # noqa: F401
    from djepa.core.runs import load_run
    from djepa.multimodal.t2i_train import MODALITY
    from djepa.multimodal.text_encoder import TextEncoder

    run = load_run(path, device, tokenizer=False)
    info = run.tokenizer_config
    if info.get("modality") != MODALITY or run.model.config.condition != "sequence":
        other = info.get("modality") or ("class-conditional image" if run.model.config.condition == "class"
                                         else f"condition={run.model.config.condition}")
        raise UserError(f"{path} is a {other} checkpoint, not a text-to-image one (train one with t2i-train)")
    run = load_run(path, device)
    rec = info.get("text_encoder") or {}
    enc = TextEncoder(text_encoder or rec.get("path"), int(rec.get("max_tokens", 64)), device)
    mc = run.model.config
    want = mc.condition_input_dim or mc.context_dim  # the text states' width the model takes in
    if enc.dim != want:
        raise UserError(f"text encoder {enc.path} gives {enc.dim}-d states but the model was trained on "
                        f"{want}-d ones")
    return run.model, run.tokenizer, enc, info


def read_prompts(cfg: T2ISampleConfig) -> list[tuple[str, str | None]]:
    """``[(prompt, split)]`` from the positional prompt, ``--file`` or ``--eval-split``.

    Raises:
        UserError: none or more than one source; a missing or empty file.
    """
    sources = [cfg.prompt is not None, cfg.file is not None, cfg.eval_split != "none"]
    if sum(sources) != 1:
        raise UserError('give exactly one of a prompt (t2i-sample "a red circle"), --file PROMPTS.txt '
                        'or --eval-split seen|unseen|both')
    if cfg.prompt is not None:
        return [(cfg.prompt, None)]
    if cfg.file is not None:
        p = Path(cfg.file)
        if not p.is_file():
            raise UserError(f"prompt file {p} not found")
        lines = p.read_text(encoding="utf-8").splitlines()
        if not lines:
            raise UserError(f"prompt file {p} is empty")
        return [(line.strip(), None) for line in lines]
    from djepa.multimodal import shapes

    if cfg.num_prompts < 1:
        raise UserError(f"--num-prompts must be >= 1, got {cfg.num_prompts}")
    parts = ["seen", "unseen"] if cfg.eval_split == "both" else [cfg.eval_split]
    return [(c, part) for part in parts for _, c in shapes.eval_prompts(part, cfg.num_prompts)]


def run(cfg: T2ISampleConfig) -> dict:
    """Generate and write the images; returns the summary (also written and printed)."""
    from djepa.core.rng import row_generators
    from djepa.image.grid import to_uint8
    from djepa.image.tokenizer import fraction_outside
    from djepa.multimodal.preview import sample_images, save_prompt_grid
    from PIL import Image

    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise UserError("--num-samples and --batch-size must be >= 1")
    prompts = read_prompts(cfg)
    device = resolve_device(cfg.sampler.device)
    cfg.sampler.autocast(device)  # validates --precision before anything is loaded
    out = Path(cfg.output_dir)
    if (out / MANIFEST).exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds samples ({MANIFEST}); pass --overwrite or choose another --output-dir")
    model, tokenizer, encoder, info = load_t2i(cfg.checkpoint, device, cfg.text_encoder)
    cfg.sampler.prepare_model(model)
    sampler = cfg.sampler.sampler_config(model.config.seq_len)
    for k, (p, _) in enumerate(prompts):
        if not p.strip():
            print(f"t2i-sample: prompt {k + 1} is empty: sampling unconditionally (the null text)", file=sys.stderr)
    rows = [(p, s) for p, s in prompts for _ in range(cfg.num_samples)]
    images_dir = out / "images"
    if images_dir.is_dir():
        for f in images_dir.glob("*.png"):
            f.unlink()
    images_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records, images, outside, total = [], [], 0.0, 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, len(rows), cfg.batch_size):
            chunk = rows[start:start + cfg.batch_size]
            seeds = list(range(cfg.sampler.seed + start, cfg.sampler.seed + start + len(chunk)))
            with cfg.sampler.autocast(device):
                imgs, tokens = sample_images(model, tokenizer, encoder, [p for p, _ in chunk], sampler,
                                             row_generators(seeds, device), device)
            outside += fraction_outside(tokens, tokenizer.value_range) * tokens.numel()
            total += tokens.numel()
            for j, (arr, (p, split)) in enumerate(zip(to_uint8(imgs), chunk)):
                name = f"images/{start + j:05d}.png"
                Image.fromarray(arr).save(out / name)
                records.append(dict(file=name, prompt=p, seed=seeds[j], split=split))
            images.append(imgs)
    for w in caught:
        if "truncated" in str(w.message):
            print(f"t2i-sample: warning: {str(w.message).splitlines()[0]}", file=sys.stderr)
    seconds = time.perf_counter() - t0
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records))
    images_t = torch.cat(images)
    uniq = [p for p, _ in prompts][:_GRID_PROMPTS]
    grid = save_prompt_grid(images_t[:len(uniq) * cfg.num_samples], uniq, cfg.num_samples, out / "grid.png")
    summary = dict(images=len(rows), prompts=len(prompts), seconds=round(seconds, 2),
                   seconds_per_image=round(seconds / len(rows), 4),
                   fraction_outside_range=outside / max(total, 1), grid=str(grid), manifest=str(out / MANIFEST),
                   sampler=dict(ar_steps=sampler.num_ar_steps, denoise_steps=sampler.num_denoise_steps,
                                cfg=sampler.cfg_scale, temperature=sampler.temperature, seed=cfg.sampler.seed),
                   checkpoint=str(cfg.checkpoint))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if len(records) <= 16:
        for r in records:
            print(out / r["file"])
    else:
        print(f"{images_dir}/ ({len(records)} PNGs)")
    print(grid)
    print(out / MANIFEST)
    print(f"t2i-sample: {len(rows)} images in {seconds:.1f} s ({seconds / len(rows):.3f} s/img), "
          f"cfg {sampler.cfg_scale}, {sampler.num_ar_steps} AR steps")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``t2i-sample``."""
    return run_main("t2i-sample", lambda: run(with_cpu_speed(parse(T2ISampleConfig, argv, prog="t2i-sample"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
