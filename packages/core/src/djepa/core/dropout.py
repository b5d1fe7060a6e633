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

__all__ = ["Dropout", "dropout", "dropout_mask", "set_cpu_dropout_rng", "cpu_dropout_rng"]

_RNG_CHOICES = ("numpy", "torch")
_rng = os.environ.get("DJEPA_CPU_DROPOUT_RNG", "numpy").strip().lower() or "numpy"
if _rng not in _RNG_CHOICES:
    raise ValueError(f"DJEPA_CPU_DROPOUT_RNG must be one of {_RNG_CHOICES}, got {_rng!r}")


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
    """The current CPU mask source (``"numpy"`` or ``"torch"``)."""
    return _rng


def _uses_numpy(x: Tensor) -> bool:
    return _rng == "numpy" and x.device.type == "cpu"


def dropout_mask(shape: tuple[int, ...] | torch.Size, p: float, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> Tensor:
    """Scaled keep-mask: ``1 / (1 − p)`` with probability ``1 − p``, else 0, i.i.d.

    One int64 is drawn from torch's global generator to seed a NumPy PCG64 stream, which fills
    float32 uniforms ``u``; kept where ``u < 1 − p``.

    Args:
        shape: mask shape. p: drop probability in ``[0, 1)``. dtype: mask dtype (the input's).
        device: where the mask goes (drawn on the host).

    Returns:
        ``shape`` tensor of ``dtype``.

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    u = np.random.Generator(np.random.PCG64(seed)).random(int(np.prod(shape, dtype=np.int64)),
                                                         dtype=np.float32)
    keep = torch.from_numpy(u < np.float32(1.0 - p)).reshape(shape)
    return keep.to(device=device, dtype=dtype).mul_(1.0 / (1.0 - p))


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the CPU mask from :func:`dropout_mask` (see module doc).

    Shapes: any; returns ``x``'s shape and dtype. Autograd: the gradient is ``grad · mask``.
    """
    if not training or p == 0.0:
        return x
    if not _uses_numpy(x):
        return F.dropout(x, p, training)
    return x * dropout_mask(x.shape, p, x.dtype, x.device)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, ``state_dict`` and repr) using :func:`dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)
