"""The token batch every modality hands to the core (DESIGN.md §7, issue 11).

One :class:`TokenBatch` carries, per row, the tokens, which of them are padding (rows of
different length in one batch), each token's grid coordinates (so a row can be a crop or a
shifted span) and which tokens may be masked (never padding; never a given prompt or text).

Polarities (fixed everywhere in djepa):

* ``padding [B, N] bool, True = padding`` (not a real token: never masked, never attended to,
  never counted) — the same polarity as attention's ``key_padding_mask``;
* ``maskable [B, N] bool, True = may be masked`` (a training target / a token the sampler
  generates); always False on padding;
* the training ``mask [B, N] bool, True = masked`` (djepa.core.masking).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from djepa.core.rope import TokenGrid

__all__ = ["TokenBatch"]


@dataclass(frozen=True)
class TokenBatch:
    """Tokens with padding, positions and the maskable set.

    Attributes:
        tokens: ``[B, N, D]`` float (values at padding positions are never read).
        positions: ``[B, N, ndim]`` int64 grid coordinates (row-major grid order for a full
            grid; offsets and crops allowed). With learned position tables they index the
            model's grid and must lie inside it.
        padding: ``[B, N]`` bool, True = padding; ``None`` = no padding.
        maskable: ``[B, N]`` bool, True = may be masked / generated; ``None`` = every real token.

    Raises:
        ValueError: inconsistent shapes, or a maskable padding position.
    """

    tokens: Tensor
    positions: Tensor
    padding: Tensor | None = None
    maskable: Tensor | None = None

    def __post_init__(self) -> None:
        t = self.tokens
        if t.ndim != 3:
            raise ValueError(f"tokens must be [B, N, D], got {list(t.shape)}")
        b, n = t.shape[:2]
        if self.positions.ndim != 3 or tuple(self.positions.shape[:2]) != (b, n):
            raise ValueError(f"positions must be [B, N, ndim] = [{b}, {n}, ndim], got {list(self.positions.shape)}")
        for name in ("padding", "maskable"):
            m = getattr(self, name)
            if m is not None and (m.dtype != torch.bool or tuple(m.shape) != (b, n)):
                raise ValueError(f"{name} must be a bool [{b}, {n}] tensor, got {m.dtype} {list(m.shape)}")
        if self.padding is not None and self.maskable is not None and bool((self.padding & self.maskable).any()):
            raise ValueError("a padding position is marked maskable (padding is never masked)")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_grid(cls, tokens: Tensor, grid: tuple[int, ...] | TokenGrid,
                  maskable: Tensor | None = None) -> "TokenBatch":
        """Today's fixed-grid case: ``tokens [B, prod(grid), D]`` in row-major grid order, no
        padding, every token maskable unless ``maskable`` says otherwise (e.g. inpainting).

        Raises:
            ValueError: ``N != prod(grid)``.
        """
        grid = grid if isinstance(grid, TokenGrid) else TokenGrid(tuple(grid))
        if tokens.ndim != 3 or tokens.shape[1] != grid.num_tokens:
            raise ValueError(f"tokens must be [B, {grid.num_tokens}, D] for grid {grid.shape}, "
                             f"got {list(tokens.shape)}")
        pos = grid.coords(device=tokens.device).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return cls(tokens, pos, None, maskable)

    @classmethod
    def from_lengths(cls, tokens: Tensor, lengths: Tensor | list[int],
                     maskable: Tensor | None = None) -> "TokenBatch":
        """1-D sequences of different length: row ``b`` holds ``lengths[b]`` real tokens at
        positions ``0 … lengths[b]−1``, then padding up to N.

        Raises:
            ValueError: a length outside ``[0, N]``.
        """
        b, n = tokens.shape[:2]
        lengths = torch.as_tensor(lengths, device=tokens.device).reshape(-1)
        if lengths.shape[0] != b or bool((lengths < 0).any()) or bool((lengths > n).any()):
            raise ValueError(f"need {b} lengths in [0, {n}], got {lengths.tolist()}")
        ar = torch.arange(n, device=tokens.device)
        padding = ar[None, :] >= lengths[:, None]
        pos = ar[None, :, None].expand(b, n, 1)
        if maskable is not None:
            maskable = maskable & ~padding
        return cls(tokens, pos, padding, maskable)

    # ------------------------------------------------------------------ views
    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        """N (padded length)."""
        return self.tokens.shape[1]

    @property
    def valid(self) -> Tensor:
        """``[B, N]`` bool, True = a real token (``~padding``)."""
        if self.padding is None:
            return torch.ones(self.tokens.shape[:2], dtype=torch.bool, device=self.tokens.device)
        return ~self.padding

    @property
    def maskable_mask(self) -> Tensor:
        """``[B, N]`` bool, True = may be masked (``maskable``, or every real token)."""
        return self.valid if self.maskable is None else self.maskable

    def lengths(self) -> Tensor:
        """``[B]`` int64 number of real tokens per row."""
        return self.valid.sum(1)

    def with_tokens(self, tokens: Tensor) -> "TokenBatch":
        return replace(self, tokens=tokens)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TokenBatch":
        """Move to ``device`` (tokens also cast to ``dtype`` when given)."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TokenBatch(self.tokens.to(device=device, dtype=dtype or self.tokens.dtype),
                          self.positions.to(device), mv(self.padding), mv(self.maskable))
