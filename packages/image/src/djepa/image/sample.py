"""``image-sample``: generate class-conditional images with Algorithm 1 (paper §3.5).

Writes one PNG per image at ``OUTPUT/<class_id>/<index>.png`` (ImageFolder layout, readable by
the evaluation tools) and a labelled ``OUTPUT/grid.png``; prints the fraction of sampled values
outside the tokenizer's range *before* the final clamp (a health metric, FIDELITY.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import SamplerFlags, resolve_device

__all__ = ["ImageSampleConfig", "load_checkpoint_ema", "load_generator", "parse_classes", "run", "main"]


@dataclass(frozen=True, kw_only=True)
class ImageSampleConfig:
    """Sample images from a trained D-JEPA (Algorithm 1)."""

    sampler: SamplerFlags = field(default_factory=SamplerFlags)
    """Sampler settings of Algorithm 1 (§3.5), seed, device and precision: the core's
    SamplerFlags, shared by every sampling command."""
    checkpoint: str
    """A training output folder (its pretrained/ EMA export is used), a save_pretrained folder, or
    one checkpoint RUN/checkpoints/step_XXXXXXXX (its EMA weights)."""
    classes: str = "all"
    """Class ids to sample: 'all' or a comma list such as 0,3,7."""
    num_per_class: int = 10
    """Images per class."""
    batch_size: int = 100
    """Images generated per batch."""
    output_dir: str = "samples"
    """Where the PNGs and grid.png go."""
    overwrite: bool = False
    """Replace the PNGs of an output folder that already holds samples (refused otherwise)."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def resolve_pretrained(path: str | Path) -> Path:
    """A save_pretrained folder from a training output folder or the folder itself
    (:func:`djepa.core.runs.resolve_run`).

    Raises:
        FileNotFoundError: neither ``path/config.json`` nor ``path/pretrained/config.json``.
    """
    from djepa.core.runs import resolve_run

    return resolve_run(path)[1]


def load_checkpoint_ema(step_dir: str | Path, device: torch.device | str = "cpu"):
    """The EMA weights of one training checkpoint (``RUN/checkpoints/step_XXXXXXXX``) as a model,
    verified against the checkpoint's manifest (:func:`djepa.core.runs.load_run`).

    Returns:
        ``(model, run_dir)``: the :class:`~djepa.core.model.DJEPA` in eval mode and the run folder.

    Raises:
        As :func:`djepa.core.runs.load_run`.
    """
    from djepa.core.runs import load_run

    run = load_run(step_dir, device, tokenizer=False)
    return run.model, run.run_dir


def load_generator(path: str | Path, device: torch.device | str = "cpu"):
    """Load ``(model, tokenizer, info)`` for sampling from a training output folder (its
    ``pretrained/`` export), a save_pretrained folder, or one training checkpoint
    ``RUN/checkpoints/step_XXXXXXXX`` (its EMA weights): :func:`djepa.core.runs.load_run`;
    ``info`` is the recorded ``tokenizer.json`` (with ``class_names``).

    Raises:
        As :func:`djepa.core.runs.load_run`.
    """
    import djepa.image.tokenizer  # noqa: F401  (register the image tokenizer kinds, also where the
    import djepa.image.vae  # noqa: F401  installed 'djepa.tokenizers' entry points are missing)
    from djepa.core.runs import load_run

    run = load_run(path, device)
    return run.model, run.tokenizer, run.tokenizer_config


def parse_classes(spec: str, num_classes: int) -> list[int]:
    """``'all'`` or ``'0,3,7'`` → list of ids. Raises ``UserError`` for bad or out-of-range ids."""
    if spec.strip().lower() == "all":
        return list(range(num_classes))
    try:
        ids = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--classes must be 'all' or comma-separated integers, got {spec!r}") from None
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad or not ids:
        raise UserError(f"class id {bad[0] if bad else spec!r} is out of range: the model has "
                        f"{num_classes} classes (0..{num_classes - 1})")
    return ids


def run(cfg: ImageSampleConfig) -> dict:
    """Generate and write the images; returns a summary dict (also printed)."""
    from djepa.core.rng import row_generators
    from djepa.core.sampler import generate
    from djepa.image.grid import save_image_grid, save_images_imagefolder
    from djepa.image.tokenizer import fraction_outside

    if cfg.num_per_class < 1 or cfg.batch_size < 1:
        raise UserError("--num-per-class and --batch-size must be >= 1")
    device = resolve_device(cfg.sampler.device)
    cfg.sampler.autocast(device)  # validates --precision before anything is loaded
    model, tokenizer, info = load_generator(cfg.checkpoint, device)
    cfg.sampler.prepare_model(model)
    classes = parse_classes(cfg.classes, model.config.num_classes)
    sampler = cfg.sampler.sampler_config(model.config.seq_len)
    labels = torch.tensor(classes).repeat_interleave(cfg.num_per_class)
    out = Path(cfg.output_dir)
    old = [p for p in out.glob("*/*.png") if p.parent.name.isdigit()] if out.is_dir() else []
    if old and not cfg.overwrite:
        raise UserError(f"{out} already holds {len(old)} sample PNGs; pass --overwrite to replace "
                        f"them or choose another --output-dir (mixing runs would corrupt evaluations)")
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    images, outside, total = [], 0.0, 0
    t0 = time.perf_counter()
    for start in range(0, len(labels), cfg.batch_size):
        lab = labels[start:start + cfg.batch_size].to(device)
        with cfg.sampler.autocast(device):
            # image i draws from its own stream seeded seed + i: the same images at any --batch-size
            gens = row_generators(range(cfg.sampler.seed + start, cfg.sampler.seed + start + len(lab)), device)
            tokens = generate(model, lab, sampler, generators=gens,
                              clip_range=tokenizer.value_range).float().cpu()
        outside += fraction_outside(tokens, tokenizer.value_range) * tokens.numel()
        total += tokens.numel()
        images.append(tokenizer.decode(tokens))
    seconds = time.perf_counter() - t0
    images_t = torch.cat(images)
    save_images_imagefolder(images_t, labels.tolist(), out)
    names = info.get("class_names") or [str(i) for i in range(model.config.num_classes)]
    grid_path = out / "grid.png"
    save_image_grid(images_t, grid_path, nrow=cfg.num_per_class,
                    labels=[f"{c}: {names[c]}" for c in classes])
    summary = dict(images=len(labels), classes=classes, seconds=round(seconds, 2),
                   seconds_per_image=round(seconds / len(labels), 4),
                   fraction_outside_range=outside / max(total, 1), grid=str(grid_path),
                   sampler=dict(ar_steps=sampler.num_ar_steps, denoise_steps=sampler.num_denoise_steps,
                                cfg=sampler.cfg_scale, temperature=sampler.temperature),
                   compiled=cfg.sampler.compile, precision=cfg.sampler.precision)
    print(f"image-sample: {len(labels)} images in {seconds:.1f} s "
          f"({seconds / len(labels):.3f} s/img); values outside {tokenizer.value_range} before clamp: "
          f"{100 * summary['fraction_outside_range']:.3f} %; grid: {grid_path}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-sample``."""
    return run_main("image-sample", lambda: run(with_cpu_speed(parse(ImageSampleConfig, argv, prog="image-sample"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
