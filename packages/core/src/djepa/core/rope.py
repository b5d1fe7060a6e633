"""Token grids and axial rotary position embeddings (RoPE) in 1D, 2D and 3D (DESIGN.md §3).

RoPE (Su et al., "RoFormer", 2021) rotates each pair of query/key channels by an angle
proportional to the token's position, so that ``<R(p_q) q, R(p_k) k>`` depends only on
``p_q − p_k``. The axial variant splits the head dimension into ``ndim`` chunks — one per axis
(time / height / width) — and gives each chunk the positions along its axis. The chunks may be
unequal (``split``, e.g. 16 / 24 / 24 channels of a 64-wide head for (T, H, W)), so that 3-D
RoPE builds at head widths 64 and 80 (B / L / H presets). The paper's published parameter counts
match a RoPE backbone without learned position tables (FIDELITY.md "Model").

Convention (used consistently by :class:`AxialRoPE` and :func:`apply_rope`): **interleaved
pairs** — channel pair ``i`` is ``(x[..., 2i], x[..., 2i+1])`` and is rotated by angle
``θ_i = pos_axis(i) · freq(i)``. Axis ``a`` owns ``split[a]`` consecutive channels
(``split[a] / 2`` pairs, axes in order); within an axis of ``c = split[a]`` channels,
``freq_j = theta^(−2j / c)``. With the equal split ``c = head_dim / ndim`` this is the original
axial RoPE, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["TokenGrid", "AxialRoPE", "apply_rope", "default_rope_split"]


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


def default_rope_split(head_dim: int, ndim: int) -> tuple[int, ...]:
    """Channels per axis for a ``head_dim``-wide head and ``ndim`` axes.

    The equal split ``head_dim / ndim`` when every share is even (today's axial RoPE, e.g.
    32 / 32 for a 2-D grid at head width 64); otherwise the ``head_dim / 2`` channel pairs are
    dealt as evenly as possible, the remainder going to the *last* axes (the spatial ones of
    (T, H, W)): 64 → 20 / 22 / 22, 80 → 26 / 26 / 28, 10 (2-D) → 4 / 6.

    Raises:
        ValueError: ``head_dim`` odd or smaller than ``2·ndim``, or ``ndim`` not in 1..3.
    """
    if ndim not in (1, 2, 3):
        raise ValueError(f"RoPE supports ndim 1, 2 or 3, got {ndim}")
    if head_dim <= 0 or head_dim % 2 or head_dim < 2 * ndim:
        raise ValueError(f"head_dim={head_dim} must be even and >= 2*ndim={2 * ndim} for {ndim}-D RoPE")
    pairs = head_dim // 2
    base, extra = divmod(pairs, ndim)
    return tuple(2 * (base + (1 if a >= ndim - extra else 0)) for a in range(ndim))


class AxialRoPE(nn.Module):
    """Axial rotary embedding: maps token coordinates to per-pair ``(cos, sin)`` tables.

    Args:
        head_dim: channels per attention head ``d``.
        ndim: number of position axes (1, 2 or 3).
        theta: base of the frequency ladder (10000 as in RoFormer).
        split: channels per axis, each even and positive, summing to ``head_dim`` (e.g.
            ``(16, 24, 24)``). ``None`` = the equal split, which needs ``head_dim % (2·ndim) == 0``;
            :func:`default_rope_split` gives a valid split for any even head width.

    Has no parameters and no buffers: the inverse frequencies are recomputed in float32 on
    every call (``d/2`` numbers), so ``model.to(torch.bfloat16)`` or meta-device construction
    followed by ``to_empty`` cannot corrupt them.

    Raises:
        ValueError: equal split requested but ``head_dim`` not divisible by ``2·ndim``; a
            ``split`` of the wrong length, with an odd or non-positive share, or not summing to
            ``head_dim``; ``ndim`` not in 1..3.
    """

    def __init__(self, head_dim: int, ndim: int, theta: float = 10000.0,
                 split: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if ndim not in (1, 2, 3):
            raise ValueError(f"AxialRoPE supports ndim 1, 2 or 3, got {ndim}")
        if split is None:
            if head_dim <= 0 or head_dim % (2 * ndim) != 0:
                raise ValueError(
                    f"head_dim={head_dim} must be a positive multiple of 2*ndim={2 * ndim} "
                    "for the equal split (each axis an equal, even share of the head channels); "
                    "pass split=default_rope_split(head_dim, ndim) for an unequal one"
                )
            split = (head_dim // ndim,) * ndim
        split = tuple(int(c) for c in split)
        if len(split) != ndim or any(c <= 0 or c % 2 for c in split) or sum(split) != head_dim:
            raise ValueError(f"RoPE split {split} must be {ndim} positive even channel counts "
                             f"summing to head_dim={head_dim}")
        self.head_dim = head_dim
        self.ndim = ndim
        self.theta = float(theta)
        self.split = split

    def inv_freq(self, device: torch.device | str | None = None) -> list[Tensor]:
        """Per-axis inverse frequencies: one float32 ``[split[a] / 2]`` tensor per axis."""
        out = []
        for chunk in self.split:
            j = torch.arange(0, chunk, 2, device=device, dtype=torch.float64)
            out.append((self.theta ** (-j / chunk)).float())
        return out

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
        angles = torch.cat([c[..., a, None] * inv[a] for a in range(self.ndim)], dim=-1)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, ndim={self.ndim}, theta={self.theta}, split={self.split}"


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
