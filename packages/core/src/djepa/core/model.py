"""The D-JEPA network (paper §3, Fig. 1): context encoder φ, feature predictor γ, condition,
and the two loss heads (diffusion / flow matching through the denoising MLP; prediction loss).

Shapes (B batch, N tokens per row — prod(grid) for a full grid, more with padding, D =
token_dim, E = encoder width, P = predictor width, Nb = buffer tokens, Nv = visible tokens):

* ``tokens: [B, N, D] float`` (a full grid) or a :class:`~djepa.core.batch.TokenBatch` (tokens,
  ``padding [B, N] True = padding``, ``positions [B, N, ndim]``, ``maskable [B, N]``).
* ``mask: [B, N] bool, True = masked`` — hidden from φ, predicted by γ, where the losses count;
  never padding, never a non-maskable token.
* ``visible_idx: [B, Nv] int64`` — positions φ sees, ascending; when rows have different visible
  counts ``visible_padding [B, Nv] bool, True = filler entry`` marks the padding of short rows.
* ``z: [B, N, P]`` — γ's predicted feature for every position.
* the condition (:mod:`djepa.core.condition`): class ids → a vector added to the buffer tokens;
  a sequence → a second stream through the first ``joint_depth`` blocks (SD3 joint blocks) of
  φ and of γ; none.

Padding is never attended to (a key padding mask in every block), never masked and never
counted, so a row padded to a longer length gives the same features and losses as alone.

The official release is the reference for everything the paper leaves open (FIDELITY.md):
buffer tokens = learned buffer + condition embedding prepended to φ's input; the token embedding
and learned position table are added before the visible tokens are gathered; φ's final norm is
applied before γ; γ fills masked positions with a learned mask token and drops the buffer at its
output; the target encoder is φ of the EMA model run on all tokens (no label dropout).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from djepa.core.batch import TokenBatch
from djepa.core.blocks import Block, JointBlock
from djepa.core.condition import ClassCondition, ConditionState, build_condition
from djepa.core.config import DJEPAConfig
from djepa.core.functional import gather_rows
from djepa.core.heads import build_token_loss
from djepa.core.masking import MaskingStrategy, TruncNormalMasking
from djepa.core.norms import LayerNorm
from djepa.core.prediction_loss import PredictionLoss
from djepa.core.pretrained import PretrainedMixin
from djepa.core.rope import AxialRoPE, TokenGrid, default_rope_split

__all__ = ["DJEPA", "DJEPAOutput", "ContextEncoder", "FeaturePredictor", "ClassCondition", "visible_index", "init_backbone"]


class DJEPAOutput(NamedTuple):
    """Loss breakdown of one training forward (scalar float32 tensors).

    ``loss = w_d · token_loss + w_p · prediction_loss`` (§3.4); ``token_loss`` is the diffusion
    loss L_d (Eq. 4) or the flow matching loss L_v (Eq. 7); ``prediction_loss`` is L_p (Eq. 2),
    exactly 0 when its weight is 0 (MAR baseline).
    """

    loss: Tensor
    token_loss: Tensor
    prediction_loss: Tensor


def init_backbone(module: nn.Module) -> None:
    """Official init: xavier-uniform Linear weights with zero bias; LayerNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def visible_index(visible: Tensor) -> tuple[Tensor, Tensor | None]:
    """``visible [B, N] bool`` → ``(visible_idx [B, Nv] int64 ascending, visible_padding)``.

    ``Nv`` is the largest visible count of a row; shorter rows are filled with position 0 and
    flagged ``True`` in ``visible_padding [B, Nv]`` (None when every row has ``Nv``).
    """
    b, n = visible.shape
    ar = torch.arange(n, device=visible.device)
    key = torch.where(visible, ar, ar + n)
    nv = int(visible.sum(1).max()) if b else 0
    idx = key.sort(dim=1).values[:, :nv]
    pad = idx >= n
    if not bool(pad.any()):
        return idx, None
    return idx.masked_fill(pad, 0), pad


def _flat_positions(positions: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Row-major index into ``grid`` of coordinates ``[..., ndim]`` → ``[...]`` int64 (the row
    of a learned position table)."""
    flat = torch.zeros(positions.shape[:-1], dtype=torch.long, device=positions.device)
    for a, size in enumerate(grid):
        flat = flat * size + positions[..., a].long()
    return flat


def _grid_positions(tokens: Tensor, grid: tuple[int, ...]) -> Tensor:
    """The full grid's coordinates ``[B, N, ndim]`` (row-major), expanded over the batch."""
    return TokenGrid(grid).coords(device=tokens.device).unsqueeze(0).expand(tokens.shape[0], -1, -1)


class _Rope:
    """Axial RoPE (cos, sin) from token positions (fp32; a plain attribute, not a buffer:
    unaffected by ``.to(bf16)`` and meta-device init); buffer-token rows are the identity. A
    condition sequence is 1-D: RoPE over the whole head on its index 0 … L−1."""

    def __init__(self, head_dim: int, grid: tuple[int, ...], theta: float, split: tuple[int, ...] | None) -> None:
        ndim = len(grid)
        self.grid = TokenGrid(grid)
        self.rope = AxialRoPE(head_dim, ndim, theta=theta, split=split or default_rope_split(head_dim, ndim))
        self.seq_rope = AxialRoPE(head_dim, 1, theta=theta, split=(head_dim,))
        self._grid_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def with_buffer(self, num_buffer: int, idx: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin) for ``[buffer; full-grid positions idx [B, K]]`` (None = all N):
        ``[B or 1, Nb + K, d/2]``. The full grid's tables are computed once per device and
        cached (as the first release did); indexing them equals :meth:`tables` on the gathered
        coordinates bit for bit (RoPE is elementwise per position)."""
        if device not in self._grid_cache:
            self._grid_cache[device] = self.rope(self.grid.coords(device=device))
        cos, sin = self._grid_cache[device]
        cos, sin = (cos.unsqueeze(0), sin.unsqueeze(0)) if idx is None else (cos[idx], sin[idx])
        b, half = cos.shape[0], cos.shape[-1]
        return (torch.cat([cos.new_ones(b, num_buffer, half), cos], dim=1),
                torch.cat([sin.new_zeros(b, num_buffer, half), sin], dim=1))

    def tables(self, positions: Tensor, num_buffer: int) -> tuple[Tensor, Tensor]:
        """``[buffer; tokens at positions [B, K, ndim]]`` → (cos, sin) each ``[B, Nb + K, d/2]``."""
        cos, sin = self.rope(positions)
        b, half = cos.shape[0], cos.shape[-1]
        return (torch.cat([cos.new_ones(b, num_buffer, half), cos], dim=1),
                torch.cat([sin.new_zeros(b, num_buffer, half), sin], dim=1))

    def sequence(self, length: int, device: torch.device, padding: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(cos, sin) of a condition sequence: ``[L, d/2]`` at positions 0 … L−1, or with
        ``padding [B, L]`` (True = padding) ``[B, L, d/2]`` at each real element's rank among the
        real ones — so where the padding sits in the sequence does not matter."""
        if padding is None:
            return self.seq_rope(torch.arange(length, device=device)[:, None])
        rank = ((~padding).long().cumsum(1) - 1).clamp(min=0)
        return self.seq_rope(rank[..., None])


def _add_aligned(x: Tensor, embed: nn.Module | None, state: ConditionState,
                 idx: Tensor | None) -> Tensor:
    """``x [B, K, W]`` plus ``embed(aligned)`` at the token positions ``idx [B, K]`` (None = all
    N): the token-aligned condition (``DJEPAConfig.aligned_dim``); None in the state = the null
    (zeros: nothing added, which equals ``embed(0)`` only up to its bias, so the bias is added).

    Raises:
        ValueError: an aligned condition given to a model without ``aligned_dim``, or of the
            wrong length.
    """
    a = state.aligned
    if embed is None:
        if a is not None:
            raise ValueError("an aligned condition was given but this model has aligned_dim=0")
        return x
    if a is None:
        return x + embed.bias.to(x.dtype)
    if idx is None:
        if a.shape[1] != x.shape[1]:
            raise ValueError(f"aligned condition has {a.shape[1]} positions, the tokens {x.shape[1]}")
    else:
        a = gather_rows(a, idx)
    return x + embed(a.to(embed.weight.dtype)).to(x.dtype)


def _key_padding(num_buffer: int, padding: Tensor | None) -> Tensor | None:
    """``[B, Nb + K]`` (buffer never padding) or None."""
    if padding is None:
        return None
    return torch.cat([padding.new_zeros(padding.shape[0], num_buffer), padding], dim=1)


class _Stack(nn.Module):
    """The block loop φ and γ share: the first ``config.num_joint_blocks`` blocks are
    :class:`JointBlock` (tokens + the condition sequence), the rest :class:`Block`; optional
    activation checkpointing per block (non-reentrant ``torch.utils.checkpoint``, which replays
    torch's RNG state, so dropout masks and gradients equal the plain path)."""

    rope: _Rope | None

    def _build_blocks(self, c: DJEPAConfig, dim: int, heads: int, depth: int) -> None:
        nj = c.num_joint_blocks
        kw: dict[str, Any] = dict(qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, attn_drop=c.attn_dropout,
                                  proj_drop=c.proj_dropout, kernel=c.attention_kernel)
        self.blocks = nn.ModuleList(
            JointBlock(dim, heads, context_dim=c.context_dim, mlp_ratio=c.mlp_ratio, **kw) if i < nj
            else Block(dim, heads, c.mlp_ratio, **kw)
            for i in range(depth))
        self.checkpointing = bool(c.activation_checkpointing)

    def _call(self, block: nn.Module, *args: Any) -> Any:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _run_blocks(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, kpm: Tensor | None,
                    cond: ConditionState, query_rows: Tensor | None = None) -> Tensor:
        c, c_pad = cond.sequence, cond.sequence_padding
        c_rope = None if c is None or self.rope is None else self.rope.sequence(c.shape[1], x.device, c_pad)
        last = len(self.blocks) - 1
        if query_rows is not None and last < 0:
            return gather_rows(x, query_rows)
        for i, block in enumerate(self.blocks):
            if isinstance(block, JointBlock):
                if c is None:
                    raise ValueError("this model has joint blocks: it needs a sequence condition state")
                x, c = self._call(block, x, c.to(x.dtype), rope, c_rope, kpm, c_pad)
                if i == last and query_rows is not None:
                    x = gather_rows(x, query_rows)
            else:
                x = self._call(block, x, rope, kpm, query_rows if i == last else None)
        return x


class ContextEncoder(_Stack):
    """Context encoder φ (§3.2): a ViT over the visible tokens plus the buffer tokens.

    Buffer tokens (official code): ``buffer [1, Nb, E]`` + the condition vector (class or null),
    prepended, never masked. Positions: a learned table over the grid positions or axial RoPE
    from the batch's positions (buffer tokens are not rotated). With a sequence condition the
    first ``joint_depth`` blocks are joint blocks over ``[tokens; sequence]``.
    """

    def __init__(self, config: DJEPAConfig) -> None:
        super().__init__()
        c = config
        self.grid = c.grid
        self.num_tokens = c.seq_len
        self.buffer_size = c.buffer_size
        self.token_embed = nn.Linear(c.token_dim, c.encoder_dim)
        self.embed_norm = LayerNorm(c.encoder_dim, eps=1e-6) if c.embed_norm else nn.Identity()
        self.buffer = nn.Parameter(torch.zeros(1, c.buffer_size, c.encoder_dim))
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.encoder_dim))
            self.rope = None
        else:
            self.pos_embed = None
            self.rope = _Rope(c.encoder_dim // c.encoder_heads, c.grid, c.rope_theta, c.rope_split)
        self._build_blocks(c, c.encoder_dim, c.encoder_heads, c.encoder_depth)
        self.norm = LayerNorm(c.encoder_dim, eps=1e-6)
        self.aligned_embed = nn.Linear(c.aligned_dim, c.encoder_dim) if c.aligned_dim else None

    def forward(self, tokens: Tensor, cond: ConditionState | Tensor | None,
                visible_idx: Tensor | None = None, *, positions: Tensor | None = None,
                visible_padding: Tensor | None = None, padding: Tensor | None = None) -> Tensor:
        """Encode the visible tokens.

        Args:
            tokens: ``[B, N, D]`` all tokens (masked ones are never read).
            cond: a :class:`ConditionState`, or a bare ``[B, E]`` buffer vector (class or null).
            visible_idx: ``[B, Nv] int64`` visible positions (ascending); ``None`` = all N
                (the target encoder's full-sequence pass).
            positions: ``[B, N, ndim]`` grid coordinates (None = the model's full grid).
            visible_padding: ``[B, Nv]`` bool, True = filler entry of ``visible_idx``.
            padding: ``[B, N]`` bool, True = padding; used when ``visible_idx`` is None.

        Returns:
            ``[B, Nb + Nv, E]`` after the final norm (buffer first).
        """
        state = ConditionState.of(cond)
        full_grid = positions is None  # the model's own grid: table rows / cached RoPE by index
        kpm = padding
        if visible_idx is not None:
            tokens = gather_rows(tokens, visible_idx)
            if not full_grid:
                positions = gather_rows(positions, visible_idx)
            kpm = visible_padding
        x = self.token_embed(tokens.to(self.token_embed.weight.dtype))
        x = _add_aligned(x, self.aligned_embed, state, visible_idx)
        if self.pos_embed is not None:
            if full_grid:
                pos = self.pos_embed.expand(x.shape[0], -1, -1)
                x = x + (pos if visible_idx is None else gather_rows(pos, visible_idx))
            else:
                x = x + self.pos_embed[0][_flat_positions(positions, self.grid)]
        buffer = self.buffer.expand(x.shape[0], -1, -1)
        if state.vector is not None:
            buffer = buffer + state.vector.unsqueeze(1)
        x = self.embed_norm(torch.cat([buffer.to(x.dtype), x], dim=1))
        if self.rope is None:
            rope = None
        elif full_grid:
            rope = self.rope.with_buffer(self.buffer_size, visible_idx, x.device)
        else:
            rope = self.rope.tables(positions, self.buffer_size)
        x = self._run_blocks(x, rope, _key_padding(self.buffer_size, kpm), state)
        return self.norm(x)


class FeaturePredictor(_Stack):
    """Feature predictor γ (§3.2): a ViT over all N positions plus the buffer.

    φ's outputs go to their positions; masked positions get a learned mask token; the output
    ``z_i`` (after the final norm, buffer dropped) is predicted for every position. Padding
    positions are never attended to (their outputs are not used).
    """

    def __init__(self, config: DJEPAConfig) -> None:
        super().__init__()
        c = config
        self.grid = c.grid
        self.num_tokens = c.seq_len
        self.buffer_size = c.buffer_size
        self.embed = nn.Linear(c.encoder_dim, c.predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.predictor_dim))
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.predictor_dim))
            self.rope = None
        else:
            self.pos_embed = None
            self.rope = _Rope(c.predictor_dim // c.predictor_heads, c.grid, c.rope_theta, c.rope_split)
        self._build_blocks(c, c.predictor_dim, c.predictor_heads, c.predictor_depth)
        self.norm = LayerNorm(c.predictor_dim, eps=1e-6)
        self.aligned_embed = nn.Linear(c.aligned_dim, c.predictor_dim) if c.aligned_dim else None

    def forward(self, context: Tensor, visible_idx: Tensor | None,
                query_idx: Tensor | None = None, *, cond: ConditionState | Tensor | None = None,
                positions: Tensor | None = None, visible_padding: Tensor | None = None,
                padding: Tensor | None = None, num_tokens: int | None = None) -> Tensor:
        """Predict features at every position, or only at ``query_idx``.

        Args:
            context: ``[B, Nb + Nv, E]`` the context encoder's output.
            visible_idx: ``[B, Nv] int64`` positions of the visible tokens (``None`` = all).
            query_idx: ``[B, Q] int64`` positions in ``[0, N)`` whose features are wanted, or
                None (all N). All blocks but the last see every position; the last one computes
                queries, MLP and the final norm for these rows only (Algorithm 1 needs ``z`` only
                at the tokens revealed this AR step). Same values as ``z[query_idx]``.
            cond: the condition state (only joint blocks read its sequence).
            positions: ``[B, N, ndim]`` (None = the full grid); visible_padding: ``[B, Nv]``
                True = filler of ``visible_idx`` (not scattered); padding: ``[B, N]`` True =
                padding (never attended to); num_tokens: N (default: the grid's, or
                ``positions.shape[1]``).

        Returns:
            ``z: [B, N, P]``, or ``[B, Q, P]`` with ``query_idx``.

        Raises:
            RuntimeError: a ``query_idx`` entry outside ``[0, N)`` (from ``torch.gather``).
        """
        state = ConditionState.of(cond)
        h = self.embed(context)
        b, nb = h.shape[0], self.buffer_size
        n = num_tokens or (positions.shape[1] if positions is not None else self.num_tokens)
        full_grid = positions is None and n == self.num_tokens
        if positions is None and not full_grid:
            positions = _grid_positions(h, self.grid)
        if visible_idx is None:
            x = h
        else:
            slots = n + (1 if visible_padding is not None else 0)  # one dump slot for fillers
            x = self.mask_token.to(h.dtype).expand(b, nb + slots, -1).clone()
            x[:, :nb] = h[:, :nb]
            idx = visible_idx if visible_padding is None else visible_idx.masked_fill(visible_padding, n)
            x.scatter_(1, (idx + nb).unsqueeze(-1).expand(-1, -1, h.shape[-1]), h[:, nb:])
            x = x[:, :nb + n]
        if self.aligned_embed is not None:
            x = torch.cat([x[:, :nb], _add_aligned(x[:, nb:], self.aligned_embed, state, None)], dim=1)
        if self.pos_embed is not None:
            pos = (self.pos_embed if full_grid else
                   self.pos_embed[0][_flat_positions(positions, self.grid)]).to(x.dtype)
            x = torch.cat([x[:, :nb], x[:, nb:] + pos], dim=1)
        if self.rope is None:
            rope = None
        elif full_grid:
            rope = self.rope.with_buffer(nb, None, x.device)
        else:
            rope = self.rope.tables(positions, nb)
        rows = None if query_idx is None else query_idx + nb
        x = self._run_blocks(x, rope, _key_padding(nb, padding), state, rows)
        return self.norm(x)[:, nb:] if rows is None else self.norm(x)


class DJEPA(PretrainedMixin, nn.Module):
    """D-JEPA (paper §3): context encoder φ, feature predictor γ, condition, denoising MLP loss
    head and the prediction-loss projector; the target encoder φ̄ is the encoder of the EMA copy
    of this module (``djepa.core.ema.EMA``), passed to :meth:`forward` as ``target_model``.

    Args:
        config: :class:`~djepa.core.config.DJEPAConfig`.
        masking: the training masking strategy (:class:`~djepa.core.masking.MaskingStrategy`);
            default the paper's :class:`~djepa.core.masking.TruncNormalMasking` with the
            config's ratio bounds. A plain attribute (no parameters, not in the state dict).

    Example::

        model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10))
        out = model(tokens, labels, target_model=ema.module)             # a full grid
        out = model(TokenBatch.from_lengths(tokens, lengths), SequenceInput(seq, pad), ...)
        out.loss.backward()
    """

    #: Parameter-name prefixes without weight decay (official ``no_weight_decay_set``); the
    #: engine also exempts every parameter with ndim ≤ 1 (biases, norms).
    no_weight_decay_prefixes: ClassVar[tuple[str, ...]] = (
        "encoder.token_embed.", "encoder.buffer", "encoder.pos_embed", "condition.",
        "predictor.embed.", "predictor.mask_token", "predictor.pos_embed",
        "token_loss.", "prediction_loss.",
    )

    def __init__(self, config: DJEPAConfig, masking: MaskingStrategy | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.condition = build_condition(c.condition, num_classes=c.num_classes, encoder_dim=c.encoder_dim,
                                         condition_dim=c.context_dim, drop_prob=c.label_drop_prob,
                                         condition_input_dim=c.condition_input_dim)
        self.encoder = ContextEncoder(c)
        self.predictor = FeaturePredictor(c)
        self.masking: MaskingStrategy = masking or TruncNormalMasking(
            c.mask_ratio_min, c.mask_ratio_mean, c.mask_ratio_std)
        self._init_weights()
        # Loss heads initialise themselves (zero-init AdaLN etc.), after the backbone init,
        # as in the official code ("initialize weights before diffusion loss").
        self.token_loss = build_token_loss(c.loss, c.token_dim, c.predictor_dim)
        self.prediction_loss = (
            PredictionLoss(c.predictor_dim, c.encoder_dim, beta=c.loss.prediction_beta,
                           order=c.loss.projector_order)
            if c.loss.prediction_weight > 0 else None)

    def _init_weights(self) -> None:
        """Official init (xavier Linear, N(0, 0.02) embeddings / mask token / position tables).
        The buffer tokens get N(0, 0.02) as FIDELITY.md states; the release leaves them at zero,
        which makes all buffer slots identical (they carry no position) until dropout separates
        them — the random init breaks that symmetry. A sequence condition's null token gets
        N(0, 0.02) too."""
        init_backbone(self.encoder)
        init_backbone(self.predictor)
        std = self.config.init_std
        params = [self.encoder.buffer, self.predictor.mask_token]
        if isinstance(self.condition, ClassCondition):
            params = [self.condition.class_embed.weight, self.condition.null_embed] + params
        elif hasattr(self.condition, "null_embed"):
            params.append(self.condition.null_embed)
        for p in params:
            nn.init.normal_(p, std=std)
        for p in (self.encoder.pos_embed, self.predictor.pos_embed):
            if p is not None:
                nn.init.normal_(p, std=std)

    # ------------------------------------------------------------------ helpers
    @property
    def num_tokens(self) -> int:
        """N = prod(config.grid)."""
        return self.config.seq_len

    def check_tokens(self, tokens: Tensor) -> None:
        """Raise ``ValueError`` unless ``tokens`` is ``[B, N, D]`` with this model's N and D."""
        c = self.config
        if tokens.ndim != 3 or tokens.shape[1] != c.seq_len or tokens.shape[2] != c.token_dim:
            raise ValueError(
                f"tokens must have shape [B, {c.seq_len}, {c.token_dim}] for grid {c.grid} and "
                f"token_dim {c.token_dim}, got {list(tokens.shape)}")

    def as_batch(self, tokens: Tensor | TokenBatch) -> TokenBatch:
        """A :class:`TokenBatch` (a plain ``[B, N, D]`` tensor = the full grid).

        Raises:
            ValueError: wrong token width or position axes; a plain tensor not of the grid's N;
                positions outside the grid with learned position tables.
        """
        c = self.config
        if not isinstance(tokens, TokenBatch):
            self.check_tokens(tokens)
            return TokenBatch.from_grid(tokens, c.grid)
        if tokens.tokens.shape[2] != c.token_dim:
            raise ValueError(f"tokens must have {c.token_dim} channels, got {list(tokens.tokens.shape)}")
        if tokens.positions.shape[2] != len(c.grid):
            raise ValueError(f"positions must have {len(c.grid)} axes for grid {c.grid}, "
                             f"got {list(tokens.positions.shape)}")
        if c.pos_embed == "learned":
            hi = torch.tensor(c.grid, device=tokens.positions.device)
            if bool(((tokens.positions < 0) | (tokens.positions >= hi)).any()):
                raise ValueError(f"positions must lie inside the grid {c.grid} with learned position "
                                 "tables (use pos_embed='rope' for offsets beyond it)")
        return tokens

    def condition_state(self, condition: Any, batch_size: int, *, drop: bool = False,
                        generator: torch.Generator | None = None) -> ConditionState:
        """The backbone's :class:`ConditionState` for a condition input (labels, a
        :class:`~djepa.core.condition.SequenceInput`, or None = the null)."""
        return self.condition.state(condition, batch_size, drop=drop, generator=generator)

    def null_state(self, batch_size: int) -> ConditionState:
        """The null condition (CFG's unconditional input)."""
        return self.condition.null_state(batch_size)

    def features(self, tokens: Tensor, cond: ConditionState | Tensor | None, visible_idx: Tensor | None,
                 query_idx: Tensor | None = None, *, positions: Tensor | None = None,
                 visible_padding: Tensor | None = None, padding: Tensor | None = None) -> Tensor:
        """φ then γ: ``z: [B, N, P]`` from the visible tokens and the condition (a
        :class:`ConditionState` or a bare ``[B, E]`` buffer vector); ``[B, Q, P]`` at the
        positions ``query_idx: [B, Q] int64`` only, when given (see :meth:`FeaturePredictor.forward`).
        ``positions`` / ``visible_padding`` / ``padding`` as for :meth:`ContextEncoder.forward`."""
        state = ConditionState.of(cond)
        ctx = self.encoder(tokens, state, visible_idx, positions=positions,
                           visible_padding=visible_padding, padding=padding)
        return self.predictor(ctx, visible_idx, query_idx, cond=state, positions=positions,
                              visible_padding=visible_padding, padding=padding, num_tokens=tokens.shape[1])

    @torch.no_grad()
    def encode_target(self, tokens: Tensor | TokenBatch, labels: Any = None) -> Tensor:
        """Target features g = sg(φ̄(𝕌)) (Eq. 2): this model's encoder on *all* tokens with the
        true condition (no dropout), buffer dropped, padding never attended to. Call it on the
        EMA model. ``labels``: any condition input of this model's kind.

        Returns:
            ``[B, N, E]``, detached.
        """
        batch = self.as_batch(tokens)
        was_training = self.training
        self.eval()  # no dropout in the target encoder (official: ema_model.eval())
        try:
            state = self.condition_state(labels, batch.batch_size)
            out = self.encoder(batch.tokens, state, None, positions=batch.positions, padding=batch.padding)
            return out[:, self.config.buffer_size:].detach()
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ training
    def forward(self, tokens: Tensor | TokenBatch, condition: Any = None, *,
                labels: Any = None,
                target_model: "DJEPA | None" = None,
                generator: torch.Generator | None = None) -> DJEPAOutput:
        """One training forward (§3.1–3.4).

        The masking strategy picks the masked tokens among each row's maskable ones (paper:
        ``ceil(M_b·r)`` along a random order, r ~ TruncNormal drawn once per batch); the token
        loss (diffusion or flow, ``diffusion_batch_mul`` draws of t per masked token) and the
        prediction loss against ``target_model.encode_target`` count masked tokens only (never
        padding) and are 0, not NaN, when nothing is masked. Randomness (mask, condition
        dropout, t and noise) comes from ``generator`` when given, else torch's global RNG (what
        the training engine checkpoints), in that order.

        Args:
            tokens: ``[B, N, D]`` float (the full grid) or a :class:`TokenBatch`.
            condition: ``[B]`` int64 class ids, a :class:`~djepa.core.condition.SequenceInput`,
                or ``None`` (the null / unconditional). ``labels=`` is the same argument by the
                name a modality's prepare step uses (``{"tokens", "labels"}``).
            target_model: the EMA model providing the target encoder φ̄; required when the
                prediction-loss weight is > 0.

        Raises:
            ValueError: wrong token shape, out-of-range labels, a bad condition, missing
                ``target_model``, both ``condition`` and ``labels``.
        """
        if labels is not None:
            if condition is not None:
                raise ValueError("give the condition once (condition= or labels=)")
            condition = labels
        batch = self.as_batch(tokens)
        c = self.config
        b, n, _ = batch.tokens.shape
        if self.prediction_loss is not None and target_model is None:
            raise ValueError("the prediction loss needs target_model (the EMA model, whose encoder is "
                             "the target encoder); pass target_model=ema.module or set "
                             "loss.prediction_weight=0 for the MAR baseline")
        mask = self.masking(batch, generator) & batch.maskable_mask  # True = masked
        visible_idx, visible_padding = visible_index(batch.valid & ~mask)

        state = self.condition_state(condition, b, drop=self.training, generator=generator)
        z = self.features(batch.tokens, state, visible_idx, positions=batch.positions,
                          visible_padding=visible_padding, padding=batch.padding)  # [B, N, P]

        # Token loss on the masked rows only (same value as the masked mean over all rows).
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            token_loss = z.sum() * 0.0  # nothing masked: 0 with a gradient path, not NaN
        else:
            z_rows = z.reshape(b * n, -1).index_select(0, rows)
            x_rows = batch.tokens.reshape(b * n, -1).index_select(0, rows)
            mul = c.loss.diffusion_batch_mul
            token_loss = self.token_loss(x_rows.repeat(mul, 1), z_rows.repeat(mul, 1), None,
                                         generator=generator)

        if self.prediction_loss is not None:
            target = target_model.encode_target(batch, condition)
            prediction_loss = self.prediction_loss(z, target, mask)
        else:
            prediction_loss = token_loss.new_zeros(())
        loss = c.loss.diffusion_weight * token_loss + c.loss.prediction_weight * prediction_loss
        return DJEPAOutput(loss, token_loss.detach(), prediction_loss.detach())
