"""Masking for D-JEPA training (paper §3.1) and generation orders (§3.5).

Polarity convention used everywhere in djepa: ``mask: [B, N] bool, True = masked`` (the token is
hidden from the context encoder and is a prediction target).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from djepa.core.batch import TokenBatch

__all__ = ["sample_mask_ratio", "num_masked_tokens", "random_orders", "mask_from_orders",
           "MaskingStrategy", "TruncNormalMasking", "FixedMasking"]


def sample_mask_ratio(
    generator: torch.Generator | None = None,
    *,
    minimum: float = 0.7,
    mean: float = 1.0,
    std: float = 0.25,
    maximum: float = 1.0,
) -> float:
    """Draw one mask ratio r ~ TruncNormal(mean, std) restricted to [minimum, maximum].

    Paper §3.1: mean 1.0, std 0.25, lower bound 0.7 (upper bound 1.0, as in the official code's
    ``scipy.stats.truncnorm((0.7 - 1) / 0.25, 0, loc=1, scale=0.25)``). One draw per batch.
    Sampled by inverting the normal CDF in float64 (exact, no rejection loop).

    Args:
        generator: CPU ``torch.Generator`` for reproducibility (``None`` = global RNG).

    Returns:
        A Python float in [minimum, maximum].
    """
    if not minimum <= maximum:
        raise ValueError(f"mask ratio bounds are inverted: [{minimum}, {maximum}]")
    lo = torch.tensor((minimum - mean) / std, dtype=torch.float64)
    hi = torch.tensor((maximum - mean) / std, dtype=torch.float64)
    u = torch.rand((), generator=generator, dtype=torch.float64,
                   device=generator.device if generator is not None else "cpu").cpu()
    p = torch.special.ndtr(lo) + u * (torch.special.ndtr(hi) - torch.special.ndtr(lo))
    r = mean + std * torch.special.ndtri(p)
    return float(r.clamp(minimum, maximum))


def num_masked_tokens(num_tokens: int, ratio: float) -> int:
    """``ceil(N · r)`` clamped to [1, N]: at least one token is always masked (FIDELITY.md)."""
    return max(1, min(num_tokens, math.ceil(num_tokens * ratio)))


def random_orders(
    batch_size: int, num_tokens: int, *, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None, first: Tensor | None = None,
) -> Tensor:
    """One uniformly random permutation of ``range(num_tokens)`` per sample.

    Args:
        generator: drawn on its own device (CPU or CUDA), result moved to ``device``.
        first: optional ``[B, N] bool``; positions marked True come first in every order
            (inpainting: the known tokens), the rest follow in uniformly random order.

    Returns:
        ``orders: [B, N] int64`` on ``device``; ``orders[b, :k]`` are the first k positions of
        sample b's order (masked first in training; revealed first in generation).
    """
    keys = torch.rand(batch_size, num_tokens, generator=generator,
                      device=generator.device if generator is not None else device).to(device)
    if first is not None:
        keys = keys.masked_fill(first.to(device), -1.0)
    return keys.argsort(dim=-1)


def mask_from_orders(orders: Tensor, num_masked: int) -> Tensor:
    """``mask: [B, N] bool`` with True at ``orders[:, :num_masked]`` (True = masked)."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter_(1, orders[:, :num_masked], True)


class MaskingStrategy(Protocol):
    """What the model is given to choose the training mask: ``strategy(batch, generator) ->
    mask [B, N] bool, True = masked``; must be False wherever ``batch.maskable_mask`` is False
    (padding, prompts, text)."""

    def __call__(self, batch: "TokenBatch", generator: torch.Generator | None) -> Tensor: ...


class TruncNormalMasking:
    """The paper's masking (§3.1): one ratio r ~ TruncNormal(mean, std) on [minimum, maximum]
    per batch; row b masks ``ceil(M_b · r)`` of its ``M_b`` maskable tokens (clamped to
    ``[1, M_b]``, 0 when ``M_b = 0``) along a uniformly random order — ragged counts per row.

    Draws (from ``generator``, or torch's global RNG): the ratio, then ``torch.rand(B, N)`` keys
    (non-maskable positions sort last). On a full grid this is exactly the first release's
    ``random_orders`` + ``mask_from_orders(orders, num_masked_tokens(N, r))``.
    """

    def __init__(self, minimum: float = 0.7, mean: float = 1.0, std: float = 0.25, maximum: float = 1.0) -> None:
        self.minimum, self.mean, self.std, self.maximum = minimum, mean, std, maximum

    def __call__(self, batch: "TokenBatch", generator: torch.Generator | None) -> Tensor:
        maskable = batch.maskable_mask
        b, n = maskable.shape
        ratio = sample_mask_ratio(generator, minimum=self.minimum, mean=self.mean, std=self.std,
                                  maximum=self.maximum)
        counts = maskable.sum(1)
        num = torch.ceil(counts.double() * ratio).long()
        num = torch.minimum(torch.maximum(num, counts.clamp(max=1)), counts)
        keys = torch.rand(b, n, generator=generator,
                          device=generator.device if generator is not None else maskable.device).to(maskable.device)
        orders = keys.masked_fill(~maskable, 2.0).argsort(dim=-1)
        rank = torch.empty_like(orders).scatter_(1, orders, torch.arange(n, device=orders.device).expand(b, n))
        return rank < num[:, None]

    def __repr__(self) -> str:
        return (f"TruncNormalMasking(minimum={self.minimum}, mean={self.mean}, std={self.std}, "
                f"maximum={self.maximum})")


class FixedMasking:
    """A given mask every call (tests, evaluation): ``mask [B, N] bool, True = masked``,
    intersected with the batch's maskable set."""

    def __init__(self, mask: Tensor) -> None:
        self.mask = mask

    def __call__(self, batch: "TokenBatch", generator: torch.Generator | None) -> Tensor:
        return self.mask.to(batch.tokens.device) & batch.maskable_mask
