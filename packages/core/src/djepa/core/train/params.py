"""AdamW parameter groups: which parameters get weight decay (paper App. B, official code).

No weight decay on: every parameter with ``ndim <= 1`` (biases, norm scales, 1-D tokens) and
every parameter whose name starts with one of the model's ``no_weight_decay_prefixes``
(``DJEPA``: token/position embeddings, buffer and mask tokens, the class condition incl. the
null class, the denoising MLP and the projector).

Per-parameter learning-rate scales (optional): a model with a method
``param_lr_scales() -> {name: scale}`` (e.g. layer-wise lr decay for fine-tuning, BEiT / MAE
``param_groups_lrd``) gets one group per (decay, scale) pair, each carrying ``"lr_scale"``; the
engine sets such a group's lr to ``scale · lr(step)``. Models without it get the two groups as
before (no ``"lr_scale"`` key: scale 1).
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["no_weight_decay_names", "param_groups"]


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters of ``model`` that get no weight decay."""
    prefixes = tuple(getattr(model, "no_weight_decay_prefixes", ()))
    return {n for n, p in model.named_parameters()
            if p.requires_grad and (p.ndim <= 1 or (prefixes and n.startswith(prefixes)))}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups (empty ones omitted): decayed (``"djepa_decay": True``) and not.

    The ``djepa_decay`` flag lets the engine apply the weight-decay schedule to the right group.
    With a model's ``param_lr_scales()`` (module docstring) each of the two is split by scale
    and every group gets ``"lr_scale"`` (names missing from the mapping: 1.0).

    Raises:
        ValueError: a scale that is not finite and >= 0, or a name the model does not have.
    """
    skip = no_weight_decay_names(model)
    scales_fn = getattr(model, "param_lr_scales", None)
    if callable(scales_fn):
        return _scaled_groups(model, weight_decay, skip, dict(scales_fn()))
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if n in skip else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "djepa_decay": True})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "djepa_decay": False})
    return groups


def _scaled_groups(model: nn.Module, weight_decay: float, skip: set[str],
                   scales: dict[str, float]) -> list[dict[str, Any]]:
    import math

    names = {n for n, _ in model.named_parameters()}
    unknown = sorted(set(scales) - names)
    if unknown:
        raise ValueError(f"param_lr_scales names unknown parameters {unknown[:4]}")
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = float(scales.get(n, 1.0))
        if not (math.isfinite(scale) and scale >= 0):
            raise ValueError(f"lr scale of {n} must be finite and >= 0, got {scale}")
        decay = n not in skip
        g = groups.setdefault((decay, scale), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                               "djepa_decay": decay, "lr_scale": scale})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (not k[0], k[1]))]
