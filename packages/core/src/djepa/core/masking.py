"""Masking for D-JEPA training (paper §3.1) and generation orders (§3.5).

Polarity convention used everywhere in djepa: ``mask: [B, N] bool, True = masked`` (the token is
hidden from the context encoder and is a prediction target).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sample_mask_ratio", "num_masked_tokens", "random_orders", "mask_from_orders"]


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
