"""``image-sample``: generate class-conditional images with Algorithm 1 (paper §3.5).

Writes one PNG per image at ``OUTPUT/<class_id>/<index>.png`` (ImageFolder layout, readable by
the evaluation tools) and a labelled ``OUTPUT/grid.png``; prints the fraction of sampled values
outside the tokenizer's range *before* the final clamp (a health metric, FIDELITY.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from djepa.core.cli import UserError, parse, run_main

__all__ = ["ImageSampleConfig", "load_generator", "parse_classes", "run", "main"]


@dataclass(frozen=True)
class ImageSampleConfig:
    """Sample images from a trained D-JEPA (Algorithm 1)."""

    checkpoint: str
    """A training output folder (its pretrained/ EMA export is used) or a save_pretrained folder."""
    classes: str = "all"
    """Class ids to sample: 'all' or a comma list such as 0,3,7."""
    num_per_class: int = 10
    """Images per class."""
    ar_steps: int | None = None
    """AR steps K (default: the number of tokens N, one token per step for small grids, capped at 64)."""
    denoise_steps: int = 100
    """Reverse-process steps of the denoising MLP (respaced DDPM or ODE steps)."""
    cfg: float = 3.0
    """Classifier-free guidance scale (1 = off), linear schedule."""
    cfg_schedule: str = "linear"
    """CFG schedule: linear (MAR/Muse) or constant."""
    temperature: float = 1.0
    """Temperature τ of the sampler noise (paper: 0.97–0.99 with cfg)."""
    flow_solver: str = "heun"
    """ODE solver for flow-matching models: euler or heun."""
    seed: int = 0
    """Seed of orders and noise: same seed, same images."""
    batch_size: int = 100
    """Images generated per batch."""
    output_dir: str = "samples"
    """Where the PNGs and grid.png go."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1, …"""
    precision: str = "bf16"
    """bf16 (autocast, as trained; fp32 denoising math) or fp32."""
    overwrite: bool = False
    """Replace the PNGs of an output folder that already holds samples (refused otherwise)."""


def resolve_pretrained(path: str | Path) -> Path:
    """A save_pretrained folder from a training output folder or the folder itself.

    Raises:
        FileNotFoundError: neither ``path/config.json`` nor ``path/pretrained/config.json``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint folder {p} does not exist")
    for cand in (p, p / "pretrained"):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand
    raise FileNotFoundError(
        f"{p} holds no exported model (config.json + model.safetensors, or pretrained/ inside a "
        f"training folder); if training was interrupted, resume it with image-train --output-dir {p}")


def load_generator(path: str | Path, device: torch.device | str = "cpu"):
    """Load ``(model, tokenizer, info)`` for sampling from a training or pretrained folder."""
    from djepa.core.model import DJEPA
    from djepa.image.tokenizer import PixelTokenizer

    folder = resolve_pretrained(path)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        tok_file = folder.parent / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json describing the image tokenizer")
    info = json.loads(tok_file.read_text())
    model = DJEPA.from_pretrained(folder, map_location=device).eval()
    if info.get("kind") == "vae":
        from djepa.image.vae import vae_tokenizer_from_description

        tokenizer = vae_tokenizer_from_description(info)
    else:
        tokenizer = PixelTokenizer(info["channels"], info["image_size"], info["patch_size"])
    if tokenizer.token_dim != model.config.token_dim or tuple(tokenizer.grid) != model.config.grid:
        raise UserError(f"{tok_file} does not match the model in {folder} "
                        f"(tokens {tokenizer.token_dim}×{tokenizer.grid} vs {model.config.token_dim}×{model.config.grid})")
    return model, tokenizer, info


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
    from djepa.core.config import SamplerConfig
    from djepa.core.sampler import generate
    from djepa.image.grid import save_image_grid, save_images_imagefolder
    from djepa.image.tokenizer import fraction_outside

    if cfg.num_per_class < 1 or cfg.batch_size < 1:
        raise UserError("--num-per-class and --batch-size must be >= 1")
    if cfg.precision not in ("bf16", "fp32"):
        raise UserError(f"--precision must be bf16 or fp32, got {cfg.precision!r}")
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    model, tokenizer, info = load_generator(cfg.checkpoint, device)
    classes = parse_classes(cfg.classes, model.config.num_classes)
    n = model.config.seq_len
    sampler = SamplerConfig(num_ar_steps=cfg.ar_steps or min(n, 64), cfg_scale=cfg.cfg,
                            cfg_schedule=cfg.cfg_schedule, temperature=cfg.temperature,
                            num_denoise_steps=cfg.denoise_steps, flow_solver=cfg.flow_solver)
    labels = torch.tensor(classes).repeat_interleave(cfg.num_per_class)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
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
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            tokens = generate(model, lab, sampler, generator=gen,
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
                                cfg=sampler.cfg_scale, temperature=sampler.temperature))
    print(f"image-sample: {len(labels)} images in {seconds:.1f} s "
          f"({seconds / len(labels):.3f} s/img); values outside {tokenizer.value_range} before clamp: "
          f"{100 * summary['fraction_outside_range']:.3f} %; grid: {grid_path}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-sample``."""
    return run_main("image-sample", lambda: run(parse(ImageSampleConfig, argv, prog="image-sample")) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
