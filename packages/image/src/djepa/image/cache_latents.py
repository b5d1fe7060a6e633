"""``image-cache-latents``: cache the VAE posterior moments of an ImageFolder (MAR ``main_cache.py``).

For every image: the moments ``cat(mean, logvar)`` of its centre crop and of the crop's
horizontal flip, one ``.npz`` per image plus ``manifest.json`` (layout:
:mod:`djepa.image.latents`). Resumable — run it again after an interruption and the images already
cached are skipped. Train on the cache with ``image-train --cached-latents OUT``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags

__all__ = ["CacheLatentsConfig", "run", "main"]


@dataclass(frozen=True)
class CacheLatentsConfig:
    """Cache VAE posterior moments (plain and flipped centre crops) of an ImageFolder."""

    vae: str
    """Autoencoder: diffusers:PATH, kl16:PATH or taesd:DIR."""
    data_dir: str
    """ImageFolder root (root/<class>/<image>), or a folder with train/ and val/."""
    output_dir: str
    """Cache folder (manifest.json + <class>/<file>.npz)."""
    image_size: int = 256
    """Centre-crop side in pixels."""
    batch_size: int = 32
    """Images per VAE call (each call encodes the crops and their flips)."""
    split: str = "train"
    """train or test (val/) when data_dir has split sub-folders."""
    num_workers: int = 0
    """DataLoader processes decoding the images."""
    synsets_file: str | None = None
    """Class-order file (e.g. ImageNet's synsets, for the standard 1000-class indices)."""
    max_images: int | None = None
    """Cache only the first N images."""
    latent_scale: float | None = None
    """Recorded in the manifest (moments are stored raw); default: the VAE's."""
    latent_shift: float | None = None
    """Recorded in the manifest; default: the VAE's."""
    kl16_config: str | None = None
    """JSON file of KL16Config fields for a non-standard kl16 checkpoint."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1, …"""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def run(cfg: CacheLatentsConfig) -> dict:
    """Write / complete the cache; returns the summary (also printed)."""
    import torch

    from djepa.image.latents import cache_latents
    from djepa.image.vae import load_vae

    if cfg.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    kl16 = json.loads(Path(cfg.kl16_config).read_text()) if cfg.kl16_config else None
    tok = load_vae(cfg.vae, cfg.image_size, scale=cfg.latent_scale, shift=cfg.latent_shift, kl16_config=kl16)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if cfg.device == "auto" else cfg.device))
    tok.to(device)
    summary = cache_latents(tok, cfg.data_dir, cfg.output_dir, split=cfg.split, batch_size=cfg.batch_size,
                            num_workers=cfg.num_workers, synsets_file=cfg.synsets_file,
                            max_images=cfg.max_images)
    print(f"image-cache-latents: {summary['cached']} cached, {summary['skipped']} already there, "
          f"{summary['failed']} unreadable; {summary['total']} images in {cfg.output_dir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-cache-latents``."""
    return run_main("image-cache-latents",
                    lambda: run(with_cpu_speed(parse(CacheLatentsConfig, argv, prog="image-cache-latents"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
