"""Token-grid arithmetic of video clips, checked up front (issue 13).

frames ``T × H × W`` → (VAE) latent frames ``T_lat × H/8 × W/8`` → patches ``pt × ph × pw`` →
token grid ``(T_lat/pt, H/8/ph, W/8/pw)``. The paper (App. G.3): 160 × 240 × 320 → 40 × 30 × 40
→ patch 4 × 2 × 2 → 10 × 15 × 20 = 3000 tokens.

Latent frames follow diffusers' ``AutoencoderKLCogVideoX``: it encodes frames in batches of 8
with the causal first frame carried as the remainder, so it accepts ``T = 1``, ``8k`` or
``8k + 1`` and gives ``T_lat = ceil(T / 4)`` (``8k + 1 → 1 + (T − 1)/4``, the causal first frame;
``8k → T/4``, the paper's 160 → 40), decoding back to the same ``T``. Other ``T`` would not
round-trip, so they are refused.

Every error is one line that names the sizes that would fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["pixel_grid", "vae_frames_ok", "vae_latent_shape", "vae_grid", "nearest_fits"]


def nearest_fits(n: int, ok: Callable[[int], bool], limit: int = 4096) -> list[int]:
    """The closest values ``≤ n`` and ``≥ n`` (positive, at most one each) for which ``ok`` holds."""
    below = next((m for m in range(n, 0, -1) if ok(m)), None)
    above = next((m for m in range(max(n, 1), n + limit) if ok(m)), None)
    return sorted({m for m in (below, above) if m is not None})


def _fits(values: list[int]) -> str:
    return " or ".join(str(v) for v in values) if values else "none nearby"


def pixel_grid(frames: int, height: int, width: int, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Token grid of raw pixel cubes.

    Raises:
        ValueError: a patch size that does not divide the clip (names the nearest sizes that fit).
    """
    pt, ph, pw = patch
    if min(frames, height, width, pt, ph, pw) < 1:
        raise ValueError(f"clip {frames}×{height}×{width} and patch {pt}×{ph}×{pw} must be positive")
    for name, n, p in (("frames", frames, pt), ("height", height, ph), ("width", width, pw)):
        if n % p:
            raise ValueError(f"clip {frames}×{height}×{width} does not fit patch {pt}×{ph}×{pw}: "
                             f"{name} {n} is not a multiple of {p} (use {_fits(nearest_fits(n, lambda m: m % p == 0))})")
    return frames // pt, height // ph, width // pw


def vae_frames_ok(frames: int) -> bool:
    """``T`` that diffusers' CogVideoX VAE encodes and decodes back to ``T`` frames: 1, 8k, 8k+1."""
    return frames == 1 or (frames >= 8 and frames % 8 in (0, 1))


def vae_latent_shape(frames: int, height: int, width: int, *, temporal: int = 4,
                     spatial: int = 8) -> tuple[int, int, int]:
    """``(T_lat, H/spatial, W/spatial)`` with ``T_lat = ceil(T / temporal)`` (module docstring).

    Raises:
        ValueError: frames not 1 / 8k / 8k+1, or height / width not multiples of ``spatial``.
    """
    ok_t = (lambda m: m == 1 or (m >= 2 * temporal and m % (2 * temporal) in (0, 1)))
    if not ok_t(frames):
        raise ValueError(f"the video VAE takes 1, {2 * temporal}k or {2 * temporal}k+1 frames, got {frames} "
                         f"(use {_fits(nearest_fits(frames, ok_t))})")
    for name, n in (("height", height), ("width", width)):
        if n < spatial or n % spatial:
            raise ValueError(f"the video VAE needs {name} a multiple of {spatial}, got {n} "
                             f"(use {_fits(nearest_fits(n, lambda m: m % spatial == 0))})")
    return math.ceil(frames / temporal), height // spatial, width // spatial


def vae_grid(frames: int, height: int, width: int, patch: tuple[int, int, int], *, temporal: int = 4,
             spatial: int = 8) -> tuple[int, int, int]:
    """Token grid of VAE latents patched ``pt × ph × pw`` (the paper: 160×240×320, 4×2×2 → 10×15×20).

    Raises:
        ValueError: the clip does not fit the VAE or the latent does not fit the patch; the
            message names clip sizes that would fit.
    """
    pt, ph, pw = patch
    tl, hl, wl = vae_latent_shape(frames, height, width, temporal=temporal, spatial=spatial)
    ok_t = (lambda m: (m == 1 or (m >= 2 * temporal and m % (2 * temporal) in (0, 1)))
            and math.ceil(m / temporal) % pt == 0)
    if tl % pt:
        raise ValueError(f"clip of {frames} frames gives {tl} latent frames, not a multiple of patch {pt} "
                         f"(use {_fits(nearest_fits(frames, ok_t))} frames)")
    for name, n, lat, p in (("height", height, hl, ph), ("width", width, wl, pw)):
        if lat % p:
            fits = nearest_fits(n, lambda m: m % (spatial * p) == 0)
            raise ValueError(f"{name} {n} gives {lat} latent pixels, not a multiple of patch {p} "
                             f"(use {_fits(fits)})")
    return tl // pt, hl // ph, wl // pw
