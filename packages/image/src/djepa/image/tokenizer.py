"""Image tokenizers: images ↔ token sequences (DESIGN.md §5, image).

D-JEPA (paper §3, App. C) models an image as a set of ``N`` continuous tokens of dimension
``D_tok``: the latents of a VAE (KL-16, ``D_tok = 16 · p²``) or, for raw pixels, non-overlapping
``p × p`` patches. :class:`Tokenizer` is the interface the engine and CLIs rely on;
:class:`PixelTokenizer` is the weight-free raw-pixel implementation (MAR's ``patchify`` /
``unpatchify`` order), VAE tokenizers (:mod:`djepa.image.vae`) implement the same protocol, the
core's :class:`djepa.core.tokenizer.Tokenizer` (re-exported here): ``encode`` takes images
``[B, C, H, W]`` float in ``[0, 1]``, ``decode`` returns them, ``grid`` is ``(rows, cols)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from djepa.core.tokenizer import Tokenizer, register_tokenizer

__all__ = ["PixelTokenizer", "Tokenizer", "fraction_outside"]


@register_tokenizer
class PixelTokenizer:
    """Raw-pixel patchify tokenizer.

    ``encode`` maps pixel values ``v ∈ [0, 1]`` to ``2v − 1 ∈ [−1, 1]`` and cuts the image into
    non-overlapping ``p × p`` patches in row-major order (patch ``(i, j)`` is token
    ``i · W/p + j``); inside a token the values are ordered ``(channel, row-in-patch,
    col-in-patch)`` — MAR's ``patchify`` layout (``nchpwq → nhwcpq``). ``decode`` is its exact
    inverse.

    Args:
        channels: ``C`` (1 for digits / MNIST, 3 for RGB).
        image_size: ``H = W`` in pixels, or an ``(H, W)`` pair.
        patch_size: ``p``; must divide ``H`` and ``W``.

    Raises:
        ValueError: non-positive sizes or a patch size that does not divide the image size.
    """

    kind: ClassVar[str] = "pixel"

    def __init__(self, channels: int, image_size: int | tuple[int, int], patch_size: int) -> None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if channels < 1 or patch_size < 1 or h < 1 or w < 1:
            raise ValueError(
                "channels, image size and patch size must be positive, got "
                f"{channels}, {(h, w)}, {patch_size}"
            )
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide image size {h}×{w}")
        self.channels = int(channels)
        self.height, self.width = int(h), int(w)
        self.patch_size = int(patch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return (self.height, self.width)

    @property
    def token_dim(self) -> int:
        """``D_tok = C · p²``."""
        return self.channels * self.patch_size**2

    @property
    def grid(self) -> tuple[int, int]:
        """``(H / p, W / p)``."""
        return (self.height // self.patch_size, self.width // self.patch_size)

    @property
    def num_tokens(self) -> int:
        """``N = (H / p) · (W / p)``."""
        return self.grid[0] * self.grid[1]

    @property
    def value_range(self) -> tuple[float, float]:
        """Encoded images of ``[0, 1]`` pixels occupy exactly ``[−1, 1]``."""
        return (-1.0, 1.0)

    def encode(self, images: Tensor) -> Tensor:
        """Images → tokens.

        Args:
            images: ``[B, C, H, W]`` float in ``[0, 1]`` (not checked; values outside map
                linearly outside ``[−1, 1]``).

        Returns:
            ``[B, N, C·p·p]`` same dtype/device, ``2 · images − 1``, row-major patches.

        Raises:
            ValueError: a shape other than ``[B, C, H, W]`` with this tokenizer's ``C, H, W``.
        """
        if images.dim() != 4 or tuple(images.shape[1:]) != (self.channels, self.height, self.width):
            raise ValueError(
                f"expected images [B, {self.channels}, {self.height}, {self.width}], got {list(images.shape)}"
            )
        b, c = images.shape[:2]
        p = self.patch_size
        gh, gw = self.grid
        x = images * 2.0 - 1.0
        x = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
        return x.reshape(b, gh * gw, c * p * p)

    def decode(self, tokens: Tensor, clamp: bool = True) -> Tensor:
        """Tokens → images; the exact inverse of :meth:`encode` before clamping.

        Args:
            tokens: ``[B, N, C·p·p]`` float (``[−1, 1]`` for in-range images).
            clamp: clamp the output to ``[0, 1]`` (default ``True``, so decoded samples are
                valid images; pass ``False`` for the raw inverse ``(tokens + 1) / 2``. Measure
                how much a sampler leaves ``value_range`` with :func:`fraction_outside` on the
                tokens, before decoding).

        Returns:
            ``[B, C, H, W]`` same dtype/device.

        Raises:
            ValueError: wrong ``N`` or ``D_tok``.
        """
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(
                f"expected tokens [B, {self.num_tokens}, {self.token_dim}], got {list(tokens.shape)}"
            )
        b = tokens.shape[0]
        p = self.patch_size
        gh, gw = self.grid
        x = tokens.reshape(b, gh, gw, self.channels, p, p).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(b, self.channels, self.height, self.width)
        x = (x + 1.0) / 2.0
        return x.clamp(0.0, 1.0) if clamp else x

    def to_config(self) -> dict[str, Any]:
        """JSON-safe record (``tokenizer.json``): ``kind``, ``channels``, ``image_size`` (an int
        when square, else ``[H, W]``), ``patch_size``, ``value_range``."""
        size = self.height if self.height == self.width else [self.height, self.width]
        return dict(kind=self.kind, channels=self.channels, image_size=size, patch_size=self.patch_size,
                    value_range=list(self.value_range))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PixelTokenizer:
        """Inverse of :meth:`to_config` (other keys, e.g. a run's ``class_names``, are ignored).

        Raises:
            KeyError: a missing field. ValueError: bad sizes (as the constructor).
        """
        size = config["image_size"]
        return cls(int(config["channels"]), tuple(size) if isinstance(size, list) else int(size),
                   int(config["patch_size"]))

    def __repr__(self) -> str:
        return (
            f"PixelTokenizer(channels={self.channels}, image_size={self.image_size}, "
            f"patch_size={self.patch_size})"
        )


def fraction_outside(tokens: Tensor, value_range: tuple[float, float] | None) -> float:
    """Share of the entries of ``tokens`` (any shape) outside ``[lo, hi]`` = ``value_range``;
    NaN and ±inf always count as outside (with ``value_range`` ``None``: the share of non-finite
    entries; 0.0 when ``tokens`` is empty). Used to report how far a sampler strays before the
    final clamp (issue "image-train / image-sample" quality bar)."""
    if tokens.numel() == 0:
        return 0.0
    if value_range is None:
        return float((~torch.isfinite(tokens)).float().mean())
    lo, hi = value_range
    inside = (tokens >= lo) & (tokens <= hi) & torch.isfinite(tokens)  # NaN compares False
    return float((~inside).float().mean())
