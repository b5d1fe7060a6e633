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

Accelerators keep torch's own kernels (Philox, fast). ``DJEPA_CPU_DROPOUT_RNG=torch`` (or
:func:`set_cpu_dropout_rng`) restores torch's CPU generator, i.e. the official code's exact
random stream.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Dropout", "dropout", "dropout_keep", "uses_numpy_masks", "set_cpu_dropout_rng", "cpu_dropout_rng"]

_RNG_CHOICES = ("numpy", "torch")
_rng: str | None = None  # None: read DJEPA_CPU_DROPOUT_RNG at the first dropout call


def set_cpu_dropout_rng(name: str) -> None:
    """Choose the mask source of dropout on CPU: ``"numpy"`` (default, fast) or ``"torch"``
    (torch's own ``F.dropout``, the official code's random stream).

    Raises:
        ValueError: another name.
    """
    global _rng
    if name not in _RNG_CHOICES:
        raise ValueError(f"cpu dropout rng must be one of {_RNG_CHOICES}, got {name!r}")
    _rng = name


def cpu_dropout_rng() -> str:
    """The current CPU mask source (``"numpy"`` or ``"torch"``); the first call reads the
    ``DJEPA_CPU_DROPOUT_RNG`` environment variable (default ``numpy``).

    Raises:
        ValueError: the variable holds another value (a CLI prints it as one line).
    """
    global _rng
    if _rng is None:
        name = os.environ.get("DJEPA_CPU_DROPOUT_RNG", "").strip().lower() or "numpy"
        if name not in _RNG_CHOICES:
            raise ValueError(f"DJEPA_CPU_DROPOUT_RNG must be one of {_RNG_CHOICES}, got {name!r}")
        _rng = name
    return _rng


def uses_numpy_masks(x: Tensor) -> bool:
    """Whether dropout on ``x`` takes its mask from :func:`dropout_keep`: a CPU tensor, the
    ``numpy`` source, and not while ``torch.compile`` traces (NumPy calls would break graphs;
    compiled code keeps torch's own dropout)."""
    return x.device.type == "cpu" and cpu_dropout_rng() == "numpy" and not torch.compiler.is_compiling()


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


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``; on CPU the mask comes from :func:`dropout_keep` (module doc).

    ``y = (x · 1/(1 − p)) · keep``: the scale is applied as a float (torch's CPU kernel rounds
    it to the input dtype first: 1/0.9 → 1.109 in bf16, a 0.16 % shrink of every kept value).
    ``p >= 1`` and non-CPU tensors go to ``F.dropout``.

    Shapes: any; returns ``x``'s shape and dtype. Autograd: the gradient is ``grad · keep / (1 − p)``.

    Raises:
        ValueError: ``p < 0`` (from ``F.dropout`` / :func:`dropout_keep`).
    """
    if not training or p == 0.0:
        return x
    if p >= 1.0 or not uses_numpy_masks(x):
        return F.dropout(x, p, training)
    # bool → uint8 view → dtype is ~4x faster than a bool → dtype cast on CPU
    keep = dropout_keep(x.shape, p).view(torch.uint8).to(device=x.device, dtype=x.dtype)
    return (x * (1.0 / (1.0 - p))).mul_(keep)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, ``state_dict`` and repr) using :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
