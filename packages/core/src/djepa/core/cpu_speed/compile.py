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

from djepa.core.norms import no_autocast

__all__ = ["compile_backbone_for_sampling", "is_compiled_for_sampling"]

_MARK = "_djepa_compiled_for_sampling"


def _with_configs(fn: Callable[..., Any], dynamo: dict[str, Any], inductor: dict[str, Any]) -> Callable[..., Any]:
    """``fn`` called under ``torch._dynamo.config.patch(dynamo)`` and
    ``torch._inductor.config.patch(inductor)``: both are read while compiling, which happens
    lazily inside the first call (and any recompile), so the patches are active at every call."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with dynamo_config.patch(dynamo), inductor_config.patch(inductor):
            return fn(*args, **kwargs)

    return run


def compile_backbone_for_sampling(model: nn.Module, *, freeze_weights: bool = True,
                                  backend: str = "inductor") -> nn.Module:
    """Compile every block of ``model.encoder`` and ``model.predictor`` in place for inference.

    Call it after the weights are loaded and before sampling, under no autograd (the sampler's
    ``torch.no_grad``). With ``freeze_weights`` the compiled code holds the weights as constants
    taken at the first call: weights changed later (training, ``load_state_dict``) are NOT seen;
    build a fresh model instead. ``state_dict`` keys do not change. A second call returns at once
    (also with other arguments: the first compile stays).

    All blocks share the code of ``Block.forward`` and, with frozen weights, Dynamo keeps one
    cache entry per block (it guards on the weights' identity) plus dynamic-shape variants, so
    the recompile limits are raised to 4 entries per block (Dynamo's default of 8 in total would
    leave every block after the 8th running eagerly).

    Args:
        model: a :class:`~djepa.core.model.DJEPA` (anything with ``encoder.blocks`` and
            ``predictor.blocks``).
        freeze_weights: Inductor freezing (constant-folded, pre-packed weights); False compiles
            without it (weights read at every call, slower on CPU).
        backend: ``torch.compile`` backend (``"inductor"``; ``"eager"`` only traces, for tests).

    Returns:
        ``model`` (the same object).

    Raises:
        TypeError: ``model`` has no ``encoder.blocks`` / ``predictor.blocks``.
    """
    try:
        blocks = [*model.encoder.blocks, *model.predictor.blocks]
    except AttributeError as e:
        raise TypeError(f"expected a DJEPA-like model with encoder/predictor blocks, got {type(model).__name__}") from e
    if is_compiled_for_sampling(model):
        return model
    try:  # fill norms.no_autocast's per-device cache now: its first lookup cannot be traced
        no_autocast(next(model.parameters()).device)
    except StopIteration:
        pass
    limit = max(8, 4 * len(blocks))
    dynamo = {"recompile_limit": limit, "accumulated_recompile_limit": max(256, 4 * limit)}
    for block in blocks:
        compiled = torch.compile(block.forward, dynamic=True, backend=backend)
        block.forward = _with_configs(compiled, dynamo, {"freezing": freeze_weights})
    setattr(model, _MARK, True)
    return model


def is_compiled_for_sampling(model: nn.Module) -> bool:
    """Whether :func:`compile_backbone_for_sampling` was applied to ``model``."""
    return bool(getattr(model, _MARK, False))
