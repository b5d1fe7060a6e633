"""``torch.compile`` of the backbone for sampling (TorchInductor, weights frozen).

Algorithm 1 runs the context encoder and the feature predictor once per AR step (K = 64 passes
per image batch), so they dominate sampling time once the denoising MLP needs few steps
(``docs/results/speed.md``). Compiling each transformer block with Inductor *freezing* (weights
become constants: bf16 weights are pre-cast and pre-packed for oneDNN, linear + GELU are fused)
cut a reference-tiny backbone pass (B 16, bf16, 2 CPU threads) from ~45 ms to ~33 ms after a
one-off ~45 s compile. Off by default: the compile only pays off over many batches, and the
compiled blocks give the eager results only up to bf16 rounding (oneDNN's own kernels).

Blocks are compiled one by one (not the whole model), with dynamic shapes: the encoder's
sequence length grows with each AR step and the last predictor block sees the revealed rows
only, so a static compile would recompile at almost every step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["compile_backbone_for_sampling", "is_compiled_for_sampling"]

_MARK = "_djepa_compiled_for_sampling"


def _with_inductor_config(fn: Callable[..., Any], **patch: Any) -> Callable[..., Any]:
    """``fn`` called under ``torch._inductor.config.patch(**patch)``: Inductor reads compile-time
    options such as ``freezing`` while it compiles, which happens lazily inside the first call
    (and any recompile), so the patch has to be active during every call."""
    import torch._inductor.config as inductor_config

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with inductor_config.patch(patch):
            return fn(*args, **kwargs)

    return run


def compile_backbone_for_sampling(model: nn.Module, *, freeze_weights: bool = True) -> nn.Module:
    """Compile every block of ``model.encoder`` and ``model.predictor`` in place for inference.

    Call it after the weights are loaded and before sampling, under no autograd (the sampler's
    ``torch.no_grad``). With ``freeze_weights`` the compiled code holds the weights as constants
    taken at the first call: weights changed later (training, ``load_state_dict``) are NOT seen;
    build a fresh model instead. ``state_dict`` keys do not change. Idempotent.

    Args:
        model: a :class:`~djepa.core.model.DJEPA` (anything with ``encoder.blocks`` and
            ``predictor.blocks``).
        freeze_weights: Inductor freezing (constant-folded, pre-packed weights); False compiles
            without it (weights read at every call, slower on CPU).

    Returns:
        ``model`` (the same object).

    Raises:
        TypeError: ``model`` has no ``encoder.blocks`` / ``predictor.blocks``.
    """
    try:
        blocks = [*model.encoder.blocks, *model.predictor.blocks]
    except AttributeError as e:
        raise TypeError(f"expected a DJEPA-like model with encoder/predictor blocks, got {type(model).__name__}") from e
    if getattr(model, _MARK, False):
        return model
    for block in blocks:
        compiled = torch.compile(block.forward, dynamic=True)
        block.forward = _with_inductor_config(compiled, freezing=freeze_weights)
    setattr(model, _MARK, True)
    return model


def is_compiled_for_sampling(model: nn.Module) -> bool:
    """Whether :func:`compile_backbone_for_sampling` was applied to ``model``."""
    return bool(getattr(model, _MARK, False))
