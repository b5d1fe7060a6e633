"""Raw pixel cubes: videos ↔ 3-D token grids (DESIGN.md §5 video; the core's Tokenizer protocol).

A video ``[B, C, T, H, W]`` float in ``[0, 1]`` is cut into non-overlapping ``pt × ph × pw``
cubes (paper App. G.3 patches latents 4 × 2 × 2; a larger temporal patch "helps the model learn
more consistent motion"). Token ``(i, j, k)`` of the grid ``(T/pt, H/ph, W/pw)`` is number
``(i · H/ph + j) · W/pw + k`` (row-major); inside a token the values are ordered
``(channel, t, y, x)``. Values map ``v ↦ 2v − 1``, so encoded clips occupy exactly ``[−1, 1]``
(:attr:`value_range`, the sampler's ``clip_range``); a zero-padded frame (``v = 0``) is −1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from djepa.core.tokenizer import register_tokenizer
from djepa.video.grid import pixel_grid

__all__ = ["VideoPixelTokenizer", "patchify3d", "unpatchify3d"]


def patchify3d(x: Tensor, patch: tuple[int, int, int]) -> Tensor:
    """``[B, C, T, H, W]`` → ``[B, (T/pt)(H/ph)(W/pw), C·pt·ph·pw]`` (module docstring order)."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, c, t // pt, pt, h // ph, ph, w // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify3d(tokens: Tensor, channels: int, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> Tensor:
    """Exact inverse of :func:`patchify3d`: ``[B, N, C·pt·ph·pw]`` → ``[B, C, T, H, W]``."""
    b = tokens.shape[0]
    gt, gh, gw = grid
    pt, ph, pw = patch
    x = tokens.reshape(b, gt, gh, gw, channels, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(b, channels, gt * pt, gh * ph, gw * pw)


@register_tokenizer
class VideoPixelTokenizer:
    """Raw-pixel cube tokenizer.

    Args:
        channels: ``C`` (1 grey, 3 RGB).
        frames, height, width: the clip size ``T × H × W``.
        patch: ``(pt, ph, pw)``.

    Raises:
        ValueError: a patch that does not divide the clip (one line naming sizes that fit).
    """

    kind: ClassVar[str] = "video-pixel"

    def __init__(self, channels: int, frames: int, height: int, width: int, patch: tuple[int, int, int]) -> None:
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels, self.frames, self.height, self.width = int(channels), int(frames), int(height), int(width)
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 3:
            raise ValueError(f"patch must be (t, h, w), got {patch!r}")
        self._grid = pixel_grid(self.frames, self.height, self.width, self.patch)

    @property
    def grid(self) -> tuple[int, int, int]:
        """``(T/pt, H/ph, W/pw)``."""
        return self._grid

    @property
    def num_tokens(self) -> int:
        return self._grid[0] * self._grid[1] * self._grid[2]

    @property
    def token_dim(self) -> int:
        """``C · pt · ph · pw``."""
        pt, ph, pw = self.patch
        return self.channels * pt * ph * pw

    @property
    def value_range(self) -> tuple[float, float]:
        """Encoded ``[0, 1]`` clips occupy exactly ``[−1, 1]``."""
        return (-1.0, 1.0)

    @property
    def frames_per_token(self) -> int:
        """``pt``: frames one temporal grid step covers (for per-frame padding masks)."""
        return self.patch[0]

    def encode(self, video: Tensor) -> Tensor:
        """``[B, C, T, H, W]`` float in ``[0, 1]`` → ``[B, N, D_tok]`` (``2v − 1``).

        Raises:
            ValueError: another shape.
        """
        want = (self.channels, self.frames, self.height, self.width)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(f"expected video [B, {', '.join(map(str, want))}], got {list(video.shape)}")
        return patchify3d(video * 2.0 - 1.0, self.patch)

    def decode(self, tokens: Tensor, clamp: bool = True) -> Tensor:
        """``[B, N, D_tok]`` → ``[B, C, T, H, W]`` in ``[0, 1]`` (clamped unless ``clamp=False``).

        Raises:
            ValueError: wrong ``N`` or ``D_tok``.
        """
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(f"expected tokens [B, {self.num_tokens}, {self.token_dim}], got {list(tokens.shape)}")
        x = (unpatchify3d(tokens, self.channels, self._grid, self.patch) + 1.0) / 2.0
        return x.clamp(0.0, 1.0) if clamp else x

    def to_config(self) -> dict[str, Any]:
        """JSON record (``tokenizer.json``)."""
        return dict(kind=self.kind, channels=self.channels, frames=self.frames, height=self.height,
                    width=self.width, patch=list(self.patch), grid=list(self._grid),
                    value_range=list(self.value_range))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VideoPixelTokenizer":
        return cls(int(config["channels"]), int(config["frames"]), int(config["height"]),
                   int(config["width"]), tuple(config["patch"]))

    def __repr__(self) -> str:
        return (f"VideoPixelTokenizer(channels={self.channels}, clip={self.frames}×{self.height}×{self.width}, "
                f"patch={self.patch})")
