"""Transformer blocks: the pre-LN ViT block of the encoder/predictor and the SD3 MM-DiT-style
joint block for sequence conditions (DESIGN.md §3, FIDELITY.md "Model").

``Block``: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` (timm ViT / MAR).

``JointBlock``: two streams — tokens ``x`` and a condition sequence ``c`` — with their own
norms, q/k/v/out projections, qk-norms and MLPs, and ONE attention over the concatenation
``[x; c]`` (Esser et al., "Scaling Rectified Flow Transformers", 2024, §4 / Fig. 2), without
the timestep AdaLN (the D-JEPA backbone has no diffusion time).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from djepa.core.attention import MLP, Attention, attention_kernel
from djepa.core.functional import gather_rows
from djepa.core.norms import LayerNorm

__all__ = ["Block", "JointBlock"]


class Block(nn.Module):
    """Pre-LN transformer block.

    Args:
        dim: width ``D``. num_heads: heads. mlp_ratio: MLP hidden = ``int(dim · mlp_ratio)``.
        qkv_bias, qk_norm, attn_drop, kernel: see :class:`Attention`.
        proj_drop: dropout after the attention projection and inside the MLP.

    Submodules: ``norm1`` (LayerNorm eps 1e-6, fp32), ``attn``, ``norm2``, ``mlp``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel: str = "sdpa",
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, kernel)
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio), proj_drop)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        key_padding_mask: Tensor | None = None,
        query_idx: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Args:
            x: ``[B, L, D]``. rope: ``(cos, sin)`` ``[L or B×L, head_dim/2]`` or None.
            key_padding_mask: ``[B, L]`` bool, True = padding (ignored as a key), or None.
            attn_mask: bool, True = may attend (see :mod:`djepa.core.attention`), or None.
            query_idx: ``[B, Q] int64`` rows of ``x`` whose outputs are wanted, or None (all).
                Every row still serves as key/value; only the wanted rows get the query,
                residuals, ``norm2`` and the MLP. Equals ``gather_rows(block(x), query_idx)``.

        Returns:
            ``[B, L, D]``, or ``[B, Q, D]`` with ``query_idx``.
        """
        o = self.attn(self.norm1(x), rope=rope, key_padding_mask=key_padding_mask, query_idx=query_idx,
                      attn_mask=attn_mask)
        x = (x if query_idx is None else gather_rows(x, query_idx)) + o
        return x + self.mlp(self.norm2(x))


class JointBlock(nn.Module):
    """Two-stream block with joint attention (SD3 MM-DiT, without AdaLN).

    Args:
        dim: width of stream ``x`` and of the shared attention space.
        num_heads: heads of the joint attention (``head_dim = dim / num_heads``).
        context_dim: width ``Dc`` of stream ``c`` (default ``dim``); its ``qkv`` maps
            ``Dc → 3·dim`` and its ``proj`` maps ``dim → Dc``.
        mlp_ratio, qkv_bias, qk_norm, attn_drop, proj_drop, kernel: as for :class:`Block`
            (both streams; the attention dropout/kernel of the joint attention are those of
            ``x_attn``).

    Submodules (one set per stream, never shared): ``x_norm1, x_attn, x_norm2, x_mlp`` and
    ``c_norm1, c_attn, c_norm2, c_mlp``. Only the ``qkv / q_norm / k_norm / proj`` parts of
    ``x_attn`` and ``c_attn`` are used; the attention itself runs once over ``[x; c]``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kernel: str = "sdpa",
    ) -> None:
        super().__init__()
        cdim = dim if context_dim is None else context_dim
        self.dim = dim
        self.context_dim = cdim
        self.kernel = kernel
        self.x_norm1 = LayerNorm(dim, eps=1e-6)
        self.x_attn = Attention(dim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, kernel)
        self.x_norm2 = LayerNorm(dim, eps=1e-6)
        self.x_mlp = MLP(dim, int(dim * mlp_ratio), proj_drop)
        self.c_norm1 = LayerNorm(cdim, eps=1e-6)
        self.c_attn = Attention(
            cdim, num_heads, qkv_bias, qk_norm, attn_drop, proj_drop, kernel, attn_dim=dim
        )
        self.c_norm2 = LayerNorm(cdim, eps=1e-6)
        self.c_mlp = MLP(cdim, int(cdim * mlp_ratio), proj_drop)

    def forward(
        self,
        x: Tensor,
        c: Tensor,
        x_rope: tuple[Tensor, Tensor] | None = None,
        c_rope: tuple[Tensor, Tensor] | None = None,
        x_padding_mask: Tensor | None = None,
        c_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Args:
            x: ``[B, Lx, D]`` tokens. c: ``[B, Lc, Dc]`` condition sequence.
            x_rope, c_rope: ``(cos, sin)`` per stream (``[Lx|Lc, head_dim/2]`` or with a batch
                axis), or None (no rotation for that stream).
            x_padding_mask, c_padding_mask: ``[B, Lx]`` / ``[B, Lc]`` bool, True = padding
                (ignored as a key in the joint attention), or None.
            attn_mask: bool over the joint sequence ``[x; c]`` (``[Lx+Lc, Lx+Lc]`` or with batch /
                head axes), True = may attend, or None.

        Returns:
            ``(x [B, Lx, D], c [B, Lc, Dc])``.
        """
        B, Lx, _ = x.shape
        Lc = c.shape[1]
        qx, kx, vx = self.x_attn.project_qkv(self.x_norm1(x), x_rope)
        qc, kc, vc = self.c_attn.project_qkv(self.c_norm1(c), c_rope)
        q = torch.cat((qx, qc), dim=2)
        k = torch.cat((kx, kc), dim=2)
        v = torch.cat((vx, vc), dim=2)
        mask = None
        if x_padding_mask is not None or c_padding_mask is not None:
            if x_padding_mask is None:
                x_padding_mask = torch.zeros(B, Lx, dtype=torch.bool, device=x.device)
            if c_padding_mask is None:
                c_padding_mask = torch.zeros(B, Lc, dtype=torch.bool, device=x.device)
            mask = torch.cat((x_padding_mask.bool(), c_padding_mask.bool().to(x.device)), dim=1)
        o = attention_kernel(q, k, v, mask, self.x_attn.dropout_p, self.kernel, attn_mask)
        ox, oc = o.split((Lx, Lc), dim=2)
        x = x + self.x_attn.project_out(ox)
        c = c + self.c_attn.project_out(oc)
        x = x + self.x_mlp(self.x_norm2(x))
        c = c + self.c_mlp(self.c_norm2(c))
        return x, c
