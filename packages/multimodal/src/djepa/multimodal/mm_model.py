"""The Transfusion-style text+image D-JEPA (paper App. G.4).

Paper, App. G.4: *"D-JEPA can generate text using next token prediction and create images …
using next set of tokens prediction. Essentially, we adopted the design philosophy of Transfusion
(Zhou et al., 2024) but replaced the diffusion model with the D-JEPA model."* and *"image
generation in the multimodal mode does not rely on any text embedding model. Text and images are
directly used as inputs to the model, which then simultaneously predicts both text and image."*

How the three D-JEPA networks share one sequence (our design; the paper gives no more detail):

* **Context encoder φ** — one transformer over the whole sequence (:mod:`djepa.multimodal.mm_sequence`:
  text ids through a token embedding, image tokens through a linear embedding), with the one
  Transfusion mask (causal over the sequence, bidirectional inside each image span). The image
  tokens *masked* this step are never keys (D-JEPA §3.2: φ sees the context only), so nothing of
  a masked token reaches any other position. φ is also the language model: its final-norm states
  at text positions feed the **LM head** (a linear map to the vocabulary), i.e. the text is
  predicted with next-token prediction by the context encoder, exactly a causal LM on text.
* **Feature predictor γ** — a second, shallower transformer over the *whole* sequence, with the
  same mask: input is ``Linear(φ(x))`` at every unmasked position and a learned mask token at the
  masked image positions (§3.2); its final-norm output ``z`` at masked image positions conditions
  the **denoising MLP** (flow matching L_v, App. F Eq. 7, or diffusion L_d, Eq. 4) and, through
  the projector, the **prediction loss** L_p (Eq. 2) against the target encoder. A masked token
  thus sees the preceding text (the caption: Transfusion's conditioning) and the visible tokens
  of its own span, nothing later.
* **Target encoder φ̄** — φ of the EMA model (paper §3.2, App. B), run on the full sequence with
  nothing masked (:meth:`MMModel.encode_target`), no gradient.

Loss (Transfusion Eq. 4 ``L = L_LM + λ·L_DDPM`` with D-JEPA's image loss, §3.4):
``L = CE(next text token) + λ · (w_d · L_{d|v} + w_p · L_p)`` — the CE is averaged over the text
positions that have a next text token (:data:`~djepa.multimodal.mm_sequence.IGNORE` elsewhere),
the image terms over the masked image tokens (0 when a batch holds no generated image).
λ = ``image_weight`` (default 5, Transfusion's λ). Masking: the paper's truncated-normal ratio
(§3.1; min 0.7, mean 1.0, std 0.25) over each row's maskable tokens (only caption → image spans).

Positions: 3-axis RoPE (:class:`djepa.core.rope.AxialRoPE`, split :func:`default_rope_split`)
with the positions of :mod:`~djepa.multimodal.mm_sequence` — 1-D for text, 2-D inside a span —
and, with ``MMConfig.image_pos_embed`` (default), a learned embedding of the span cell ``(r, c)``
added to every image token at φ's input and to the mask token at γ's input (MAR's ``pos_embed`` /
``decoder_pos_embed``): RoPE reaches only queries and keys, so without it what a caption token
reads from an image token (its value) carries no position.

Inference (:mod:`djepa.multimodal.mm_sample`): :meth:`MMModel.encode` / :meth:`MMModel.predict`
take and return a per-block key/value cache (φ for text decoding; γ's cache of the prefix for
Algorithm 1 on an image span). The cached and uncached passes are the same computation.

The tokenizer (SentencePiece ``ModelProto`` bytes) is a ``uint8`` buffer ``sp_model`` of the
model: every checkpoint and export carries it (:meth:`MMModel.tokenizer`); ``MMConfig`` records
its size and sha256 and loading refuses other bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from djepa.core.attention import attention_kernel
from djepa.core.batch import TokenBatch
from djepa.core.blocks import Block
from djepa.core.config import LossConfig
from djepa.core.heads import build_token_loss
from djepa.core.masking import TruncNormalMasking
from djepa.core.model import init_backbone
from djepa.core.norms import LayerNorm
from djepa.core.prediction_loss import PredictionLoss
from djepa.core.pretrained import PretrainedMixin
from djepa.core.rope import AxialRoPE, default_rope_split
from djepa.multimodal.mm_sequence import IGNORE, MMBatch, attention_mask
from djepa.multimodal.mm_tokenizer import MMTokenizer

__all__ = ["MMConfig", "MMModel", "MMOutput", "KVCache"]

_TOKENIZERS: dict[str, MMTokenizer] = {}

#: Per block ``(k, v)``, each ``[B, H, Lc, head_dim]``; None = empty.
KVCache = list[tuple[Tensor, Tensor]]


def _default_loss() -> LossConfig:
    # CPU-scale denoising MLP; flow matching as in App. G ("we employ flow matching loss instead of
    # diffusion loss for all experiments in this section").
    return LossConfig(kind="flow", mlp_depth=3, mlp_width=256, diffusion_batch_mul=4)


@dataclass(frozen=True)
class MMConfig:
    """The text+image model.

    Attributes:
        vocab_size: text ids ``0 … V−1`` (the tokenizer's pieces).
        token_dim / image_grid: image token channels ``D`` and the fixed grid ``(H, W)`` of a span.
        encoder_dim / encoder_depth / encoder_heads: φ (and the LM head's input width).
        predictor_dim / predictor_depth / predictor_heads: γ.
        mlp_ratio, qkv_bias, qk_norm, proj_dropout, rope_theta: transformer details (core blocks).
        loss: the per-token loss and the prediction-loss weight (core :class:`LossConfig`).
        image_weight: λ of ``L = CE + λ·(image loss)`` (Transfusion: 5).
        mask_ratio_min / mean / std: the truncated-normal mask ratio (§3.1).
        tokenizer_size / tokenizer_sha256: the SentencePiece bytes the buffer holds.
        init_std: N(0, σ) init of the embeddings and the mask token.
        image_pos_embed: add a learned absolute position embedding of the span cell ``(r, c)``
            to every image token at φ's input and to the mask token at γ's input (MAR / MAE:
            ``pos_embed`` and ``decoder_pos_embed``). RoPE alone rotates queries and keys but
            leaves the *values* position-free, so a caption token that attends to an image token
            learns what is there but not where. At step 1500 of the CPU default (otherwise equal
            runs, docs/results/mm.md) it lifted image → text correct from 82.5 to 96.0 % and
            text → image object+colour / relation from 53.0 / 35.9 to 69.5 / 54.7 %. False =
            RoPE only (the earlier design).
    """

    vocab_size: int
    token_dim: int
    image_grid: tuple[int, ...] = (6, 6)  # (H, W) of the image span in tokens
    encoder_dim: int = 128
    encoder_depth: int = 4
    encoder_heads: int = 4
    predictor_dim: int = 128
    predictor_depth: int = 2
    predictor_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_norm: bool = True
    proj_dropout: float = 0.0
    rope_theta: float = 10000.0
    loss: LossConfig = field(default_factory=_default_loss)
    image_weight: float = 5.0
    mask_ratio_min: float = 0.7
    mask_ratio_mean: float = 1.0
    mask_ratio_std: float = 0.25
    tokenizer_size: int = 0
    tokenizer_sha256: str = ""
    init_std: float = 0.02
    image_pos_embed: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "token_dim", "encoder_dim", "encoder_depth", "encoder_heads",
                     "predictor_dim", "predictor_depth", "predictor_heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MMConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_dim % self.encoder_heads or self.predictor_dim % self.predictor_heads:
            raise ValueError("widths must be divisible by their head counts")
        if len(self.image_grid) != 2 or min(self.image_grid) < 1:
            raise ValueError(f"image_grid must be (H, W) >= 1, got {self.image_grid}")
        if self.image_weight < 0:
            raise ValueError("image_weight must be >= 0")

    @property
    def num_image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]


class MMOutput(NamedTuple):
    """Loss breakdown (scalars): ``loss = text_loss + λ·(w_d·token_loss + w_p·prediction_loss)``."""

    loss: Tensor
    text_loss: Tensor
    token_loss: Tensor
    prediction_loss: Tensor


def _rope(module: AxialRoPE, positions: Tensor) -> tuple[Tensor, Tensor]:
    return module(positions)


def _run_blocks(blocks: nn.ModuleList, x: Tensor, rope: tuple[Tensor, Tensor], attn_mask: Tensor,
                cache: KVCache | None) -> tuple[Tensor, KVCache]:
    """The core :class:`~djepa.core.blocks.Block` computation (pre-LN attention + MLP) with a
    key/value cache: queries are the rows of ``x [B, Lq, W]``; keys/values the cached ones
    followed by those of ``x``; ``attn_mask [B, 1, Lq, Lc + Lq]`` (True = may attend)."""
    new: KVCache = []
    for i, blk in enumerate(blocks):
        q, k, v = blk.attn.project_qkv(blk.norm1(x), rope)
        if cache is not None and cache[i] is not None and cache[i][0].shape[2]:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        new.append((k, v))
        o = attention_kernel(q, k, v, None, blk.attn.dropout_p, blk.attn.kernel, attn_mask)
        x = x + blk.attn.project_out(o)
        x = x + blk.mlp(blk.norm2(x))
    return x, new


class MMModel(PretrainedMixin, nn.Module):
    """Context encoder φ + LM head, feature predictor γ, denoising MLP, prediction loss (module
    docstring). The target encoder is the encoder of the EMA copy (``target_model``).

    Args:
        config: :class:`MMConfig`.
        tokenizer_bytes: the SentencePiece model to store (size/sha256 must match the config);
            None = zeros of ``config.tokenizer_size`` (to be filled by ``load_state_dict``).

    Raises:
        ValueError: tokenizer bytes that do not match the config.
    """

    model_type: ClassVar[str] = "djepa-mm"
    no_weight_decay_prefixes: ClassVar[tuple[str, ...]] = (
        "text_embed.", "image_embed.", "mask_token", "token_loss.", "prediction_loss.", "predictor_embed.",
        "image_pos", "predictor_image_pos")

    def __init__(self, config: MMConfig, tokenizer_bytes: bytes | None = None) -> None:
        super().__init__()
        self.config = c = config
        E, P = c.encoder_dim, c.predictor_dim
        kw = dict(qkv_bias=c.qkv_bias, qk_norm=c.qk_norm, proj_drop=c.proj_dropout)
        self.text_embed = nn.Embedding(c.vocab_size, E)
        self.image_embed = nn.Linear(c.token_dim, E)
        self.encoder_blocks = nn.ModuleList(Block(E, c.encoder_heads, c.mlp_ratio, **kw) for _ in range(c.encoder_depth))
        self.encoder_norm = LayerNorm(E, eps=1e-6)
        self.lm_head = nn.Linear(E, c.vocab_size)
        self.predictor_embed = nn.Linear(E, P)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, P))
        n = c.num_image_tokens
        self.image_pos = nn.Parameter(torch.zeros(n, E)) if c.image_pos_embed else None
        self.predictor_image_pos = nn.Parameter(torch.zeros(n, P)) if c.image_pos_embed else None
        self.predictor_blocks = nn.ModuleList(Block(P, c.predictor_heads, c.mlp_ratio, **kw)
                                              for _ in range(c.predictor_depth))
        self.predictor_norm = LayerNorm(P, eps=1e-6)
        he, hp = E // c.encoder_heads, P // c.predictor_heads
        self.enc_rope = AxialRoPE(he, 3, c.rope_theta, split=default_rope_split(he, 3))
        self.pred_rope = AxialRoPE(hp, 3, c.rope_theta, split=default_rope_split(hp, 3))
        self._init_weights()
        self.token_loss = build_token_loss(c.loss, c.token_dim, P)
        self.prediction_loss = (PredictionLoss(P, E, beta=c.loss.prediction_beta, order=c.loss.projector_order)
                                if c.loss.prediction_weight > 0 else None)
        self.masking = TruncNormalMasking(c.mask_ratio_min, c.mask_ratio_mean, c.mask_ratio_std)
        if tokenizer_bytes is not None:
            if len(tokenizer_bytes) != c.tokenizer_size or hashlib.sha256(tokenizer_bytes).hexdigest() != c.tokenizer_sha256:
                raise ValueError("tokenizer bytes do not match MMConfig.tokenizer_size / tokenizer_sha256")
            buf = torch.frombuffer(bytearray(tokenizer_bytes), dtype=torch.uint8).clone()
        else:
            buf = torch.zeros(c.tokenizer_size, dtype=torch.uint8)
        self.register_buffer("sp_model", buf, persistent=True)

    def _init_weights(self) -> None:
        """Official D-JEPA init on the transformer parts (xavier-uniform Linear, zero bias,
        LayerNorm 1/0); embeddings and the mask token N(0, init_std)."""
        init_backbone(self)
        nn.init.normal_(self.text_embed.weight, std=self.config.init_std)
        nn.init.normal_(self.mask_token, std=self.config.init_std)
        for p in (self.image_pos, self.predictor_image_pos):
            if p is not None:
                nn.init.normal_(p, std=self.config.init_std)

    # ------------------------------------------------------------------ tokenizer
    def tokenizer(self) -> MMTokenizer:
        """The SentencePiece tokenizer stored in the model (built once).

        Raises:
            ValueError: the buffer's bytes do not hash to ``config.tokenizer_sha256``.
        """
        data = bytes(self.sp_model.cpu().numpy().tobytes())
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.config.tokenizer_sha256:
            raise ValueError("the model's stored tokenizer does not match its config (sha256)")
        if digest not in _TOKENIZERS:  # a processor per distinct model (not deep-copied by the EMA)
            _TOKENIZERS[digest] = MMTokenizer(data)
        return _TOKENIZERS[digest]

    # ------------------------------------------------------------------ pieces
    def _cell(self, positions: Tensor) -> Tensor:
        """The span cell ``r·W + c`` of image positions ``(s, s + r, s + c)`` ``[..., 3]`` →
        ``[...]`` int64 (clamped into the grid; meaningless at text positions)."""
        W = self.config.image_grid[1]
        r, c = positions[..., 1] - positions[..., 0], positions[..., 2] - positions[..., 0]
        return (r * W + c).clamp(0, self.config.num_image_tokens - 1)

    def embed_image(self, tokens: Tensor, positions: Tensor) -> Tensor:
        """Image tokens ``[B, N, D]`` at their positions ``[B, N, 3]`` → φ's input ``[B, N, E]``
        (the linear embedding plus, with ``image_pos_embed``, the cell's position embedding)."""
        x = self.image_embed(tokens.to(self.image_embed.weight.dtype))
        if self.image_pos is not None:
            x = x + self.image_pos.to(x.dtype)[self._cell(positions)]
        return x

    def embed(self, batch: MMBatch) -> Tensor:
        """``[B, L, E]``: the text embedding at text positions, :meth:`embed_image` at image ones."""
        t = self.text_embed(batch.ids)
        i = self.embed_image(batch.image, batch.positions)
        return torch.where(batch.is_image[..., None], i.to(t.dtype), t)

    def encode(self, x: Tensor, positions: Tensor, attn_mask: Tensor,
               cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """φ: ``x [B, Lq, E]`` (embedded new columns), ``positions [B, Lq, 3]``, ``attn_mask
        [B, 1, Lq, Lc + Lq]`` bool (True = may attend; masked image tokens must be False as keys),
        ``cache`` of the ``Lc`` earlier columns → (final-norm states ``[B, Lq, E]``, the cache
        extended by these columns)."""
        h, new = _run_blocks(self.encoder_blocks, x, _rope(self.enc_rope, positions), attn_mask, cache)
        return self.encoder_norm(h), new

    def predict(self, h: Tensor, masked: Tensor, positions: Tensor, attn_mask: Tensor,
                cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """γ: φ states ``h [B, Lq, E]``, ``masked [B, Lq]`` bool (True = replaced by the mask
        token), positions / mask / cache as for :meth:`encode` → (``z [B, Lq, P]``, cache)."""
        p = self.predictor_embed(h)
        m = self.mask_token.to(p.dtype).expand_as(p)
        if self.predictor_image_pos is not None:  # masked positions are image tokens
            m = m + self.predictor_image_pos.to(p.dtype)[self._cell(positions)]
        p = torch.where(masked[..., None], m, p)
        z, new = _run_blocks(self.predictor_blocks, p, _rope(self.pred_rope, positions), attn_mask, cache)
        return self.predictor_norm(z), new

    def logits(self, h: Tensor) -> Tensor:
        """LM head: ``[..., E]`` → ``[..., V]`` float32."""
        return self.lm_head(h).float()

    @torch.no_grad()
    def encode_target(self, batch: MMBatch) -> Tensor:
        """Target features ``sg(φ̄(x)) [B, L, E]``: this model's φ on the full sequence, nothing
        masked, eval mode (no dropout). Call it on the EMA model."""
        was = self.training
        self.eval()
        try:
            h, _ = self.encode(self.embed(batch), batch.positions, attention_mask(batch))
            return h.detach()
        finally:
            self.train(was)

    # ------------------------------------------------------------------ training
    def forward(self, tokens: MMBatch, *, target_model: "MMModel | None" = None,
                mask: Tensor | None = None, generator: torch.Generator | None = None) -> MMOutput:
        """One training forward (module docstring).

        Args:
            tokens: the packed :class:`MMBatch` (the engine's ``tokens`` key).
            target_model: the EMA model (its φ is the target encoder); needed when the
                prediction-loss weight is > 0.
            mask: ``[B, L]`` bool, True = masked (tests); default the truncated-normal masking
                over ``tokens.maskable``. Always intersected with ``maskable``.
            generator: randomness of the mask and the token loss (default torch's global RNG).

        Raises:
            ValueError: missing ``target_model``; image tokens of the wrong width.
        """
        b = tokens
        c = self.config
        B, L = b.ids.shape
        if b.image.shape[-1] != c.token_dim:
            raise ValueError(f"image tokens must have {c.token_dim} channels, got {b.image.shape[-1]}")
        if self.prediction_loss is not None and target_model is None:
            raise ValueError("the prediction loss needs target_model (the EMA model)")
        if mask is None:
            tb = TokenBatch(b.image, b.positions, b.padding, b.maskable)
            mask = self.masking(tb, generator)
        mask = mask & b.maskable
        attn = attention_mask(b)
        h, _ = self.encode(self.embed(b), b.positions, attn & ~mask[:, None, None, :])
        # next-token CE on text
        sel = b.targets != IGNORE
        if bool(sel.any()):
            text_loss = F.cross_entropy(self.logits(h[sel]), b.targets[sel])
        else:
            text_loss = h.sum() * 0.0
        rows = mask.reshape(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            zero = h.sum() * 0.0
            token_loss = prediction_loss = zero
        else:
            z, _ = self.predict(h, mask, b.positions, attn)
            z_rows = z.reshape(B * L, -1).index_select(0, rows)
            x_rows = b.image.reshape(B * L, -1).index_select(0, rows).float()
            mul = c.loss.diffusion_batch_mul
            token_loss = self.token_loss(x_rows.repeat(mul, 1), z_rows.repeat(mul, 1), None, generator=generator)
            if self.prediction_loss is not None:
                target = target_model.encode_target(b)
                prediction_loss = self.prediction_loss(z, target, mask)
            else:
                prediction_loss = token_loss.new_zeros(())
        image = c.loss.diffusion_weight * token_loss + c.loss.prediction_weight * prediction_loss
        loss = text_loss + c.image_weight * image
        return MMOutput(loss, text_loss.detach(), token_loss.detach(), prediction_loss.detach())

    # ------------------------------------------------------------------ save / load
    @classmethod
    def load_config(cls, directory: str | Path) -> MMConfig:
        """``DIR/config.json`` (``model_type`` ``djepa-mm``) → :class:`MMConfig`.

        Raises:
            FileNotFoundError / ValueError: missing, unreadable or another model type.
        """
        from djepa.core.config import config_from_dict

        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a save_pretrained directory")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("model_type") != cls.model_type:
            raise ValueError(f"{path} is not a text+image (djepa-mm) model")
        return config_from_dict(MMConfig, meta["config"])

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> "MMModel":
        from djepa.core.config import config_from_dict

        return cls(config_from_dict(MMConfig, data))


def load_mm(path: str | Path, device: torch.device | str = "cpu") -> tuple["MMModel", Any, dict]:
    """``(model, pixel tokenizer, run config)`` of a text+image run: the run folder ``RUN`` (its
    ``pretrained/`` EMA export), an export folder, or one checkpoint ``RUN/checkpoints/step_N``
    (its ``ema.safetensors``, verified against the checkpoint's manifest first). Weights are read
    with safetensors only; the tokenizer comes from the weights themselves.

    Raises:
        FileNotFoundError: nothing loadable at ``path`` (names it and the fix).
        ValueError / CheckpointMismatchError: another model type, or weights that do not fit.
    """
    from safetensors.torch import load_file

    from djepa.core.config import config_from_dict
    from djepa.core.pretrained import load_state_dict_strict
    from djepa.core.runs import resolve_run
    from djepa.image.tokenizer import PixelTokenizer
    from djepa.multimodal.shapes import DEFAULT_IMAGE_SIZE

    kind, folder = resolve_run(path)
    run_cfg: dict = {}
    if kind == "checkpoint":
        from djepa.core.train import checkpoint as ckpt

        run_dir = folder.parent.parent
        ckpt.verify(folder, files=("ema.safetensors",))
        run_cfg = json.loads((run_dir / "config.json").read_text())
        if not isinstance(run_cfg.get("model"), dict) or "vocab_size" not in run_cfg["model"]:
            raise ValueError(f"{run_dir / 'config.json'} is not a text+image (mm-train) run")
        model = MMModel(config_from_dict(MMConfig, run_cfg["model"]))
        load_state_dict_strict(model, load_file(str(folder / "ema.safetensors")), source=str(folder))
    else:
        model = MMModel.from_pretrained(folder)
        rc = folder.parent / "config.json"
        if folder.name == "pretrained" and rc.is_file():
            run_cfg = json.loads(rc.read_text())
    c = model.config
    patch = DEFAULT_IMAGE_SIZE // c.image_grid[0]
    pixel = PixelTokenizer(3, DEFAULT_IMAGE_SIZE, patch)
    if tuple(pixel.grid) != tuple(c.image_grid) or pixel.token_dim != c.token_dim:
        raise ValueError(f"{folder}: the model's image tokens ({c.token_dim} × {tuple(c.image_grid)}) are not "
                         f"pixel patches of {DEFAULT_IMAGE_SIZE}px images")
    model.tokenizer()  # checks the stored tokenizer against the config
    return model.to(device).eval(), pixel, run_cfg
