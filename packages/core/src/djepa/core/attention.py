"""Multi-head self-attention with pluggable kernels, qk-norm and RoPE; the transformer MLP.

DESIGN.md §3: one ``Attention`` module, kernels PyTorch SDPA (default, CPU and GPU) and
xformers' memory-efficient attention (CUDA only), which give the same numbers. FIDELITY.md
"Model": qkv bias, RMSNorm qk-norm, attention/projection dropout.

Padding convention everywhere: ``key_padding_mask [B, L] bool, True = padding`` — a padded
position is ignored as a KEY (it still gets an output as a query; callers drop it).
If every key of a sample is padding, no softmax is defined; :func:`attention_kernel` then
returns **zeros** for that sample (instead of NaN), so the module output is ``proj.bias``
there — finite, and ignored by any caller that masks its losses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from djepa.core.dropout import Dropout, dropout, uses_numpy_masks
from djepa.core.norms import RMSNorm, no_autocast
from djepa.core.rope import apply_rope

__all__ = ["KERNELS", "attention_kernel", "Attention", "MLP"]

KERNELS = ("sdpa", "xformers")

_XFORMERS_ERROR = (
    "attention kernel 'xformers' needs a CUDA device and the xformers package; use kernel='sdpa'"
)


def _check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {KERNELS}")


def _xformers_ops():
    try:
        import xformers.ops as xops
    except Exception as e:  # ImportError, or a broken build raising at import
        raise RuntimeError(_XFORMERS_ERROR) from e
    return xops


def attention_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    kernel: str = "sdpa",
) -> Tensor:
    """``softmax(q kᵀ / √d) v`` per head, ignoring padded keys.

    Args:
        q: ``[B, H, Lq, d]``; k, v: ``[B, H, Lk, d]`` (same dtype and device).
        key_padding_mask: ``[B, Lk]`` bool, True = padding (never attended to), or None.
        dropout_p: attention-probability dropout; the caller passes 0 in eval mode.
        kernel: ``"sdpa"`` (``F.scaled_dot_product_attention``, any device) or ``"xformers"``
            (``xformers.ops.memory_efficient_attention``, CUDA only). With ``"sdpa"``, CPU
            training with dropout uses the same math written out (scores, softmax and dropout
            in float32, P·V in v's dtype) so that the dropout mask comes from
            :mod:`djepa.core.dropout` (NumPy PCG64).

    Returns:
        ``[B, H, Lq, d]`` in ``q.dtype``. Samples whose keys are all padding give zeros.

    Raises:
        ValueError: unknown kernel, or a mask of the wrong shape.
        RuntimeError: ``"xformers"`` requested off CUDA or without the xformers package.
    """
    _check_kernel(kernel)
    B, H, Lq, d = q.shape
    Lk = k.shape[-2]
    all_pad = None
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, Lk):
            raise ValueError(
                f"key_padding_mask must be [B, Lk] = {(B, Lk)}, got {tuple(key_padding_mask.shape)}"
            )
        key_padding_mask = key_padding_mask.to(device=q.device, dtype=torch.bool)
        all_pad = key_padding_mask.all(dim=-1)  # [B]
        # A sample with no valid key: attend to everything (finite), zero its output below.
        key_padding_mask = key_padding_mask & ~all_pad[:, None]

    if kernel == "sdpa" and 0.0 < dropout_p < 1.0 and uses_numpy_masks(q):
        out = _math_attention(q, k, v, key_padding_mask, dropout_p)
    elif kernel == "sdpa":
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    else:
        if q.device.type != "cuda":
            raise RuntimeError(_XFORMERS_ERROR + f" (tensors are on {q.device.type})")
        xops = _xformers_ops()
        bias = None
        if key_padding_mask is not None:
            # xformers needs the bias rows 16-byte aligned: allocate a last dim rounded up to a
            # multiple of 8 and slice (xformers/ops/fmha/cutlass.py, _check_bias_alignment).
            padded = math.ceil(Lk / 8) * 8
            buf = torch.zeros(B, 1, 1, padded, dtype=q.dtype, device=q.device)
            bias = buf[..., :Lk]
            bias.masked_fill_(key_padding_mask[:, None, None, :], float("-inf"))
            bias = bias.expand(B, H, Lq, Lk)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p
        ).transpose(1, 2)

    if all_pad is not None:
        out = out.masked_fill(all_pad[:, None, None, None], 0.0)
    return out


def _math_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None,
                    dropout_p: float) -> Tensor:
    """SDPA's CPU math path written out, so that the attention-probability dropout takes its
    mask from :func:`djepa.core.dropout.dropout` (CPU training with dropout, where SDPA would
    use its math path too). Scores, softmax and dropout in (at least) float32 with autocast
    off; the dropped-out probabilities then meet v in v's dtype, as in flash attention on GPU
    (bf16 P·V with float accumulation; all-float32 P·V cost 20 % of a bf16 reference-tiny
    training step on CPU). Result in ``q.dtype``.

    Shapes: q ``[B, H, Lq, d]``, k/v ``[B, H, Lk, d]``; returns ``[B, H, Lq, d]``.
    """
    dt = torch.promote_types(q.dtype, torch.float32)
    with no_autocast(q.device):  # autocast would cast the float32 matmuls back down
        s = torch.matmul(q.to(dt), k.to(dt).transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if key_padding_mask is not None:
            s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        a = dropout(torch.softmax(s, dim=-1), dropout_p).to(v.dtype)
    return torch.matmul(a, v).to(q.dtype)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv → heads → qk-norm → RoPE → kernel → merge → proj``.

    Args:
        dim: token width ``D`` (input and output).
        num_heads: heads ``H``; ``attn_dim`` must be divisible by it.
        qkv_bias: bias in ``qkv`` (True in the official code).
        qk_norm: RMSNorm over each head's channels of q and k (on in the training scripts).
        attn_drop: dropout on attention probabilities (training only).
        proj_drop: dropout after ``proj``.
        kernel: ``"sdpa"`` or ``"xformers"`` (see :func:`attention_kernel`).
        attn_dim: width of the q/k/v space, default ``dim``. ``JointBlock`` uses it to project
            a context stream of another width into the shared attention width.

    Submodules: ``qkv`` (Linear dim→3·attn_dim), ``q_norm``/``k_norm`` (RMSNorm(head_dim) or
    Identity), ``attn_drop`` (Dropout, its ``p`` is passed to the kernel), ``proj`` (Linear
    attn_dim→dim), ``proj_drop``.

    Raises:
        ValueError: unknown kernel or ``attn_dim % num_heads != 0``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel: str = "sdpa",
        attn_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_kernel(kernel)
        attn_dim = dim if attn_dim is None else attn_dim
        if attn_dim % num_heads != 0:
            raise ValueError(f"attention width {attn_dim} is not divisible by num_heads={num_heads}")
        self.dim = dim
        self.attn_dim = attn_dim
        self.num_heads = num_heads
        self.head_dim = attn_dim // num_heads
        self.kernel = kernel
        self.qkv = nn.Linear(dim, 3 * attn_dim, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = Dropout(attn_drop)
        self.proj = nn.Linear(attn_dim, dim)
        self.proj_drop = Dropout(proj_drop)

    @property
    def dropout_p(self) -> float:
        """Attention dropout probability in effect now (0 in eval mode)."""
        return self.attn_drop.p if self.training else 0.0

    def project_qkv(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, L, dim]`` → ``q, k, v`` each ``[B, H, L, head_dim]`` (qk-norm and RoPE
        applied to q and k; ``rope = (cos, sin)`` as for :func:`apply_rope`)."""
        B, L, _ = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k, v

    def project_out(self, o: Tensor) -> Tensor:
        """Kernel output ``[B, H, L, head_dim]`` → ``[B, L, dim]`` (merge heads, proj, dropout)."""
        B, H, L, d = o.shape
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, L, H * d)))

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        key_padding_mask: Tensor | None = None,
        query_idx: Tensor | None = None,
    ) -> Tensor:
        """Args:
            x: ``[B, L, dim]``.
            rope: ``(cos, sin)`` each ``[L, head_dim/2]`` or ``[B, L, head_dim/2]``, or None.
            key_padding_mask: ``[B, L]`` bool, True = padding (ignored as a key), or None.
            query_idx: ``[B, Q] int64`` rows that ask (queries); all ``L`` rows are keys and
                values. None = every row.

        Returns:
            ``[B, L, dim]`` (``[B, Q, dim]`` with ``query_idx``) in the compute dtype of ``proj``.
        """
        q, k, v = self.project_qkv(x, rope)
        if query_idx is not None:
            q = torch.gather(q, 2, query_idx[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
        o = attention_kernel(q, k, v, key_padding_mask, self.dropout_p, self.kernel)
        return self.project_out(o)


class MLP(nn.Module):
    """Transformer feed-forward: ``fc1 → GELU (exact, erf) → Dropout → fc2 → Dropout``
    (timm ``Mlp`` default).

    Args:
        dim: input/output width. hidden: hidden width (``int(dim · mlp_ratio)``).
        drop: dropout probability after the activation and after ``fc2``.

    Shapes: ``[..., dim]`` → ``[..., dim]``.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
