"""``image-compute-scale``: the latent scale ``1 / std`` of a VAE over a dataset.

MAR's KL-16 scale 0.2325 (FIDELITY.md "Latents") is ``1 / std`` of its ImageNet latents — the
same recipe as LDM's ``scale_by_std`` (``1 / z.flatten().std()``): the token ``(z − shift) · scale``
then has unit standard deviation. This CLI encodes the centre crops of an ImageFolder (no flip),
draws ``z`` from the posterior (``--posterior sample``, what training sees; or its ``mean``), and
accumulates in float64 over every latent value ``z``:

* ``std`` = the (population) standard deviation of all values → ``scale = 1 / std``;
* ``mean`` (a candidate ``--latent-shift``), ``rms_scale = 1 / sqrt(E[(z − shift)²])`` for the given
  ``--shift`` (equal to ``scale`` when ``shift`` is the mean);
* per-channel means and stds.

It prints them and writes them as JSON (``--output``, default ``OUTPUT = latent_scale.json``).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags

__all__ = ["ComputeScaleConfig", "latent_statistics", "run", "main"]


@dataclass(frozen=True)
class ComputeScaleConfig:
    """Measure 1 / std of a VAE's latents over an ImageFolder (how MAR got 0.2325)."""

    vae: str
    """Autoencoder: diffusers:PATH, kl16:PATH or taesd:DIR."""
    data_dir: str
    """ImageFolder root (root/<class>/<image>), or a folder with train/ and val/."""
    image_size: int = 256
    """Centre-crop side in pixels."""
    max_images: int | None = None
    """Use only the first N images (sorted by class folder, then file)."""
    split: str = "train"
    """train or test (val/) when data_dir has split sub-folders."""
    posterior: Literal["sample", "mean"] = "sample"
    """Posterior sample (what training sees) or its mean."""
    shift: float = 0.0
    """Shift subtracted before the RMS-based scale (rms_scale)."""
    batch_size: int = 16
    """Images per VAE call."""
    seed: int = 0
    """Seed of the posterior samples."""
    output: str = "latent_scale.json"
    """JSON file for the statistics."""
    kl16_config: str | None = None
    """JSON file of KL16Config fields for a non-standard kl16 checkpoint."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def latent_statistics(tokenizer, images, posterior: str = "sample", shift: float = 0.0,
                      generator: torch.Generator | None = None) -> dict:
    """Float64 statistics of raw latents over an iterable of image batches.

    Args:
        tokenizer: a :class:`~djepa.image.vae.VAETokenizer`.
        images: iterable of ``[B, 3, H, W]`` float batches in ``[0, 1]``.
        posterior: ``"sample"`` (``mean + exp(logvar/2)·ε``) or ``"mean"``.
        shift: for ``rms_scale``.
        generator: RNG of the samples.

    Returns:
        dict with ``scale`` (= 1/std), ``std``, ``mean``, ``rms_scale``, ``channel_mean``,
        ``channel_std`` (lists of ``C_lat``), ``num_images``, ``num_values``.

    Raises:
        ValueError: no image, or zero variance.
    """
    c = tokenizer.latent_channels
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    count = 0  # values per channel
    n_img = 0
    for x in images:
        mean, logvar = tokenizer.encode_moments(x)
        z = tokenizer.sample_latents(mean, logvar, generator) if posterior == "sample" else mean
        z = z.double().cpu()
        s1 += z.sum(dim=(0, 2, 3))
        s2 += (z * z).sum(dim=(0, 2, 3))
        count += z.shape[0] * z.shape[2] * z.shape[3]
        n_img += z.shape[0]
    if n_img == 0:
        raise ValueError("no image to measure")
    ch_mean = s1 / count
    ch_var = (s2 / count - ch_mean**2).clamp_min(0)
    mu = float(s1.sum() / (count * c))
    var = float(s2.sum() / (count * c)) - mu**2
    if var <= 0:
        raise ValueError("the latents have zero variance")
    ms_shift = float(s2.sum() / (count * c)) - 2 * shift * mu + shift**2
    std = math.sqrt(var)
    return dict(scale=1.0 / std, std=std, mean=mu, rms_scale=1.0 / math.sqrt(ms_shift), shift=shift,
                channel_mean=ch_mean.tolist(), channel_std=ch_var.sqrt().tolist(),
                num_images=n_img, num_values=count * c, posterior=posterior)


def run(cfg: ComputeScaleConfig) -> dict:
    """Compute, print and write the statistics; returns them."""
    from djepa.image.datasets import build_dataset
    from djepa.image.latents import load_center_crop
    from djepa.image.vae import load_vae

    kl16 = json.loads(Path(cfg.kl16_config).read_text()) if cfg.kl16_config else None
    tok = load_vae(cfg.vae, cfg.image_size, kl16_config=kl16)
    ds = build_dataset("imagefolder", cfg.data_dir, cfg.image_size, split=cfg.split, hflip=False)
    paths = [p for p, _ in ds.samples][: cfg.max_images]
    if not paths:
        raise UserError(f"no image in {cfg.data_dir}")
    if cfg.batch_size < 1:
        raise UserError("--batch-size must be >= 1")

    def batches():
        from tqdm import tqdm

        for i in tqdm(range(0, len(paths), cfg.batch_size), desc="image-compute-scale", unit="batch"):
            crops = []
            for p in paths[i:i + cfg.batch_size]:
                try:
                    crops.append(load_center_crop(p, cfg.image_size))
                except Exception as e:  # noqa: BLE001 — any decoder failure: reported, skipped
                    warnings.warn(f"skipping unreadable image {p}: {type(e).__name__}: {e}", stacklevel=2)
            if crops:
                yield torch.stack(crops)

    stats = latent_statistics(tok, batches(), cfg.posterior, cfg.shift, torch.Generator().manual_seed(cfg.seed))
    stats = dict(vae=tok.spec, data_dir=cfg.data_dir, image_size=cfg.image_size, **stats)
    print(f"image-compute-scale: {stats['num_images']} images, {stats['num_values']} latent values "
          f"({cfg.posterior}): std {stats['std']:.6f} → scale 1/std = {stats['scale']:.6f}; "
          f"mean {stats['mean']:.6f}; rms scale (shift {cfg.shift}) = {stats['rms_scale']:.6f}")
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-compute-scale``."""
    return run_main("image-compute-scale",
                    lambda: run(with_cpu_speed(parse(ComputeScaleConfig, argv, prog="image-compute-scale"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
