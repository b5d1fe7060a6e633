"""Writing generated images: labelled PNG grids and ImageFolder-layout PNG sets.

``save_images_imagefolder`` writes ``out_dir/<class_id>/<index>.png`` — the layout that
:class:`djepa.image.datasets.ImageFolderDataset` reads back with ``class index = int(folder)``,
so the evaluation tools can consume samples like any image folder.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["save_image_grid", "save_images_imagefolder", "to_uint8"]

_PAD = 2  # make_grid padding between cells, pixels
_PAD_VALUE = 0.5  # mid-gray separators (visible against black digit backgrounds)


def to_uint8(images: Tensor) -> np.ndarray:
    """``[B, C, H, W]`` float in ``[0, 1]`` → ``[B, H, W, C]`` ``uint8`` numpy (clamped,
    ``round(255 · v)``)."""
    x = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1|3, H, W], got {list(images.shape)}")


def save_image_grid(
    images: Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    labels: Sequence[str] | None = None,
    upscale: int | None = None,
) -> Path:
    """Save a batch as one PNG grid, optionally with small text labels.

    Args:
        images: ``[B, C, H, W]`` float in ``[0, 1]`` (clamped), ``C`` = 1 (gray) or 3 (RGB).
        path: output file (parent folders are created).
        nrow: images per row (``None``: ``ceil(sqrt(B))``).
        labels: ``None``; or one string per grid *row* (``len = ceil(B / nrow)``), drawn in a
            left margin; or one string per *image* (``len = B``, when that differs from the
            number of rows), drawn in a strip under each cell. PIL's default bitmap font.
        upscale: integer nearest-neighbour magnification of every image before gridding
            (``None``: enough to make cells at least 64 px, e.g. 8 for 8×8 digits).

    Returns:
        The path written. Grid layout: ``torchvision.utils.make_grid`` with 2-px mid-gray
        (0.5 → 128) padding between and around cells.

    Raises:
        ValueError: bad image shape, empty batch, or a ``labels`` length that fits neither
            rows nor images.
    """
    from PIL import Image, ImageDraw, ImageFont
    from torchvision.utils import make_grid

    _check_images(images)
    b = len(images)
    if b == 0:
        raise ValueError("save_image_grid needs at least one image")
    nrow = nrow or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / nrow)
    if upscale is None:
        upscale = max(1, math.ceil(64 / max(images.shape[-2:])))
    x = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
    if upscale > 1:
        x = F.interpolate(x, scale_factor=upscale, mode="nearest")

    mode = None
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) == b and b != nrows:
            mode = "cell"
        elif len(labels) == nrows:
            mode = "row"
        else:
            raise ValueError(f"labels: got {len(labels)}, need one per row ({nrows}) or per image ({b})")

    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(s: str) -> tuple[int, int]:
        l, t, r, bt = probe.textbbox((0, 0), s, font=font)
        return r - l, bt - t

    strip = 0
    if mode == "cell":
        strip = max(text_size(s)[1] for s in labels) + 4
        x = F.pad(x, (0, 0, 0, strip), value=0.0)  # black strip under each image
    h, w = x.shape[-2:]
    grid = make_grid(x, nrow=nrow, padding=_PAD, pad_value=_PAD_VALUE)  # [3, GH, GW]
    img = Image.fromarray(to_uint8(grid.unsqueeze(0))[0])  # uint8 [GH, GW, 3] → RGB

    if mode == "cell":
        draw = ImageDraw.Draw(img)
        for i, s in enumerate(labels):
            r, c = divmod(i, nrow)
            x0 = c * (w + _PAD) + _PAD
            y0 = r * (h + _PAD) + _PAD + h - strip
            draw.text((x0 + 2, y0 + 2), s, fill=(255, 255, 255), font=font)
    elif mode == "row":
        margin = max(text_size(s)[0] for s in labels) + 8
        canvas = Image.new("RGB", (img.width + margin, img.height), (0, 0, 0))
        canvas.paste(img, (margin, 0))
        draw = ImageDraw.Draw(canvas)
        for r, s in enumerate(labels):
            th = text_size(s)[1]
            y = r * (h + _PAD) + _PAD + (h - th) // 2
            draw.text((4, y), s, fill=(255, 255, 255), font=font)
        img = canvas

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


_INDEX_RE = re.compile(r"^(\d+)\.png$")


def _next_index(folder: Path) -> int:
    """1 + the largest ``<digits>.png`` index in ``folder`` (0 when none)."""
    if not folder.is_dir():
        return 0
    found = [int(m.group(1)) for f in folder.iterdir() if (m := _INDEX_RE.match(f.name))]
    return max(found) + 1 if found else 0


def save_images_imagefolder(
    images: Tensor,
    labels: Tensor | Sequence[int],
    out_dir: str | os.PathLike,
    start_index: int | Mapping[int, int] | None = None,
) -> list[Path]:
    """Write one PNG per image as ``out_dir/<class_id>/<index>.png``.

    ``<class_id>`` is the plain decimal label (``3``, ``17``); ``<index>`` is zero-padded to 5
    digits (``00000.png``) and counts up per class in batch order.

    Args:
        images: ``[B, C, H, W]`` float in ``[0, 1]`` (clamped; ``round(255 · v)``); ``C = 1``
            → 8-bit gray PNG, ``C = 3`` → RGB PNG.
        labels: ``[B]`` non-negative int class ids.
        out_dir: root folder (created).
        start_index: first index per class: ``None`` (default) continues after the largest
            ``<digits>.png`` already in that class folder (0 in a new one), so repeated calls
            append instead of overwriting; an ``int`` is used for every class; a mapping
            ``class_id → start`` per class (missing classes start at 0).

    Returns:
        The paths written, in batch order.

    Raises:
        ValueError: bad image shape, length mismatch, or a negative label.
    """
    from PIL import Image

    _check_images(images)
    labels = [int(v) for v in torch.as_tensor(labels).reshape(-1).tolist()]
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if any(v < 0 for v in labels):
        raise ValueError("class labels must be non-negative")
    out = Path(out_dir)
    arr = to_uint8(images)
    counters: dict[int, int] = {}
    paths = []
    for a, lab in zip(arr, labels):
        folder = out / str(lab)
        if lab not in counters:
            if start_index is None:
                counters[lab] = _next_index(folder)
            elif isinstance(start_index, Mapping):
                counters[lab] = int(start_index.get(lab, 0))
            else:
                counters[lab] = int(start_index)
            folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"{counters[lab]:05d}.png"
        counters[lab] += 1
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(p)  # [H, W] → L, [H, W, 3] → RGB
        paths.append(p)
    return paths
