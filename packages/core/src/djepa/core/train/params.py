"""AdamW parameter groups: which parameters get weight decay (paper App. B, official code).

No weight decay on: every parameter with ``ndim <= 1`` (biases, norm scales, 1-D tokens) and
every parameter whose name starts with one of the model's ``no_weight_decay_prefixes``
(``DJEPA``: token/position embeddings, buffer and mask tokens, the class condition incl. the
null class, the denoising MLP and the projector).
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
    """
    skip = no_weight_decay_names(model)
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
