"""Learning-rate and weight-decay schedules: stateless functions of the optimizer step.

Step k is 0-based (the k-th optimizer update). Being pure functions of k, the schedules need no
state of their own in a checkpoint: restoring the step restores them exactly.
"""

from __future__ import annotations

import math

from djepa.core.train.config import TrainConfig

__all__ = ["lr_at", "weight_decay_at"]


def lr_at(step: int, cfg: TrainConfig, world_size: int) -> float:
    """Learning rate of update ``step``.

    Linear warm-up ``peak · (k + 1) / W`` for k < W (W = ``warmup_steps``), then either
    constant ``peak`` (paper, App. B) or cosine ``min_lr + (peak − min_lr)·½(1 + cos(π·u))`` with
    u = (k − W) / (max_steps − W) ∈ [0, 1].
    """
    peak = cfg.peak_lr(world_size)
    w = cfg.warmup_steps
    if step < w:
        return peak * (step + 1) / w
    if cfg.lr_schedule == "constant":
        return peak
    span = max(1, cfg.max_steps - w)
    u = min(1.0, (step - w) / span)
    return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))


def weight_decay_at(step: int, cfg: TrainConfig) -> float:
    """Weight decay of update ``step``: constant, or linear ``start → end`` over the run
    (``start + (end − start) · k / (max_steps − 1)``; paper: 0.02 → 0.2)."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    u = min(1.0, step / max(1, cfg.max_steps - 1))
    return cfg.weight_decay + (cfg.weight_decay_end - cfg.weight_decay) * u
