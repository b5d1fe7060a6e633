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
    return (values * weights).sum() / weights.sum().clamp_min(1.0)
