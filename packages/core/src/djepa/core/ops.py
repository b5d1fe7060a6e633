"""The hook point of the model's tensor maths: dropout, fp32 LayerNorm and attention.

The layers (:class:`~djepa.core.dropout.Dropout`, :class:`~djepa.core.norms.LayerNorm`,
:func:`~djepa.core.attention.attention_kernel`) call the three functions here, which are plain
PyTorch unless someone installed another implementation of the same maths with
:func:`override`. Only :mod:`djepa.core.cpu_speed` does, and only when asked explicitly
(``djepa.core.cpu_speed.install``, which every ``djepa`` CLI calls for ``--cpu-speed on``).
Library use without that call is plain PyTorch. Nothing here reads the environment.

An override must compute the same function (same distribution for dropout; the same values up
to the documented rounding for the others) and fall back to the default where it does not
apply (another device, ``torch.compile`` tracing, autograd).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

__all__ = ["dropout", "layer_norm_fp32", "sdpa", "override", "overridden", "DEFAULTS"]


def _plain_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    return F.dropout(x, p, training)


def _plain_layer_norm_fp32(x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None,
                           bias: Tensor | None, eps: float) -> Tensor:
    return F.layer_norm(x.float(), normalized_shape, weight, bias, eps).to(x.dtype)


def _plain_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


#: The plain PyTorch implementations, by name.
DEFAULTS: dict[str, Callable[..., Tensor]] = {
    "dropout": _plain_dropout, "layer_norm_fp32": _plain_layer_norm_fp32, "sdpa": _plain_sdpa}
_impl: dict[str, Callable[..., Tensor]] = dict(DEFAULTS)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout ``x · keep / (1 − p)``, ``keep ~ Bernoulli(1 − p)`` i.i.d. (``F.dropout``).

    Shapes: any; returns ``x``'s shape and dtype. Raises ``ValueError`` for ``p`` outside [0, 1].
    """
    if not training or p == 0.0:
        return x
    return _impl["dropout"](x, p, training)


def layer_norm_fp32(x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None,
                    bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm of ``x`` over ``normalized_shape`` computed in float32 (``weight``/``bias``
    float32 or None), returned in ``x.dtype``. The caller disables autocast."""
    return _impl["layer_norm_fp32"](x, normalized_shape, weight, bias, eps)


def sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q kᵀ / √d + mask) v`` with dropout ``dropout_p`` on the probabilities
    (``F.scaled_dot_product_attention``; ``attn_mask`` bool, True = may attend).

    Shapes: q ``[B, H, Lq, d]``, k/v ``[B, H, Lk, d]`` → ``[B, H, Lq, d]`` in ``q.dtype``.
    """
    return _impl["sdpa"](q, k, v, attn_mask, dropout_p)


def override(**impls: Callable[..., Tensor] | None) -> dict[str, Callable[..., Tensor]]:
    """Install implementations by name (``dropout``, ``layer_norm_fp32``, ``sdpa``; None = the
    plain default). Process-wide. Returns the previous implementations of the names given, so
    ``override(**previous)`` undoes it.

    Raises:
        KeyError: an unknown name.
    """
    unknown = sorted(set(impls) - set(DEFAULTS))
    if unknown:
        raise KeyError(f"unknown op(s) {unknown}; known: {sorted(DEFAULTS)}")
    previous = {name: _impl[name] for name in impls}
    for name, fn in impls.items():
        _impl[name] = DEFAULTS[name] if fn is None else fn
    return previous


def overridden() -> dict[str, Callable[..., Tensor]]:
    """The ops whose implementation is not the plain default, by name."""
    return {name: fn for name, fn in _impl.items() if fn is not DEFAULTS[name]}
