"""Exponential moving average of a model: the target encoder and the sampling weights.

D-JEPA keeps one EMA of the whole network (paper §3.2, App. B: decay 0.9999). Its context
encoder is the *target encoder* that produces the prediction-loss targets (run on all tokens,
no gradient) and its weights are the ones used for sampling and released.

Update rule after every optimizer step k (k = number of updates already applied):

    θ_ema ← d_k · θ_ema + (1 − d_k) · θ          (parameters, in fp32)
    buffers_ema ← buffers                         (copied)

``d_k = decay`` without warm-up. With ``warmup=W`` (an int > 0) the decay ramps linearly,
``d_k = decay · min(1, k / W)`` (so the first update copies the model), which helps very short
runs; any ``Callable[[int], float]`` can be given instead.

The EMA copy is always fp32, even when the live model computes in bf16/fp16 (master weights
and EMA must not be rounded to 8 mantissa bits every step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA of ``model``'s parameters (and a copy of its buffers).

    Args:
        model: the live model (the unwrapped module, not a DeepSpeed engine). Its structure
            (parameter/buffer names) is deep-copied once.
        decay: target decay d ∈ [0, 1) (paper: 0.9999).
        warmup: ``None``/``0`` (constant decay), an int W > 0 (linear ramp d·min(1, k/W)) or a
            callable ``k -> d_k`` (k = number of updates already applied).

    Attributes:
        module: the fp32 EMA copy; ``requires_grad=False`` everywhere and in eval mode.
        num_updates: number of :meth:`update` calls applied so far.

    Raises:
        ValueError: decay outside [0, 1] or a negative warm-up length.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999,
                 warmup: int | Callable[[int], float] | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if isinstance(warmup, int) and warmup < 0:
            raise ValueError(f"EMA warm-up must be >= 0 steps, got {warmup}")
        self.decay = float(decay)
        self.warmup = warmup
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.grad = None
        self.module.float()
        self.module.requires_grad_(False)
        self.module.eval()
        self.num_updates = 0
        self._param_names = [n for n, _ in self.module.named_parameters()]
        self._buffer_names = [n for n, _ in self.module.named_buffers()]

    def decay_at(self, step: int) -> float:
        """Decay d_k used by the update that follows ``step`` applied updates."""
        if self.warmup is None or self.warmup == 0:
            return self.decay
        if callable(self.warmup):
            return float(self.warmup(step))
        return self.decay * min(1.0, step / float(self.warmup))

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Apply one EMA step from ``model`` (same structure as at construction).

        Returns:
            the decay d_k that was used.

        Raises:
            ValueError: ``model``'s parameter names differ from the EMA copy's.
        """
        d = self.decay_at(self.num_updates)
        live = list(model.named_parameters())
        if [n for n, _ in live] != self._param_names:
            raise ValueError("EMA.update: the model's parameter names differ from the EMA copy's")
        ema_params = [p for _, p in self.module.named_parameters()]
        src = [p.detach().to(device=e.device, dtype=e.dtype) for e, (_, p) in zip(ema_params, live)]
        if ema_params:
            # lerp(e, p, w) = e + w (p - e) = (1 - w) e + w p with w = 1 - d.
            torch._foreach_lerp_(ema_params, src, 1.0 - d)
        live_buffers = dict(model.named_buffers())
        for name, buf in self.module.named_buffers():
            other = live_buffers.get(name)
            if other is not None:
                buf.copy_(other.detach().to(device=buf.device, dtype=buf.dtype))
        self.num_updates += 1
        return d

    def to(self, device: torch.device | str) -> "EMA":
        """Move the EMA copy to ``device`` (dtype stays fp32)."""
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, Any]:
        """``{"module": fp32 state dict, "num_updates": int, "decay": float}``."""
        return {"module": self.module.state_dict(), "num_updates": self.num_updates,
                "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict` (strict: missing or unexpected keys raise).

        Raises:
            RuntimeError: key mismatch (from ``nn.Module.load_state_dict``).
        """
        self.module.load_state_dict(state["module"], strict=True)
        self.num_updates = int(state.get("num_updates", 0))
        if "decay" in state:
            self.decay = float(state["decay"])
