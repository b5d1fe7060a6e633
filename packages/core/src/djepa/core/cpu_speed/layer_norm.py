"""A faster CPU kernel for the bf16 LayerNorm of inference (sampling, the no-grad target encoder).

ATen's CPU ``layer_norm`` for a bf16 input with float32 weight/bias normalises in float32 and
rounds once to bf16, as the plain path (upcast, float32 ``layer_norm``, round) does, without
writing float32 copies of x and y: 2.5× faster on the reference-tiny backbone's
``[16, 128, 256]``, the same values to one bf16 rounding step. Not with autograd: in torch 2.10
that kernel's backward loses precision in the weight/bias gradients (8 % off at 4,096 rows), so
autograd keeps the plain path.

:func:`bf16_inference_layer_norm` implements the hook :func:`djepa.core.ops.layer_norm_fp32`;
:func:`djepa.core.cpu_speed.install` plugs it in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bf16_inference_layer_norm"]


def bf16_inference_layer_norm(x: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None,
                              bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm in float32 returned in ``x.dtype`` (:func:`djepa.core.ops.layer_norm_fp32`):
    a bf16 CPU input without autograd goes to ATen's
    mixed-dtype kernel directly; anything else upcasts.

    Shapes: ``x [..., *normalized_shape]`` → same shape in ``x.dtype``; ``weight``/``bias``
    float32 or None.
    """
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
        return F.layer_norm(x, normalized_shape, weight, bias, eps)
    return F.layer_norm(x.float(), normalized_shape, weight, bias, eps).to(x.dtype)
