"""``t2i-eval --samples DIR``: score text-to-image samples of the shapes set with the weight-free
judge (:mod:`djepa.multimodal.judge`, GenEval-style object / colour / count / relation accuracy),
split by seen and unseen combinations; optionally FID against a folder of real images through the
image package's evaluator (``--reference DIR``, :mod:`djepa.image.evaluate`).

``DIR`` is a ``t2i-sample`` output: ``manifest.jsonl`` (``file``, ``prompt``, ``split``) and the
PNGs it names. A record's split is its ``split`` field, else :func:`~djepa.multimodal.shapes.is_seen`
of its prompt. Prompts that are not captions of the shapes set are counted and left out.
Prints one line per group and writes ``DIR/eval.json`` (or ``--output``) with the per-image
verdicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags

__all__ = ["T2IEvalConfig", "evaluate_samples", "run", "main"]


@dataclass(frozen=True)
class T2IEvalConfig:
    """Judge text-to-image samples of the shapes set (object, colour, count, relation accuracy)."""

    samples: str
    """A t2i-sample output folder (manifest.jsonl + images/)."""
    output: str | None = None
    """Write the results here as JSON (default: SAMPLES/eval.json)."""
    reference: str | None = None
    """Also compute FID of the samples against this folder of real images (image-eval's protocol)."""
    device: str = "auto"
    """Device of the Inception network for FID."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def _fmt(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def evaluate_samples(folder: str | Path) -> dict:
    """Judge every image of a ``t2i-sample`` folder; returns ``{"groups": {seen, unseen, all}:
    summaries, "images": [...], "skipped": n}``.

    Raises:
        FileNotFoundError: no manifest or a missing PNG. ValueError: a malformed manifest line.
    """
    from djepa.multimodal import judge, shapes
    from djepa.multimodal.t2i_sample import MANIFEST

    folder = Path(folder)
    man = folder / MANIFEST
    if not man.is_file():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST} (write samples with t2i-sample --output-dir {folder})")
    verdicts: dict[str, list] = {"seen": [], "unseen": []}
    images, skipped = [], 0
    for k, line in enumerate(man.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            file, prompt = rec["file"], rec["prompt"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{man} line {k + 1} is not a sample record: {e}") from None
        try:
            p = shapes.parse_caption(prompt)
        except ValueError:
            skipped += 1
            continue
        path = folder / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} (named in {man} line {k + 1}) is missing")
        split = rec.get("split") or ("seen" if shapes.is_seen(p) else "unseen")
        if split not in verdicts:
            raise ValueError(f"{man} line {k + 1}: unknown split {split!r}")
        v = judge.judge_image(p, judge.load_png(path))
        verdicts[split].append(v)
        images.append(dict(file=file, prompt=prompt, split=split, **judge.verdict_dict(v)))
    if not images:
        raise ValueError(f"{man}: no sample with a prompt of the shapes set to judge ({skipped} other prompts)")
    groups = {name: judge.summarise(vs) for name, vs in verdicts.items() if vs}
    groups["all"] = judge.summarise([v for vs in verdicts.values() for v in vs])
    return dict(groups=groups, images=images, skipped=skipped, samples=str(folder))


def run(cfg: T2IEvalConfig) -> dict:
    """Judge (and optionally FID); prints one line per group; returns the results."""
    result = evaluate_samples(cfg.samples)
    for name, g in result["groups"].items():
        print(f"t2i-eval: {name:6s} n={g['n']:4d}  object+colour {_fmt(g['object_colour'])}  "
              f"count {_fmt(g['count'])} (n={g['n_count']})  relation {_fmt(g['relation'])} "
              f"(n={g['n_relation']})  all correct {_fmt(g['correct'])}")
    if result["skipped"]:
        print(f"t2i-eval: {result['skipped']} sample(s) with prompts outside the shapes set were not judged")
    if cfg.reference:
        from djepa.image.evaluate import ImageEvalConfig
        from djepa.image.evaluate import run as image_eval

        if not Path(cfg.reference).is_dir():
            raise UserError(f"--reference {cfg.reference} is not a folder of images")
        fid = image_eval(ImageEvalConfig(samples=str(Path(cfg.samples) / "images"), reference=cfg.reference,
                                         device=cfg.device, progress=False, fid_method="auto"))
        result["fid"] = dict(fid=fid["fid"], num_samples=fid["num_samples"], num_reference=fid["num_reference"],
                             feature_extractor=fid["feature_extractor"])
    out = Path(cfg.output) if cfg.output else Path(cfg.samples) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"t2i-eval: results in {out}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``t2i-eval``."""
    return run_main("t2i-eval", lambda: run(with_cpu_speed(parse(T2IEvalConfig, argv, prog="t2i-eval"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
