"""``image-inpaint``: inpainting and outpainting with a trained D-JEPA (paper App. D.4).

The image is tokenized; tokens whose footprint touches the masked region are *unknown*, the rest
are *known* and handed to the sampler (:func:`djepa.core.sampler.generate` with ``known_tokens`` /
``known_mask``), which puts them first in the generation order and never changes them; Algorithm 1
then generates the unknown tokens conditioned on them. Outpainting is the same call with a mask
that touches the border. Nothing is pasted back afterwards: with the pixel tokenizer the visible
pixels of the result equal the input's 8-bit values exactly (encode → decode is exact and the
sampler copies known tokens verbatim); with a VAE tokenizer they match up to its round-trip error
(the result reports ``max_visible_abs_diff``).

Conventions:

* The image is converted to the model's channels (``L`` for 1, ``RGB`` for 3) and, when its size
  differs from the model's, centre-cropped and resized with ADM's ``center_crop_arr`` (the
  training preprocessing of image folders).
* ``--mask PNG``: same size as the input image; a pixel is masked (to be generated) when its gray
  value is ≥ 128 (white). When the image is resized, the binary mask goes through the same crop /
  resize and every pixel with a non-zero value stays masked.
* ``--box x0,y0,x1,y1``: pixel coordinates in the input image, ``x`` = column, ``y`` = row,
  ``x1`` / ``y1`` exclusive (``0 ≤ x0 < x1 ≤ width``, ``0 ≤ y0 < y1 ≤ height``); the same as a
  mask PNG that is white on exactly that rectangle.
* A token is unknown when **any** pixel of its footprint (``H/rows × W/cols`` pixels, ``p × p``
  for the pixel tokenizer) is masked, so the generated region is the mask rounded out to the
  token grid (written as ``mask.png``).

Outputs in ``--output-dir``: ``result.png`` (model resolution), ``side_by_side.png`` (input with the
generated region tinted red | result, nearest-neighbour enlarged for small images), ``mask.png``
(the token-aligned region that was generated, white) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import SamplerFlags, resolve_device

__all__ = ["ImageInpaintConfig", "load_image", "load_mask", "box_mask", "token_mask", "run", "main"]


@dataclass(frozen=True, kw_only=True)
class ImageInpaintConfig:
    """Inpaint or outpaint an image with a trained D-JEPA (App. D.4): the masked region is generated.

    ``--ar-steps`` defaults to the number of unknown tokens (at most 64); ``--cfg`` is ignored
    without ``--class``."""

    sampler: SamplerFlags = field(default_factory=SamplerFlags)
    """Sampler settings of Algorithm 1 (§3.5), seed, device and precision: the core's
    SamplerFlags, shared by every sampling command."""
    checkpoint: str
    """A training output folder (its pretrained/ EMA export is used), a save_pretrained folder, or
    one checkpoint RUN/checkpoints/step_XXXXXXXX."""
    image: str
    """The input image (PNG/JPEG); converted to the model's channels, centre-cropped/resized to its size."""
    output_dir: str = "inpaint"
    """Where result.png, side_by_side.png, mask.png and summary.json go."""
    mask: str | None = None
    """Mask PNG of the image's size: white (>= 128) = region to generate."""
    box: str | None = None
    """Region to generate as x0,y0,x1,y1 in the image's pixels (x1, y1 exclusive)."""
    class_id: Annotated[int | None, tyro.conf.arg(name="class")] = None
    """Class to condition on (default: the null class, unconditional)."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def _mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise UserError(f"image inpainting supports 1- or 3-channel models, this one has {channels}")


def _fit(pil_image, size: tuple[int, int]):
    """The image itself at the model size, else ADM's centre crop + resize (square models)."""
    from djepa.image.datasets import center_crop_arr

    h, w = size
    if pil_image.size == (w, h):
        return pil_image
    if h != w:
        raise UserError(f"the image is {pil_image.size[0]}×{pil_image.size[1]} but the model needs "
                        f"{w}×{h}; resize it first (centre crop works for square models only)")
    return center_crop_arr(pil_image, h)


def load_image(path: str | Path, channels: int, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """The input image at the model's size.

    Returns:
        ``(uint8 [H, W, C], (orig_width, orig_height))``.

    Raises:
        FileNotFoundError: missing file; UserError: unreadable image.
    """
    from djepa.image.pixels import open_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        im = open_image(path, _mode(channels))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"cannot read image {path}: {e}") from e
    arr = np.array(_fit(im, size), dtype=np.uint8)  # writable copy
    return (arr[..., None] if arr.ndim == 2 else arr), im.size


def _fit_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary ``[h, w]`` mask at the input size → ``[H, W]`` bool at the model size (same crop /
    resize as the image; any non-zero value after resizing stays masked)."""
    from PIL import Image

    if mask.shape == size:
        return mask
    fitted = np.asarray(_fit(Image.fromarray(mask.astype(np.uint8) * 255), size))
    return fitted > 0


def load_mask(path: str | Path, image_size_wh: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool at the model size, True = generate, from a mask PNG (white ≥ 128).

    Raises:
        FileNotFoundError: missing file; UserError: unreadable, or not the input image's size.
    """
    from djepa.image.pixels import open_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {path} not found")
    try:
        m = np.asarray(open_image(path, "L", composite=False))
    except Exception as e:
        raise UserError(f"cannot read mask {path}: {e}") from e
    if (m.shape[1], m.shape[0]) != tuple(image_size_wh):
        raise UserError(f"mask {path} is {m.shape[1]}×{m.shape[0]} but the image is "
                        f"{image_size_wh[0]}×{image_size_wh[1]}")
    return _fit_mask(m >= 128, size)


def box_mask(spec: str, image_size_wh: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool at the model size from ``"x0,y0,x1,y1"`` in input-image pixels (exclusive ends).

    Raises:
        UserError: not four integers, empty, or outside the image.
    """
    try:
        x0, y0, x1, y1 = (int(v) for v in spec.split(","))
    except ValueError:
        raise UserError(f"--box must be four integers x0,y0,x1,y1, got {spec!r}") from None
    w, h = image_size_wh
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise UserError(f"--box {spec} is empty or outside the {w}×{h} image "
                        f"(need 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h})")
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return _fit_mask(m, size)


def token_mask(pixel_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool pixel mask → ``[rows·cols]`` bool, True = unknown token: a token is unknown when
    any pixel of its ``H/rows × W/cols`` footprint is masked (row-major token order).

    Raises:
        ValueError: the grid does not divide the mask.
    """
    h, w = pixel_mask.shape
    gh, gw = grid
    if h % gh or w % gw:
        raise ValueError(f"token grid {gh}×{gw} does not divide the {h}×{w} image")
    return pixel_mask.reshape(gh, h // gh, gw, w // gw).any(axis=(1, 3)).reshape(-1)


def _upscale(arr: np.ndarray, factor: int) -> np.ndarray:
    return arr.repeat(factor, 0).repeat(factor, 1) if factor > 1 else arr


def _side_by_side(inp: np.ndarray, result: np.ndarray, pixel_region: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` uint8 input, result, bool region → RGB ``[H·u, 2·W·u + gap, 3]`` uint8."""
    rgb = lambda a: np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a  # noqa: E731
    left = rgb(inp).astype(np.float32)
    tint = np.array([255.0, 0.0, 0.0], dtype=np.float32)
    left[pixel_region] = 0.45 * left[pixel_region] + 0.55 * tint
    h, w = inp.shape[:2]
    up = max(1, math.ceil(128 / max(h, w)))
    a, b = _upscale(left.round().astype(np.uint8), up), _upscale(rgb(result), up)
    gap = np.full((a.shape[0], max(2, up), 3), 128, dtype=np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def run(cfg: ImageInpaintConfig) -> dict:
    """Inpaint and write the outputs; returns the summary dict (also printed).

    Raises:
        UserError / FileNotFoundError / ValueError: bad checkpoint, image, mask, box or class (one
        line each through the CLI).
    """
    from PIL import Image

    from djepa.core.sampler import generate
    from djepa.image.grid import to_uint8
    from djepa.image.sample import load_generator

    if (cfg.mask is None) == (cfg.box is None):
        raise UserError("give exactly one of --mask PNG and --box x0,y0,x1,y1")
    if not Path(cfg.image).is_file():
        raise FileNotFoundError(f"image {cfg.image} not found")
    if cfg.mask is not None and not Path(cfg.mask).is_file():
        raise FileNotFoundError(f"mask {cfg.mask} not found")
    device = resolve_device(cfg.sampler.device)
    cfg.sampler.autocast(device)  # validates --precision before anything is loaded
    model, tokenizer, info = load_generator(cfg.checkpoint, device)
    cfg.sampler.prepare_model(model)
    num_classes = model.config.num_classes
    if cfg.class_id is not None and not 0 <= cfg.class_id < num_classes:
        raise UserError(f"class {cfg.class_id} is out of range: the model has {num_classes} classes "
                        f"(0..{num_classes - 1})")
    channels = int(getattr(tokenizer, "channels", info.get("channels", 3)))
    size = tuple(getattr(tokenizer, "image_size", None) or (info["image_size"],) * 2)
    size = (int(size[0]), int(size[1]))

    image, orig_wh = load_image(cfg.image, channels, size)
    pixel_mask = (load_mask(cfg.mask, orig_wh, size) if cfg.mask is not None
                  else box_mask(cfg.box, orig_wh, size))
    unknown = token_mask(pixel_mask, tuple(tokenizer.grid))
    n_unknown = int(unknown.sum())
    if n_unknown == 0:
        raise UserError("the mask selects nothing to generate (no white pixel / empty box)")

    images = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div(255.0).to(device)
    known_tokens = tokenizer.encode(images).float()
    known_mask = torch.from_numpy(~unknown).unsqueeze(0).to(device)
    sampler = cfg.sampler.sampler_config(n_unknown)
    labels = None if cfg.class_id is None else torch.tensor([cfg.class_id], device=device)
    gens = [torch.Generator(device=device).manual_seed(cfg.sampler.seed)]  # one stream per image (core.rng)
    t0 = time.perf_counter()
    with cfg.sampler.autocast(device):
        tokens = generate(model, labels, sampler, batch_size=1, generators=gens, known_tokens=known_tokens,
                          known_mask=known_mask, clip_range=tokenizer.value_range)
    seconds = time.perf_counter() - t0
    result = to_uint8(tokenizer.decode(tokens.float()).cpu())[0]  # [H, W, C] uint8

    gh, gw = tokenizer.grid
    region = np.kron(unknown.reshape(gh, gw), np.ones((size[0] // gh, size[1] // gw), dtype=bool)).astype(bool)
    visible_diff = int(np.abs(result.astype(np.int16) - image.astype(np.int16))[~region].max(initial=0))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    squeeze = (lambda a: a[..., 0]) if channels == 1 else (lambda a: a)
    Image.fromarray(squeeze(result)).save(out / "result.png")
    Image.fromarray((region * 255).astype(np.uint8)).save(out / "mask.png")
    Image.fromarray(_side_by_side(image, result, region)).save(out / "side_by_side.png")
    summary = dict(result=str(out / "result.png"), side_by_side=str(out / "side_by_side.png"),
                   image_size=list(size), tokens=int(unknown.size), unknown_tokens=n_unknown,
                   known_tokens=int(unknown.size) - n_unknown, class_id=cfg.class_id,
                   ar_steps=sampler.num_ar_steps, seconds=round(seconds, 3),
                   max_visible_abs_diff=visible_diff,
                   outpainting=bool(region[0].any() or region[-1].any() or region[:, 0].any()
                                    or region[:, -1].any()))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"image-inpaint: generated {n_unknown}/{unknown.size} tokens in {seconds:.2f} s; visible pixels "
          f"max |diff| {visible_diff}/255; wrote {out / 'result.png'} and {out / 'side_by_side.png'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-inpaint``."""
    return run_main("image-inpaint", lambda: run(with_cpu_speed(parse(ImageInpaintConfig, argv, prog="image-inpaint"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
