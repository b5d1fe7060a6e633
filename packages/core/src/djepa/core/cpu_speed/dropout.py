"""Dropout whose CPU masks come from NumPy's PCG64 instead of torch's serial CPU generator.

The official model uses dropout 0.1 on attention probabilities, after the attention projection
and twice in every MLP (FIDELITY.md "Model"). A reference-tiny training step (batch 32) draws
~50 M Bernoulli numbers for it; torch draws them one at a time from its CPU generator
(~5.5 ns each, 22 % of a bf16 step on the project's 2-core VM, ``docs/results/speed.md``).
NumPy's PCG64 fills float32 uniforms ~4× faster. The mask is the same random variable —
``keep ~ Bernoulli(1 − p)`` i.i.d. per element from a float32 uniform (24-bit resolution),
scaled by ``1 / (1 − p)`` — drawn from another stream. Each mask is seeded with one draw from
torch's global generator, so runs stay reproducible under ``torch.manual_seed`` and a training
run resumed from a checkpoint (which stores torch's RNG state) continues bit-identically.

:func:`numpy_dropout` and :func:`numpy_mask_sdpa` are implementations of the hooks
:func:`djepa.core.ops.dropout` / :func:`djepa.core.ops.sdpa`; :func:`djepa.core.cpu_speed.install`
plugs them in. Accelerators and ``torch.compile`` tracing keep torch's own kernels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from djepa.core.norms import no_autocast

__all__ = ["dropout_keep", "numpy_dropout", "numpy_mask_sdpa", "math_attention"]


def _applies(x: Tensor) -> bool:
    """A CPU tensor, and not while ``torch.compile`` traces (NumPy calls would break graphs)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def dropout_keep(shape: tuple[int, ...] | torch.Size, p: float) -> Tensor:
    """Keep-mask ``u < 1 − p`` of i.i.d. float32 uniforms ``u`` (``Bernoulli(1 − p)``), on CPU.

    One int64 is drawn from torch's global generator to seed a fresh NumPy PCG64 stream, so
    ``torch.manual_seed`` / a restored torch RNG state decide the mask.

    Args:
        shape: mask shape. p: drop probability in ``[0, 1)``.

    Returns:
        ``shape`` bool tensor on CPU, True = kept.

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    u = np.random.Generator(np.random.PCG64(seed)).random(int(np.prod(shape, dtype=np.int64)),
                                                         dtype=np.float32)
    return torch.from_numpy(u < np.float32(1.0 - p)).reshape(shape)


def numpy_dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``; on CPU the mask comes from :func:`dropout_keep`.

    ``y = (x · 1/(1 − p)) · keep``: the scale is applied as a float (torch's CPU kernel rounds
    it to the input dtype first: 1/0.9 → 1.109 in bf16, a 0.16 % shrink of every kept value).
    ``p >= 1``, non-CPU tensors and ``torch.compile`` tracing go to ``F.dropout``.

    Shapes: any; returns ``x``'s shape and dtype. Autograd: the gradient is ``grad · keep / (1 − p)``.

    Raises:
        ValueError: ``p < 0`` (from ``F.dropout`` / :func:`dropout_keep`).
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0 or not _applies(x):
        return F.dropout(x, p, training)
    # bool → uint8 view → dtype is ~4x faster than a bool → dtype cast on CPU
    keep = dropout_keep(x.shape, p).view(torch.uint8).to(device=x.device, dtype=x.dtype)
    return (x * (1.0 / (1.0 - p))).mul_(keep)


def numpy_mask_sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                    dropout_p: float = 0.0) -> Tensor:
    """:func:`djepa.core.ops.sdpa` with the attention-probability dropout mask from
    :func:`numpy_dropout` (CPU training with dropout, where SDPA would use its math path too);
    otherwise ``F.scaled_dot_product_attention``.

    SDPA's CPU math path written out: scores, softmax and dropout in (at least) float32 with
    autocast off; the dropped-out probabilities then meet v in v's dtype, as in flash attention
    on GPU (bf16 P·V with float accumulation; all-float32 P·V cost 20 % of a bf16
    reference-tiny training step on CPU). Result in ``q.dtype``.

    Shapes: q ``[B, H, Lq, d]``, k/v ``[B, H, Lk, d]``, ``attn_mask`` bool broadcastable to
    ``[B, H, Lq, Lk]`` (True = attend) or None; returns ``[B, H, Lq, d]``.
    """
    if not (0.0 < dropout_p < 1.0 and _applies(q)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return math_attention(q, k, v, attn_mask, dropout_p)


def math_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, dropout_p: float) -> Tensor:
    """The written-out attention of :func:`numpy_mask_sdpa` (any ``dropout_p`` in ``[0, 1)``;
    masks from :func:`numpy_dropout`). Shapes and dtypes as there."""
    dt = torch.promote_types(q.dtype, torch.float32)
    with no_autocast(q.device):  # autocast would cast the float32 matmuls back down
        s = torch.matmul(q.to(dt), k.to(dt).transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, float("-inf"))
        a = numpy_dropout(torch.softmax(s, dim=-1), dropout_p).to(v.dtype)
    return torch.matmul(a, v).to(q.dtype)
