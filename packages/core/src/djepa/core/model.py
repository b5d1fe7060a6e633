"""The D-JEPA network (paper §3, Fig. 1): context encoder φ, feature predictor γ, condition,
and the two loss heads (diffusion / flow matching through the denoising MLP; prediction loss).

Shapes (B batch, N = prod(grid) tokens, D = token_dim, E = encoder width, P = predictor width,
Nb = buffer tokens, Nv = visible tokens):

* ``tokens: [B, N, D] float`` — the data, already tokenized (patches of pixels or latents).
* ``mask: [B, N] bool, True = masked`` — hidden from φ, predicted by γ, where the losses count.
* ``visible_idx: [B, Nv] int64`` — positions φ sees, ascending.
* ``z: [B, N, P]`` — γ's predicted feature for every position.

The official release is the reference for everything the paper leaves open (FIDELITY.md):
buffer tokens = learned buffer + condition embedding prepended to φ's input; the token embedding
and learned position table are added before the visible tokens are gathered; φ's final norm is
applied before γ; γ fills masked positions with a learned mask token and drops the buffer at its
output; the target encoder is φ of the EMA model run on all tokens (no label dropout).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from djepa.core.blocks import Block
from djepa.core.config import DJEPAConfig
from djepa.core.functional import gather_rows
from djepa.core.masking import mask_from_orders, num_masked_tokens, random_orders, sample_mask_ratio
from djepa.core.norms import LayerNorm
from djepa.core.prediction_loss import PredictionLoss
from djepa.core.pretrained import PretrainedMixin
from djepa.core.rope import AxialRoPE, TokenGrid
from djepa.core.heads import build_token_loss

__all__ = ["DJEPA", "DJEPAOutput", "ContextEncoder", "FeaturePredictor", "ClassCondition"]


class DJEPAOutput(NamedTuple):
    """Loss breakdown of one training forward (scalar float32 tensors).

    ``loss = w_d · token_loss + w_p · prediction_loss`` (§3.4); ``token_loss`` is the diffusion
    loss L_d (Eq. 4) or the flow matching loss L_v (Eq. 7); ``prediction_loss`` is L_p (Eq. 2),
    exactly 0 when its weight is 0 (MAR baseline).
    """

    loss: Tensor
    token_loss: Tensor
    prediction_loss: Tensor


def _init_backbone(module: nn.Module) -> None:
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


class ClassCondition(nn.Module):
    """Class embedding with label dropout to a learned null class (the official "fake latent").

    Args:
        num_classes: number of real classes C; valid labels are 0 … C−1.
        dim: embedding width (the context encoder's width E).
        label_drop_prob: probability that a training label is replaced by the null class (0.1).
    """

    def __init__(self, num_classes: int, dim: int, label_drop_prob: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label_drop_prob = label_drop_prob
        self.class_embed = nn.Embedding(num_classes, dim)
        self.null_embed = nn.Parameter(torch.zeros(1, dim))

    def check_labels(self, labels: Tensor) -> None:
        """Raise ``ValueError`` naming the offending id when a label is outside [0, C)."""
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"class labels must be an integer tensor, got {labels.dtype}")
        if labels.numel() == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"class id {bad} is out of range: this model has {self.num_classes} classes "
                f"(valid ids 0..{self.num_classes - 1})")

    def null(self, batch_size: int) -> Tensor:
        """The null-class embedding repeated: ``[B, E]``."""
        return self.null_embed.expand(batch_size, -1)

    def forward(self, labels: Tensor | None, batch_size: int | None = None, *,
                drop_labels: bool = False) -> Tensor:
        """Embed ``labels: [B] int64`` → ``[B, E]``; ``None`` gives the null class for every row.

        With ``drop_labels`` each label is replaced by the null class with probability
        ``label_drop_prob`` (torch's global RNG, so training resumes exactly).
        """
        if labels is None:
            if batch_size is None:
                raise ValueError("batch_size is required when labels is None")
            return self.null(batch_size)
        self.check_labels(labels)
        emb = self.class_embed(labels)
        if drop_labels and self.label_drop_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.label_drop_prob
            emb = torch.where(drop.unsqueeze(-1), self.null_embed.to(emb.dtype), emb)
        return emb


class _RopeTables:
    """Axial-RoPE (cos, sin) for every grid position, fp32, computed once per device and cached
    (plain attributes, not buffers: unaffected by ``.to(bf16)`` and by meta-device init);
    buffer-token rows are the identity rotation."""

    def __init__(self, head_dim: int, grid: TokenGrid, theta: float) -> None:
        self.rope = AxialRoPE(head_dim, grid.ndim, theta=theta)
        self.grid = grid
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(cos, sin)``, each ``[N, head_dim/2]`` float32 on ``device``."""
        if device not in self._cache:
            cos, sin = self.rope(self.grid.coords(device=device))
            self._cache[device] = (cos.float(), sin.float())
        return self._cache[device]

    def with_buffer(self, num_buffer: int, idx: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin) for ``[buffer; positions idx]``: ``[B or 1, Nb + K, head_dim/2]``."""
        cos, sin = self.tables(device)
        if idx is None:
            cos, sin = cos.unsqueeze(0), sin.unsqueeze(0)
        else:
            cos, sin = cos[idx], sin[idx]
        b, half = cos.shape[0], cos.shape[-1]
        one = cos.new_ones(b, num_buffer, half)
        zero = sin.new_zeros(b, num_buffer, half)
        return torch.cat([one, cos], dim=1), torch.cat([zero, sin], dim=1)


class ContextEncoder(nn.Module):
    """Context encoder φ (§3.2): a ViT over the visible tokens plus the buffer tokens.

    Buffer tokens (official code): ``buffer [1, Nb, E]`` + the condition embedding, prepended,
    never masked. Positions: a learned table over the N grid positions or axial RoPE (buffer
    tokens are not rotated).
    """

    def __init__(self, config: DJEPAConfig) -> None:
        super().__init__()
        c = config
        self.num_tokens = c.seq_len
        self.buffer_size = c.buffer_size
        self.token_embed = nn.Linear(c.token_dim, c.encoder_dim)
        self.embed_norm = LayerNorm(c.encoder_dim, eps=1e-6)
        self.buffer = nn.Parameter(torch.zeros(1, c.buffer_size, c.encoder_dim))
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.encoder_dim))
            self.rope = None
        else:
            self.pos_embed = None
            self.rope = _RopeTables(c.encoder_dim // c.encoder_heads, TokenGrid(c.grid), c.rope_theta)
        self.blocks = nn.ModuleList(
            Block(c.encoder_dim, c.encoder_heads, c.mlp_ratio, qkv_bias=c.qkv_bias, qk_norm=c.qk_norm,
                  attn_drop=c.attn_dropout, proj_drop=c.proj_dropout, kernel=c.attention_kernel)
            for _ in range(c.encoder_depth))
        self.norm = LayerNorm(c.encoder_dim, eps=1e-6)

    def forward(self, tokens: Tensor, cond: Tensor, visible_idx: Tensor | None = None) -> Tensor:
        """Encode the visible tokens.

        Args:
            tokens: ``[B, N, D]`` all tokens (masked ones are never read).
            cond: ``[B, E]`` condition embedding (class or null) added to every buffer token.
            visible_idx: ``[B, Nv] int64`` visible positions (ascending); ``None`` = all N
                (the target encoder's full-sequence pass).

        Returns:
            ``[B, Nb + Nv, E]`` after the final norm (buffer first).
        """
        if visible_idx is not None:
            tokens = gather_rows(tokens, visible_idx)
        x = self.token_embed(tokens.to(self.token_embed.weight.dtype))
        if self.pos_embed is not None:
            pos = self.pos_embed.expand(x.shape[0], -1, -1)
            x = x + (pos if visible_idx is None else gather_rows(pos, visible_idx))
        buffer = (self.buffer + cond.unsqueeze(1)).to(x.dtype)
        x = self.embed_norm(torch.cat([buffer, x], dim=1))
        rope = None if self.rope is None else self.rope.with_buffer(self.buffer_size, visible_idx, x.device)
        for block in self.blocks:
            x = block(x, rope=rope)
        return self.norm(x)


class FeaturePredictor(nn.Module):
    """Feature predictor γ (§3.2): a ViT over all N positions plus the buffer.

    φ's outputs go to their positions; masked positions get a learned mask token; the output
    ``z_i`` (after the final norm, buffer dropped) is predicted for every position.
    """

    def __init__(self, config: DJEPAConfig) -> None:
        super().__init__()
        c = config
        self.num_tokens = c.seq_len
        self.buffer_size = c.buffer_size
        self.embed = nn.Linear(c.encoder_dim, c.predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.predictor_dim))
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.predictor_dim))
            self.rope = None
        else:
            self.pos_embed = None
            self.rope = _RopeTables(c.predictor_dim // c.predictor_heads, TokenGrid(c.grid), c.rope_theta)
        self.blocks = nn.ModuleList(
            Block(c.predictor_dim, c.predictor_heads, c.mlp_ratio, qkv_bias=c.qkv_bias,
                  qk_norm=c.qk_norm, attn_drop=c.attn_dropout, proj_drop=c.proj_dropout,
                  kernel=c.attention_kernel)
            for _ in range(c.predictor_depth))
        self.norm = LayerNorm(c.predictor_dim, eps=1e-6)

    def forward(self, context: Tensor, visible_idx: Tensor | None,
                query_idx: Tensor | None = None) -> Tensor:
        """Predict features at every position, or only at ``query_idx``.

        Args:
            context: ``[B, Nb + Nv, E]`` the context encoder's output.
            visible_idx: ``[B, Nv] int64`` positions of the visible tokens (``None`` = all).
            query_idx: ``[B, Q] int64`` positions in ``[0, N)`` whose features are wanted, or
                None (all N). All blocks but the last see every position; the last one computes
                queries, MLP and the final norm for these rows only (Algorithm 1 needs ``z`` only
                at the tokens revealed this AR step). Same values as ``z[query_idx]``.

        Returns:
            ``z: [B, N, P]``, or ``[B, Q, P]`` with ``query_idx``.

        Raises:
            RuntimeError: a ``query_idx`` entry outside ``[0, N)`` (from ``torch.gather``).
        """
        h = self.embed(context)
        b, nb = h.shape[0], self.buffer_size
        if visible_idx is None:
            x = h
        else:
            x = self.mask_token.to(h.dtype).expand(b, nb + self.num_tokens, -1).clone()
            x[:, :nb] = h[:, :nb]
            x.scatter_(1, (visible_idx + nb).unsqueeze(-1).expand(-1, -1, h.shape[-1]), h[:, nb:])
        if self.pos_embed is not None:
            x = torch.cat([x[:, :nb], x[:, nb:] + self.pos_embed.to(x.dtype)], dim=1)
        rope = None if self.rope is None else self.rope.with_buffer(nb, None, x.device)
        rows = None if query_idx is None else query_idx + nb
        if rows is not None and not len(self.blocks):
            x = gather_rows(x, rows)
        for i, block in enumerate(self.blocks):
            x = block(x, rope=rope, query_idx=rows if i == len(self.blocks) - 1 else None)
        return self.norm(x)[:, nb:] if rows is None else self.norm(x)


class DJEPA(PretrainedMixin, nn.Module):
    """D-JEPA (paper §3): context encoder φ, feature predictor γ, denoising MLP loss head and
    the prediction-loss projector; the target encoder φ̄ is the encoder of the EMA copy of this
    module (``djepa.core.ema.EMA``), passed to :meth:`forward` as ``target_model``.

    Args:
        config: :class:`~djepa.core.config.DJEPAConfig`.

    Example::

        model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10))
        out = model(tokens, labels, target_model=ema.module)
        out.loss.backward()
    """

    #: Parameter-name prefixes without weight decay (official ``no_weight_decay_set``); the
    #: engine also exempts every parameter with ndim ≤ 1 (biases, norms).
    no_weight_decay_prefixes: ClassVar[tuple[str, ...]] = (
        "encoder.token_embed.", "encoder.buffer", "encoder.pos_embed", "condition.",
        "predictor.embed.", "predictor.mask_token", "predictor.pos_embed",
        "token_loss.", "prediction_loss.",
    )

    def __init__(self, config: DJEPAConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.condition = ClassCondition(c.num_classes, c.encoder_dim, c.label_drop_prob)
        self.encoder = ContextEncoder(c)
        self.predictor = FeaturePredictor(c)
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
        them — the random init breaks that symmetry."""
        _init_backbone(self.encoder)
        _init_backbone(self.predictor)
        std = self.config.init_std
        for p in (self.condition.class_embed.weight, self.condition.null_embed,
                  self.encoder.buffer, self.predictor.mask_token):
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

    def features(self, tokens: Tensor, cond: Tensor, visible_idx: Tensor | None,
                 query_idx: Tensor | None = None) -> Tensor:
        """φ then γ: ``z: [B, N, P]`` from the visible tokens and condition ``cond: [B, E]``;
        ``[B, Q, P]`` at the positions ``query_idx: [B, Q] int64`` only, when given (see
        :meth:`FeaturePredictor.forward`)."""
        return self.predictor(self.encoder(tokens, cond, visible_idx), visible_idx, query_idx)

    @torch.no_grad()
    def encode_target(self, tokens: Tensor, labels: Tensor | None) -> Tensor:
        """Target features g = sg(φ̄(𝕌)) (Eq. 2): this model's encoder on *all* tokens with the
        true condition (no label dropout), buffer dropped. Call it on the EMA model.

        Returns:
            ``[B, N, E]``, detached.
        """
        was_training = self.training
        self.eval()  # no dropout in the target encoder (official: ema_model.eval())
        try:
            cond = self.condition(labels, tokens.shape[0])
            return self.encoder(tokens, cond, None)[:, self.config.buffer_size:].detach()
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ training
    def forward(self, tokens: Tensor, labels: Tensor | None, *,
                target_model: "DJEPA | None" = None,
                generator: torch.Generator | None = None) -> DJEPAOutput:
        """One training forward (§3.1–3.4).

        Masks ``ceil(N·r)`` tokens along a random order per sample, ``r ~ TruncNormal`` drawn once
        per batch; computes the token loss (diffusion or flow, ``diffusion_batch_mul`` draws of t
        per masked token) and the prediction loss against ``target_model.encode_target``.
        Randomness comes from ``generator`` (CPU) when given, else torch's global RNG (what the
        training engine checkpoints).

        Args:
            tokens: ``[B, N, D]`` float.
            labels: ``[B]`` int64 class ids in [0, num_classes) or ``None`` (unconditional).
            target_model: the EMA model providing the target encoder φ̄; required when the
                prediction-loss weight is > 0.

        Raises:
            ValueError: wrong token shape, out-of-range labels, missing ``target_model``.
        """
        self.check_tokens(tokens)
        c = self.config
        b, n, _ = tokens.shape
        if self.prediction_loss is not None and target_model is None:
            raise ValueError("the prediction loss needs target_model (the EMA model, whose encoder is "
                             "the target encoder); pass target_model=ema.module or set "
                             "loss.prediction_weight=0 for the MAR baseline")
        ratio = sample_mask_ratio(generator, minimum=c.mask_ratio_min, mean=c.mask_ratio_mean,
                                  std=c.mask_ratio_std)
        num_masked = num_masked_tokens(n, ratio)
        orders = random_orders(b, n, device=tokens.device, generator=generator)
        mask = mask_from_orders(orders, num_masked)  # True = masked
        visible_idx = orders[:, num_masked:].sort(dim=1).values  # [B, N - num_masked]

        cond = self.condition(labels, b, drop_labels=self.training)
        z = self.features(tokens, cond, visible_idx)  # [B, N, P]

        # Token loss on the masked rows only (same value as the masked mean over all rows).
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        z_rows = z.reshape(b * n, -1).index_select(0, rows)
        x_rows = tokens.reshape(b * n, -1).index_select(0, rows)
        mul = c.loss.diffusion_batch_mul
        token_loss = self.token_loss(x_rows.repeat(mul, 1), z_rows.repeat(mul, 1), None,
                                     generator=generator)

        if self.prediction_loss is not None:
            target = target_model.encode_target(tokens, labels)
            prediction_loss = self.prediction_loss(z, target, mask)
        else:
            prediction_loss = token_loss.new_zeros(())
        loss = c.loss.diffusion_weight * token_loss + c.loss.prediction_weight * prediction_loss
        return DJEPAOutput(loss, token_loss.detach(), prediction_loss.detach())
