"""Multi-head self-attention with pluggable kernels, qk-norm and RoPE; the transformer MLP.

DESIGN.md §3: one ``Attention`` module, kernels PyTorch SDPA (default, CPU and GPU) and
xformers' memory-efficient attention (CUDA only), which give the same numbers. FIDELITY.md
"Model": qkv bias, RMSNorm qk-norm, attention/projection dropout.

Two mask polarities, each fixed everywhere in djepa:

* ``key_padding_mask [B, Lk] bool, True = padding`` — a padded position is ignored as a KEY (it
  still gets an output as a query; callers drop it).
* ``attn_mask [..., Lq, Lk] bool, True = may attend`` (PyTorch SDPA's polarity), broadcastable to
  ``[B, H, Lq, Lk]``: accepted shapes ``[Lq, Lk]``, ``[B, Lq, Lk]``, ``[B, 1, Lq, Lk]``,
  ``[B, H, Lq, Lk]``. Block-causal text + bidirectional image spans (Transfusion) is one case,
  built by :func:`block_causal_mask`.

Both may be given; a key is attended iff it is allowed by both. A query row with no allowed key
has no softmax; :func:`attention_kernel` then returns **zeros** for that row (instead of NaN), so
the module output is ``proj.bias`` there — finite, and ignored by any caller that masks its
losses.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from djepa.core import ops
from djepa.core.dropout import Dropout
from djepa.core.norms import RMSNorm
from djepa.core.rope import apply_rope

__all__ = ["KERNELS", "attention_kernel", "allowed_keys", "block_causal_mask", "xformers_bias", "Attention", "MLP"]

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


def allowed_keys(
    B: int, H: int, Lq: int, Lk: int,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Combine both masks into ``(allowed, empty)`` for the kernels.

    Args:
        key_padding_mask: ``[B, Lk]`` bool, True = padding, or None.
        attn_mask: bool, True = may attend, ``[Lq, Lk]`` / ``[B, Lq, Lk]`` / ``[B, 1|H, Lq, Lk]``,
            or None.

    Returns:
        ``allowed``: bool ``[B|1, H|1, Lq|1, Lk]``, True = attend, where every query row with no
        allowed key is opened to all keys (so softmax stays finite); ``empty``: bool
        ``[B|1, H|1, Lq|1, 1]``, True where a row had no allowed key (the kernel zeroes its
        output). Both None when neither mask is given.

    Raises:
        ValueError: a mask of the wrong shape or a non-bool ``attn_mask``.
    """
    allowed = None
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (B, Lk):
            raise ValueError(
                f"key_padding_mask must be [B, Lk] = {(B, Lk)}, got {tuple(key_padding_mask.shape)}"
            )
        allowed = ~key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise ValueError(f"attn_mask must be bool (True = may attend), got {attn_mask.dtype}")
        am = attn_mask.to(device)
        if am.ndim == 2:
            am = am[None, None]
        elif am.ndim == 3:
            am = am[:, None]
        if (am.ndim != 4 or am.shape[0] not in (1, B) or am.shape[1] not in (1, H)
                or am.shape[2] not in (1, Lq) or am.shape[3] != Lk):
            raise ValueError(f"attn_mask must broadcast to [B, H, Lq, Lk] = {(B, H, Lq, Lk)} as "
                             f"[Lq, Lk], [B, Lq, Lk] or [B, 1|H, Lq, Lk]; got {tuple(attn_mask.shape)}")
        allowed = am if allowed is None else allowed & am
    if allowed is None:
        return None, None
    empty = ~allowed.any(dim=-1, keepdim=True)
    return allowed | empty, empty


def block_causal_mask(segment_ids: Tensor, causal: Tensor) -> Tensor:
    """Block-causal attention over spans (Transfusion: causal text, bidirectional image spans).

    A query attends to every key of an *earlier* segment, and inside its own segment to all
    keys (bidirectional span) or to keys at or before itself (causal span); never to a later
    segment.

    Args:
        segment_ids: ``[B, L]`` int, non-decreasing along L (span index of each token).
        causal: ``[B, L]`` bool, True where the token's span is causal (e.g. text).

    Returns:
        ``[B, 1, L, L]`` bool, True = may attend (the ``attn_mask`` polarity).
    """
    sq, sk = segment_ids[:, :, None], segment_ids[:, None, :]
    L = segment_ids.shape[1]
    pos = torch.arange(L, device=segment_ids.device)
    same = sq == sk
    before = sk < sq
    upto = pos[None, :, None] >= pos[None, None, :]
    inside = torch.where(causal[:, :, None], upto, torch.ones_like(upto))
    return (before | (same & inside))[:, None]


def xformers_bias(allowed: Tensor, B: int, H: int, Lq: int, dtype: torch.dtype) -> Tensor:
    """Additive ``attn_bias`` for ``xformers.ops.memory_efficient_attention`` from a bool
    ``allowed [B|1, H|1, Lq|1, Lk]`` (True = attend): 0 where allowed, −inf elsewhere, in
    ``dtype``, expanded to ``[B, H, Lq, Lk]``.

    xformers needs the bias rows 16-byte aligned: the last dim is allocated rounded up to a
    multiple of 8 and sliced (xformers/ops/fmha/cutlass.py, ``_check_bias_alignment``). Built
    with plain torch, so the CPU tests compare it (and softmax(qkᵀ/√d + bias)·v) against a
    reference loop.
    """
    b, hm, lq, Lk = allowed.shape
    padded = math.ceil(Lk / 8) * 8
    buf = torch.zeros(b, hm, lq, padded, dtype=dtype, device=allowed.device)
    bias = buf[..., :Lk]
    bias.masked_fill_(~allowed, float("-inf"))
    return bias.expand(B, H, Lq, Lk)


def attention_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    kernel: str = "sdpa",
    attn_mask: Tensor | None = None,
) -> Tensor:
    """``softmax(q kᵀ / √d) v`` per head over the allowed keys.

    Args:
        q: ``[B, H, Lq, d]``; k, v: ``[B, H, Lk, d]`` (same dtype and device).
        key_padding_mask: ``[B, Lk]`` bool, True = padding (never attended to), or None.
        dropout_p: attention-probability dropout; the caller passes 0 in eval mode.
        kernel: ``"sdpa"`` (``F.scaled_dot_product_attention``, any device) or ``"xformers"``
            (``xformers.ops.memory_efficient_attention``, CUDA only). ``"sdpa"`` goes through
            the hook :func:`djepa.core.ops.sdpa` (``djepa.core.cpu_speed`` may install the same
            maths written out, with its CPU dropout masks).
        attn_mask: bool, True = may attend, ``[Lq, Lk]`` / ``[B, Lq, Lk]`` / ``[B, 1|H, Lq, Lk]``
            (see :func:`allowed_keys`), or None.

    Returns:
        ``[B, H, Lq, d]`` in ``q.dtype``. Query rows with no allowed key give zeros.

    Raises:
        ValueError: unknown kernel, or a mask of the wrong shape.
        RuntimeError: ``"xformers"`` requested off CUDA or without the xformers package.
    """
    _check_kernel(kernel)
    B, H, Lq, d = q.shape
    Lk = k.shape[-2]
    allowed, empty = allowed_keys(B, H, Lq, Lk, key_padding_mask, attn_mask, q.device)

    if kernel == "sdpa":
        out = ops.sdpa(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
    else:
        if q.device.type != "cuda":
            raise RuntimeError(_XFORMERS_ERROR + f" (tensors are on {q.device.type})")
        xops = _xformers_ops()
        bias = None if allowed is None else xformers_bias(allowed, B, H, Lq, q.dtype)
        out = xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, p=dropout_p
        ).transpose(1, 2)

    if empty is not None:
        out = out.masked_fill(empty, 0.0)
    return out


def query_rows_of_mask(attn_mask: Tensor, query_idx: Tensor) -> Tensor:
    """The query rows ``query_idx [B, Q]`` of a bool ``attn_mask`` (``[L, L]``, ``[B, L, L]`` or
    ``[B, 1|H, L, L]``) → ``[B, 1|H, Q, L]``."""
    am = attn_mask[None, None] if attn_mask.ndim == 2 else attn_mask[:, None] if attn_mask.ndim == 3 else attn_mask
    B, Q = query_idx.shape
    am = am.expand(B, am.shape[1], am.shape[2], am.shape[3])
    return torch.gather(am, 2, query_idx[:, None, :, None].expand(-1, am.shape[1], -1, am.shape[3]))


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
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Args:
            x: ``[B, L, dim]``.
            rope: ``(cos, sin)`` each ``[L, head_dim/2]`` or ``[B, L, head_dim/2]``, or None.
            key_padding_mask: ``[B, L]`` bool, True = padding (ignored as a key), or None.
            query_idx: ``[B, Q] int64`` rows that ask (queries); all ``L`` rows are keys and
                values. None = every row.
            attn_mask: bool ``[L, L]`` / ``[B, L, L]`` / ``[B, 1|H, L, L]``, True = may attend
                (its query rows are taken at ``query_idx`` when given), or None.

        Returns:
            ``[B, L, dim]`` (``[B, Q, dim]`` with ``query_idx``) in the compute dtype of ``proj``.
        """
        q, k, v = self.project_qkv(x, rope)
        if query_idx is not None:
            q = torch.gather(q, 2, query_idx[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
            if attn_mask is not None:
                attn_mask = query_rows_of_mask(attn_mask, query_idx)
        o = attention_kernel(q, k, v, key_padding_mask, self.dropout_p, self.kernel, attn_mask)
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
