"""Per-row random streams for batched sampling (issue 11, item 6).

A batch sampled with one generator gives other samples at another batch size; TTS systems are
known to lose content on the shorter sentence of a batch. With one ``torch.Generator`` per row,
every draw a row makes (its order, its tokens' noise) comes from its own stream, in the order
the row would make them alone — so a batched sample equals the row sampled alone and does not
depend on the batch size or the other rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RowStreams", "row_generators"]


class RowStreams:
    """One generator per row and, for the current draw, how many leading-dim entries each row
    owns (``counts``, summing to the first dim of every draw).

    ``randn((M, C))`` returns ``cat_i randn((counts[i], C), generator=generators[i])`` — exactly
    what row i alone draws. Accepted wherever djepa's randomness helpers take a generator
    (:func:`djepa.core.diffusion.randn`), so the diffusion and flow samplers need no change.
    """

    def __init__(self, generators: Sequence[torch.Generator], counts: Sequence[int]) -> None:
        if len(generators) != len(counts):
            raise ValueError(f"{len(generators)} generators for {len(counts)} rows")
        self.generators = list(generators)
        self.counts = [int(c) for c in counts]

    def randn(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        """``shape = (sum(counts), *rest)`` float32 N(0, I) on ``device``.

        Raises:
            ValueError: the leading dim is not ``sum(counts)``.
        """
        shape = tuple(shape)
        if shape[0] != sum(self.counts):
            raise ValueError(f"a draw of {shape[0]} rows for per-row counts summing to {sum(self.counts)}")
        parts = [torch.randn((c, *shape[1:]), generator=g, device=g.device).to(device)
                 for g, c in zip(self.generators, self.counts) if c > 0]
        return torch.cat(parts) if parts else torch.zeros(shape, device=device)


def row_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed on ``device``."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
