"""Image files → 8-bit PIL images, read the same way everywhere (training, latent caching,
``image-eval``, ``image-inpaint``).

Pillow's ``convert("L" | "RGB")`` *clips* 16-bit (``I;16*``, ``I``) and float (``F``) images at
255 instead of scaling them, so a 16-bit grey PNG comes out nearly pure white; and it drops the
alpha channel, showing whatever colour the transparent pixels happen to hold. Here:

* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` and ``I`` (Pillow's mode for 16-bit PNGs) are read as
  16-bit values ``v`` in ``[0, 65535]`` → ``round(v / 257)`` (exact: 65535 ↦ 255, 257·k ↦ k);
  values outside ``[0, 65535]`` in ``I`` images are clipped.
* ``F`` (32-bit float) is read as intensities in ``[0, 1]`` → ``round(255 · v)``, clipped.
* Transparency (an alpha channel, or a ``transparency`` entry of ``P`` / ``L`` / ``RGB`` images)
  is composited over :data:`BACKGROUND` (white) with ``Image.alpha_composite``.

8-bit ``L`` / ``RGB`` / ``P`` / ``CMYK`` / ``YCbCr`` images without transparency go straight to
Pillow's ``convert`` (unchanged behaviour).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["BACKGROUND", "to_8bit", "open_image"]

BACKGROUND = (255, 255, 255)
"""RGB that transparent pixels are composited over (white)."""

_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def to_8bit(img: Any, mode: str = "RGB", *, composite: bool = True) -> Any:
    """``img`` (a loaded ``PIL.Image``) as an 8-bit image of ``mode`` (``"RGB"`` or ``"L"``).

    Args:
        img: any Pillow image.
        mode: target mode.
        composite: composite transparency over :data:`BACKGROUND` (False: drop alpha, e.g. for
            masks, where only the values matter).

    Returns:
        a new ``PIL.Image`` in ``mode``.
    """
    from PIL import Image

    if img.mode in _SIXTEEN:
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img).astype(np.float64)
        img = Image.fromarray(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8), "L")
    if composite and (img.mode in _ALPHA or "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba)
    return img.convert(mode)


def open_image(path: str | os.PathLike[str], mode: str = "RGB", *, composite: bool = True) -> Any:
    """Open, fully load and :func:`to_8bit` an image file (PIL errors propagate)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return to_8bit(img, mode, composite=composite)
