"""Token grids and axial rotary position embeddings (RoPE) in 1D, 2D and 3D (DESIGN.md §3).

RoPE (Su et al., "RoFormer", 2021) rotates each pair of query/key channels by an angle
proportional to the token's position, so that ``<R(p_q) q, R(p_k) k>`` depends only on
``p_q − p_k``. The axial variant splits the head dimension into ``ndim`` equal chunks and gives
each chunk the positions along one axis (time / height / width). The paper's published
parameter counts match a RoPE backbone without learned position tables (FIDELITY.md "Model").

Convention (used consistently by :class:`AxialRoPE` and :func:`apply_rope`): **interleaved
pairs** — channel pair ``i`` is ``(x[..., 2i], x[..., 2i+1])`` and is rotated by angle
``θ_i = pos_axis(i) · freq(i)``. Pairs ``[a·P, (a+1)·P)`` with ``P = head_dim / (2·ndim)``
belong to axis ``a``; within an axis, ``freq_j = theta^(−2j / (head_dim/ndim))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["TokenGrid", "AxialRoPE", "apply_rope"]


@dataclass(frozen=True)
class TokenGrid:
    """The shape of a token grid: ``(L,)`` (audio, text), ``(H, W)`` (images) or
    ``(T, H, W)`` (video).

    Raises:
        ValueError: if the shape has not 1–3 dimensions or a size is not a positive int.
    """

    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"TokenGrid needs 1, 2 or 3 dimensions, got shape {shape}")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
            raise ValueError(f"TokenGrid sizes must be positive ints, got {shape}")
        object.__setattr__(self, "shape", shape)

    @property
    def ndim(self) -> int:
        """Number of grid axes (1, 2 or 3)."""
        return len(self.shape)

    @property
    def num_tokens(self) -> int:
        """``N = prod(shape)``."""
        return math.prod(self.shape)

    def coords(self, device: torch.device | str | None = None) -> Tensor:
        """Integer coordinates of every token.

        Returns:
            LongTensor ``[N, ndim]``; row ``n`` is the multi-index of token ``n`` in row-major
            (C) order, i.e. the order of ``tokens.reshape(B, N, D)`` for a ``[B, *shape, D]``
            tensor (last axis fastest).
        """
        axes = [torch.arange(s, device=device) for s in self.shape]
        grids = torch.meshgrid(*axes, indexing="ij")
        return torch.stack(grids, dim=-1).reshape(-1, self.ndim)


class AxialRoPE(nn.Module):
    """Axial rotary embedding: maps token coordinates to per-pair ``(cos, sin)`` tables.

    Args:
        head_dim: channels per attention head ``d``; must be divisible by ``2·ndim``.
        ndim: number of position axes (1, 2 or 3).
        theta: base of the frequency ladder (10000 as in RoFormer).

    Has no parameters and no buffers: the inverse frequencies are recomputed in float32 on
    every call (``d/2`` numbers), so ``model.to(torch.bfloat16)`` or meta-device construction
    followed by ``to_empty`` cannot corrupt them.

    Raises:
        ValueError: if ``head_dim`` is not divisible by ``2·ndim`` or ``ndim`` not in 1..3.
    """

    def __init__(self, head_dim: int, ndim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"AxialRoPE supports ndim 1, 2 or 3, got {ndim}")
        if head_dim <= 0 or head_dim % (2 * ndim) != 0:
            raise ValueError(
                f"head_dim={head_dim} must be a positive multiple of 2*ndim={2 * ndim} "
                "(each axis needs an equal, even share of the head channels)"
            )
        self.head_dim = head_dim
        self.ndim = ndim
        self.theta = float(theta)

    def inv_freq(self, device: torch.device | str | None = None) -> Tensor:
        """Per-axis inverse frequencies, float32 ``[head_dim / (2·ndim)]`` (same for all axes)."""
        chunk = self.head_dim // self.ndim
        j = torch.arange(0, chunk, 2, device=device, dtype=torch.float64)
        return (self.theta ** (-j / chunk)).float()

    def forward(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            coords: ``[..., L, ndim]`` int or float positions (e.g. ``TokenGrid.coords()``).

        Returns:
            ``(cos, sin)``, each float32 ``[..., L, head_dim // 2]``.

        Raises:
            ValueError: if ``coords.shape[-1] != ndim``.
        """
        if coords.shape[-1] != self.ndim:
            raise ValueError(f"coords last dim must be ndim={self.ndim}, got shape {tuple(coords.shape)}")
        inv = self.inv_freq(coords.device)
        c = coords.to(torch.float32)
        angles = torch.cat([c[..., a, None] * inv for a in range(self.ndim)], dim=-1)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, ndim={self.ndim}, theta={self.theta}"


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved channel pairs ``(x[..., 2i], x[..., 2i+1])`` by the angles in
    ``(cos, sin)``.

    Args:
        x: ``[B, H, L, d]`` queries or keys, any float dtype.
        cos, sin: ``[L, d/2]`` or ``[B, L, d/2]`` (a head axis is inserted, so they broadcast
            as ``[B or 1, 1, L, d/2]``).

    Returns:
        ``[B, H, L, d]`` in ``x.dtype``, computed in float32. Rows with ``cos = 1, sin = 0``
        (e.g. buffer tokens) are returned exactly unchanged.
    """
    if cos.shape[-1] * 2 != x.shape[-1] or sin.shape != cos.shape:
        raise ValueError(
            f"cos/sin must be [..., L, {x.shape[-1] // 2}] and equal shapes, got {tuple(cos.shape)}, "
            f"{tuple(sin.shape)} for x {tuple(x.shape)}"
        )
    cos = cos.float().unsqueeze(-3)
    sin = sin.float().unsqueeze(-3)
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)
