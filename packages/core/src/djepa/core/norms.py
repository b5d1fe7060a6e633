"""Normalisation layers computed in fp32 (FIDELITY.md "Model": LayerNorm eps 1e-6 in fp32,
RMSNorm qk-norm).

Both layers upcast their input and weights to float32, normalise with autocast disabled and
return the input's dtype, so bf16 training sees the same statistics as fp32. LayerNorm goes
through the hook :func:`djepa.core.ops.layer_norm_fp32` (``F.layer_norm`` on the float32 upcast,
unless :mod:`djepa.core.cpu_speed` installed its bf16 inference kernel).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from djepa.core import ops

__all__ = ["LayerNorm", "RMSNorm", "no_autocast"]


_AUTOCAST_AVAILABLE: dict[str, bool] = {}


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """A context that disables autocast on ``device`` (a no-op where autocast is unavailable,
    e.g. the meta device)."""
    available = _AUTOCAST_AVAILABLE.get(device.type)
    if available is None:  # asked once per device type (a plain dict read traces under compile)
        available = _AUTOCAST_AVAILABLE[device.type] = torch.amp.is_autocast_available(device.type)
    if available:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last dimension(s), computed in float32.

    Args:
        normalized_shape: size of the normalised trailing dimension(s), e.g. ``D``.
        eps: added to the variance; default 1e-6 (official code / timm ViT).
        elementwise_affine: learn ``weight`` (ones) and ``bias`` (zeros) when True.

    Shapes: ``x [..., D]`` any float dtype → ``[..., D]`` in ``x.dtype``.
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        with no_autocast(x.device):
            return ops.layer_norm_fp32(x, self.normalized_shape, weight, bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm ``x / sqrt(mean(x²) + eps) · weight`` over the last dimension,
    computed in float32 (used as qk-norm on each attention head).

    Args:
        dim: size of the last dimension (the head dim for qk-norm).
        eps: added to the mean square; default 1e-6.

    Shapes: ``x [..., dim]`` → ``[..., dim]`` in ``x.dtype``. Parameter: ``weight [dim]`` (ones).
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        with no_autocast(x.device):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
            y = y * self.weight.float()
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
