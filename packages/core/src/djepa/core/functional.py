"""Small numerical helpers shared by the losses and the model."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true.

    Args:
        values: ``[...]`` any float tensor (per-token losses, usually ``[M]`` or ``[B, N]``).
        mask: same shape as ``values`` (bool or float weights; True / 1 = counted, i.e. a
            *masked* token in D-JEPA's terms) or ``None`` for a plain mean.

    Returns:
        A scalar float32 tensor. When nothing is selected the result is exactly ``0`` (never
        NaN), and it still carries a gradient path so that backward works.
    """
    values = values.float()
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    total = weights.sum()
    return (values * weights).sum() / torch.where(total > 0, total, torch.ones_like(total))


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """Per-sample row gather: ``x: [B, L, C]``, ``idx: [B, K] int64`` → ``[B, K, C]``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
