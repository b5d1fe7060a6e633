"""Typed, frozen configuration for the D-JEPA core, one dataclass per concern.

Defaults follow the paper (arXiv 2410.03755, §3, App. B) and, where the paper is silent, the
official release (see ``shared/docs/FIDELITY.md`` of the project). Where paper and code differ,
the paper's value is the default and the other is an option:

* ``LossConfig.beta_schedule``: ``"linear"`` (paper, App. B: 1e-4 → 2e-2) or ``"cosine"``
  (MAR / official code).
* ``DJEPAConfig.pos_embed``: ``"learned"`` tables (official training code) or ``"rope"``
  (the variant whose parameter counts the release publishes: 212M / 687M / 1.4B).

Every config round-trips through :func:`config_to_dict` / :func:`config_from_dict` (JSON-safe)
so that it can be written next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar, Literal, TypeVar, get_type_hints

__all__ = [
    "LossConfig",
    "DJEPAConfig",
    "SamplerConfig",
    "PRESETS",
    "preset",
    "ModelSpec",
    "config_to_dict",
    "config_from_dict",
    "with_saved_defaults",
]


@dataclass(frozen=True)
class LossConfig:
    """Per-token generative loss (diffusion or flow matching) and the prediction loss.

    Attributes:
        kind: ``"diffusion"`` (L_d, Eq. 4, ε-prediction) or ``"flow"`` (L_v, Eq. 7).
        num_train_timesteps: diffusion steps T (1000, App. B).
        beta_schedule: ``"linear"`` 1e-4 → 2e-2 scaled to T (paper) or ``"cosine"`` (MAR code).
        learn_sigma: ADM "learned range" variance (the MLP outputs 2·C channels) and the VLB
            term in the loss (paper App. B: "ADM's parameterization of the covariance").
        diffusion_batch_mul: t is drawn this many times per token (§3.3: "four times").
        mlp_depth / mlp_width: residual blocks and width of the denoising MLP
            (B 6×1024, L 8×1280, H 12×1536).
        flow_time_shift: time-shifting factor s of the flow ODE sampler,
            t' = t / (t + s − s·t); 1.0 = no shift.
        diffusion_weight / prediction_weight: L = w_d·L_d + w_p·L_p (§3.4); ``prediction_weight
            = 0`` is the MAR baseline of Table 6 (no projector, no target encoder pass).
        prediction_beta: smooth-L1 β of the prediction loss (official code: 2.0).
        projector_order: ``"official"`` — the prediction-loss projector runs Linear → GELU →
            LayerNorm → Linear (timm ``Mlp`` with ``norm_layer``, as the official constructor
            builds it) — or ``"norm_first"`` (Linear → LayerNorm → GELU → Linear, this package's
            order before issue 11, for runs trained with it). Same parameters either way.
    """

    kind: Literal["diffusion", "flow"] = "diffusion"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "cosine"] = "linear"
    learn_sigma: bool = True
    diffusion_batch_mul: int = 4
    mlp_depth: int = 6
    mlp_width: int = 1024
    flow_time_shift: float = 1.0
    diffusion_weight: float = 1.0
    prediction_weight: float = 1.0
    prediction_beta: float = 2.0
    projector_order: Literal["official", "norm_first"] = "official"

    # Fields added after configs were saved without them, with the value those older runs were
    # trained with (not today's default): reading an old config.json must not change the model
    # (config_from_dict / with_saved_defaults fill these in when a saved dict lacks the key).
    SAVED_BEFORE: ClassVar[dict[str, Any]] = {"projector_order": "norm_first"}

    def __post_init__(self) -> None:
        if self.kind not in ("diffusion", "flow"):
            raise ValueError(f"loss kind must be 'diffusion' or 'flow', got {self.kind!r}")
        if self.beta_schedule not in ("linear", "cosine"):
            raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {self.beta_schedule!r}")
        for name in ("num_train_timesteps", "diffusion_batch_mul", "mlp_depth", "mlp_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LossConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.flow_time_shift <= 0 or self.prediction_beta <= 0:
            raise ValueError("flow_time_shift and prediction_beta must be > 0")
        if self.diffusion_weight < 0 or self.prediction_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if self.projector_order not in ("official", "norm_first"):
            raise ValueError(f"projector_order must be 'official' or 'norm_first', got {self.projector_order!r}")


@dataclass(frozen=True)
class DJEPAConfig:
    """The D-JEPA network: context encoder φ, feature predictor γ, condition, loss heads.

    Attributes:
        token_dim: channels per token D_tok (e.g. 16 for KL-16 latents with patch 1).
        grid: token grid shape, ``(L,)``, ``(H, W)`` or ``(T, H, W)``; N = prod(grid).
        num_classes: number of class labels (a learned null class is added for CFG).
        encoder_dim / encoder_depth / encoder_heads: context encoder width, blocks, heads.
        predictor_dim / predictor_depth / predictor_heads: feature predictor likewise.
        mlp_ratio: transformer MLP hidden ratio (4).
        qk_norm: RMSNorm on queries and keys per head (on in the official scripts).
        qkv_bias: bias on the qkv projection (True).
        attn_dropout / proj_dropout: dropout in attention and projections / MLP (0.1).
        buffer_size: number of buffer tokens (learned buffer + condition embedding), prepended
            to the encoder input, never masked, dropped before every loss (64).
        label_drop_prob: condition-dropout probability during training → the learned null
            (0.1): a class id → the null class; a whole sequence → the null sequence.
        pos_embed: ``"learned"`` position tables (official code) or ``"rope"`` (axial RoPE over
            ``grid``, no tables).
        rope_theta: RoPE base frequency.
        attention_kernel: ``"sdpa"`` (PyTorch, any device) or ``"xformers"`` (CUDA only).
        mask_ratio_min / mask_ratio_mean / mask_ratio_std: truncated normal mask ratio (§3.1:
            mean 1.0, std 0.25, lower bound 0.7; upper bound 1.0).
        init_std: std of the normal init of embeddings, buffers and mask token (0.02).
        condition: ``"class"`` (class ids → buffer vector + learned null class; the default, the
            paper's image models), ``"none"`` (unconditional) or ``"sequence"`` (a ``[B, L, D_c]``
            sequence attended through joint blocks; DESIGN.md §7; needs ``pos_embed="rope"``).
        condition_dim: D_c of a sequence condition (0 = ``encoder_dim``).
        condition_input_dim: with ``condition="sequence"``, the width of the values the caller
            hands in; a learned linear map takes them to ``condition_dim`` before the joint
            blocks (SD3's ``context_embedder``), so a wide frozen text encoder does not force a
            wide condition stream. 0 (default) = the values already have ``condition_dim``
            channels, no projection (the behaviour before this option).
        joint_depth: with ``condition="sequence"``, the first ``joint_depth`` blocks of the
            context encoder and of the feature predictor are SD3-style joint blocks (two
            streams, one attention); must be 0 for the other kinds. ``None`` = all blocks.
        rope_split: channels per axis of the RoPE head split (e.g. ``(16, 24, 24)``), applied to
            encoder and predictor heads; ``None`` = :func:`djepa.core.rope.default_rope_split`
            (the equal split where valid).
        aligned_dim: D_a of an optional token-aligned condition (``SequenceInput.aligned``,
            ``[B, N, D_a]``): a learned ``Linear(D_a, E)`` in φ and ``Linear(D_a, P)`` in γ add it
            to every token's embedding. 0 = none (the default; no parameters are added). Needs
            ``condition="sequence"``.
        activation_checkpointing: recompute each encoder / predictor block in backward instead
            of storing its activations (``torch.utils.checkpoint``, non-reentrant); same
            gradients, less memory (the paper used it for video and text-to-image). Off by default.
        embed_norm: LayerNorm on the context encoder's input ``[buffer; token embeddings]``
            (True, MAR's ``z_proj_ln``, kept by the official D-JEPA code). After a linear token
            embedding that LayerNorm is invariant to the token's scale when nothing is added
            before it (RoPE: no position table; learned tables start at std 0.02), so a pixel
            token ``c·x`` looks like ``x``: a uniform background patch and a uniform full-ink
            patch of pixel video reach the encoder with cosine 0.99 after 500 steps
            (docs/results/video.md). ``False`` skips it (the blocks are pre-LN, so the residual
            stream keeps the token's magnitude, as in a ViT).
        loss: the loss heads.
    """

    token_dim: int = 16
    grid: tuple[int, ...] = (16, 16)
    num_classes: int = 1000
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    predictor_dim: int = 768
    predictor_depth: int = 12
    predictor_heads: int = 12
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    qkv_bias: bool = True
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    buffer_size: int = 64
    label_drop_prob: float = 0.1
    pos_embed: Literal["learned", "rope"] = "learned"
    rope_theta: float = 10000.0
    attention_kernel: Literal["sdpa", "xformers"] = "sdpa"
    mask_ratio_min: float = 0.7
    mask_ratio_mean: float = 1.0
    mask_ratio_std: float = 0.25
    init_std: float = 0.02
    condition: Literal["class", "none", "sequence"] = "class"
    condition_dim: int = 0
    condition_input_dim: int = 0
    joint_depth: int | None = 0
    rope_split: tuple[int, ...] | None = None
    activation_checkpointing: bool = False
    aligned_dim: int = 0
    embed_norm: bool = True
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if len(self.grid) not in (1, 2, 3) or any(int(g) < 1 for g in self.grid):
            raise ValueError(f"grid must be 1, 2 or 3 positive sizes, got {self.grid!r}")
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        for dim, heads, name in (
            (self.encoder_dim, self.encoder_heads, "encoder"),
            (self.predictor_dim, self.predictor_heads, "predictor"),
        ):
            if dim % heads:
                raise ValueError(f"{name}_dim {dim} is not divisible by {name}_heads {heads}")
        if self.pos_embed not in ("learned", "rope"):
            raise ValueError(f"pos_embed must be 'learned' or 'rope', got {self.pos_embed!r}")
        if self.attention_kernel not in ("sdpa", "xformers"):
            raise ValueError(f"attention_kernel must be 'sdpa' or 'xformers', got {self.attention_kernel!r}")
        if self.buffer_size < 0 or not 0.0 <= self.label_drop_prob <= 1.0 or self.mask_ratio_std <= 0:
            raise ValueError("need buffer_size >= 0, 0 <= label_drop_prob <= 1 and mask_ratio_std > 0")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.condition not in ("class", "none", "sequence"):
            raise ValueError(f"condition must be 'class', 'none' or 'sequence', got {self.condition!r}")
        if self.condition == "sequence":
            if self.pos_embed != "rope":
                raise ValueError("a sequence condition needs pos_embed='rope': its stream has no "
                                 "position table, so with learned tables the model would see the "
                                 "condition as an unordered set (issue 11: RoPE on both streams)")
            if self.joint_depth is not None and not 1 <= self.joint_depth <= min(self.encoder_depth, self.predictor_depth):
                raise ValueError(f"a sequence condition needs joint_depth in [1, min(encoder_depth, "
                                 f"predictor_depth)] (or None = all), got {self.joint_depth}")
        elif self.joint_depth not in (0, None):
            raise ValueError(f"joint_depth={self.joint_depth} needs condition='sequence'")
        if self.condition_dim < 0:
            raise ValueError(f"condition_dim must be >= 0, got {self.condition_dim}")
        if self.aligned_dim < 0 or (self.aligned_dim and self.condition != "sequence"):
            raise ValueError(f"aligned_dim={self.aligned_dim} needs to be >= 0 and, when > 0, "
                             "condition='sequence' (it travels in the SequenceInput)")
        if self.condition_input_dim < 0:
            raise ValueError(f"condition_input_dim must be >= 0, got {self.condition_input_dim}")
        if self.condition_input_dim and self.condition != "sequence":
            raise ValueError(f"condition_input_dim={self.condition_input_dim} needs condition='sequence'")
        if self.rope_split is not None:
            object.__setattr__(self, "rope_split", tuple(int(c) for c in self.rope_split))
        if self.pos_embed == "rope":
            from djepa.core.rope import AxialRoPE, default_rope_split

            for dim, heads in ((self.encoder_dim, self.encoder_heads), (self.predictor_dim, self.predictor_heads)):
                hd = dim // heads
                AxialRoPE(hd, len(self.grid), split=self.rope_split or default_rope_split(hd, len(self.grid)))

    @property
    def num_joint_blocks(self) -> int:
        """How many leading blocks of φ and of γ are joint (0 unless ``condition="sequence"``)."""
        if self.condition != "sequence":
            return 0
        return min(self.encoder_depth, self.predictor_depth) if self.joint_depth is None else self.joint_depth

    @property
    def context_dim(self) -> int:
        """D_c of a sequence condition."""
        return self.condition_dim or self.encoder_dim

    @property
    def seq_len(self) -> int:
        """Number of tokens N = prod(grid)."""
        n = 1
        for g in self.grid:
            n *= g
        return n


@dataclass(frozen=True)
class SamplerConfig:
    """Algorithm 1 (§3.5) settings.

    Attributes:
        num_ar_steps: AR steps K (64 is the paper's efficient default; any K ≥ 1, K may exceed N).
        cfg_scale: classifier-free guidance scale (1.0 = off: the batch is not doubled).
        cfg_schedule: ``"linear"`` (cfg_k = 1 + (cfg − 1)·(N − mask_len)/N, MAR/Muse) or
            ``"constant"``.
        temperature: τ; scales the per-step DDPM noise σ_t (diffusion) or the initial noise
            (flow matching; the official flow sampler ignores τ).
        num_denoise_steps: reverse-process steps of the denoising MLP (100 respaced DDPM steps).
        flow_solver: ``"euler"`` or ``"heun"`` for flow matching.
        flow_time_shift: time-shifting factor s of the flow sampler (1.0 = none); ``None`` uses
            the model's ``LossConfig.flow_time_shift``.
    """

    num_ar_steps: int = 64
    cfg_scale: float = 1.0
    cfg_schedule: Literal["linear", "constant"] = "linear"
    temperature: float = 1.0
    num_denoise_steps: int = 100
    flow_solver: Literal["euler", "heun"] = "euler"
    flow_time_shift: float | None = None

    def __post_init__(self) -> None:
        if self.num_ar_steps < 1:
            raise ValueError(f"num_ar_steps must be >= 1, got {self.num_ar_steps}")
        if self.num_denoise_steps < 1:
            raise ValueError(f"num_denoise_steps must be >= 1, got {self.num_denoise_steps}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be finite, got {self.cfg_scale}")
        if self.flow_time_shift is not None and not (math.isfinite(self.flow_time_shift)
                                                     and self.flow_time_shift > 0):
            raise ValueError(f"flow_time_shift must be finite and > 0, got {self.flow_time_shift}")
        if self.cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {self.cfg_schedule!r}")


# Preset widths/depths: paper / official release (B, L, H), a CPU-test size (tiny) and the CPU
# run size of the CLIs' defaults (small: ≈1.3 M parameters, like the official code's CPU
# reference run; no dropout, 4 buffer tokens, denoising MLP 3×128).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        encoder_dim=64, encoder_depth=2, encoder_heads=4,
        predictor_dim=64, predictor_depth=2, predictor_heads=4,
        buffer_size=4, attn_dropout=0.0, proj_dropout=0.0,
        loss=dict(mlp_depth=2, mlp_width=64),
    ),
    "small": dict(
        encoder_dim=128, encoder_depth=3, encoder_heads=4,
        predictor_dim=128, predictor_depth=3, predictor_heads=4,
        buffer_size=4, attn_dropout=0.0, proj_dropout=0.0,
        loss=dict(mlp_depth=3, mlp_width=128),
    ),
    "B": dict(
        encoder_dim=768, encoder_depth=12, encoder_heads=12,
        predictor_dim=768, predictor_depth=12, predictor_heads=12,
        loss=dict(mlp_depth=6, mlp_width=1024),
    ),
    "L": dict(
        encoder_dim=1024, encoder_depth=24, encoder_heads=16,
        predictor_dim=1024, predictor_depth=24, predictor_heads=16,
        loss=dict(mlp_depth=8, mlp_width=1280),
    ),
    "H": dict(
        encoder_dim=1280, encoder_depth=32, encoder_heads=16,
        predictor_dim=1280, predictor_depth=32, predictor_heads=16,
        loss=dict(mlp_depth=12, mlp_width=1536),
    ),
}


def preset(name: str, **overrides: Any) -> DJEPAConfig:
    """Build a :class:`DJEPAConfig` from a named preset (``tiny``, ``small``, ``B``, ``L``, ``H``).

    ``overrides`` replace top-level fields; ``loss=dict(...)`` (or a :class:`LossConfig`)
    updates the loss fields on top of the preset's.

    Raises:
        KeyError: unknown preset name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    values = dict(PRESETS[name])
    loss_values = dict(values.pop("loss", {}))
    loss_override = overrides.pop("loss", None)
    if isinstance(loss_override, LossConfig):
        loss_override = dataclasses.asdict(loss_override)
    loss_values.update(loss_override or {})
    values.update(overrides)
    return DJEPAConfig(**values, loss=LossConfig(**loss_values))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict of a (nested) config dataclass; tuples become lists."""
    return dataclasses.asdict(cfg)


T = TypeVar("T")


def with_saved_defaults(cls: type, data: Any) -> Any:
    """``data`` (a saved :func:`config_to_dict` of ``cls``) with the fields it predates filled in
    with the values the old runs used (each dataclass' ``SAVED_BEFORE`` map, recursively into
    nested dataclass fields); other keys, and non-dict ``data``, unchanged.

    Example: a ``LossConfig`` dict without ``projector_order`` (written before issue 11) gets
    ``"norm_first"``, the order it was trained with, not the new default ``"official"``.
    """
    if not (isinstance(data, dict) and isinstance(cls, type) and is_dataclass(cls)):
        return data
    out = {**getattr(cls, "SAVED_BEFORE", {}), **data}
    hints = get_type_hints(cls)
    for f in fields(cls):
        typ = hints.get(f.name)
        if f.name in out and isinstance(typ, type) and is_dataclass(typ):
            out[f.name] = with_saved_defaults(typ, out[f.name])
    return out


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Inverse of :func:`config_to_dict` for ``cls`` (nested dataclasses supported).

    A field missing from ``data`` that ``cls`` lists in its ``SAVED_BEFORE`` map (a field added
    after such files were written) takes the value the old runs used, not today's default
    (:func:`with_saved_defaults`); other missing fields take the dataclass default.

    Every value is checked against the field's annotation (JSON has no tuples: lists are
    accepted for tuples; an int for a float; nothing else is coerced — ``"no"`` is not a bool).

    Raises:
        ValueError: ``data`` is not an object, has keys that ``cls`` does not know, or a value of
            the wrong type (the message names the field, e.g. ``model.loss.beta``), or the
            dataclass' own validation fails.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
    data = {**getattr(cls, "SAVED_BEFORE", {}), **data}
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} does not know the field(s) {unknown}")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kwargs[key] = _typed(value, hints.get(key, Any), key)
    try:
        return cls(**kwargs)  # type: ignore[call-arg]
    except TypeError as e:  # e.g. a missing required field
        raise ValueError(f"{cls.__name__}: {e}") from None


def _typed(value: Any, typ: Any, where: str) -> Any:
    """``value`` (parsed JSON) as an instance of annotation ``typ``, or ValueError naming
    ``where``. Supports bool, int, float, str, None, Literal, unions, tuple[...], list[...],
    dict[...], nested dataclasses and Any."""
    import types
    import typing

    origin, args = typing.get_origin(typ), typing.get_args(typ)

    def bad() -> ValueError:
        return ValueError(f"field {where!r}: expected {getattr(typ, '__name__', None) or typ}, "
                          f"got {value!r} ({type(value).__name__})")

    if typ is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ValueError(f"field {where!r}: expected one of {list(args)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _typed(value, a, where)
            except ValueError:
                pass
        raise bad()
    if typ is type(None):
        if value is None:
            return None
        raise bad()
    if isinstance(typ, type) and is_dataclass(typ):
        if not isinstance(value, dict):
            raise bad()
        try:
            return config_from_dict(typ, value)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg.replace("field '", f"field '{where}.", 1)
                             if msg.startswith("field '") else f"field {where!r}: {msg}") from None
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if typ is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin is tuple or typ is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise bad()
        return tuple(_typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or typ is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_typed(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise bad()
        return value if not args else {k: _typed(v, args[1], f"{where}.{k}") for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelSpec:
    """The model choice a training CLI exposes: a named preset (:data:`PRESETS`) plus the few
    settings users pick per run; the data decide token dim, grid and classes (:meth:`build`).

    Every modality's CLI nests this (flags ``--preset``, ``--loss``, ``--beta-schedule``,
    ``--prediction-loss-weight``, ``--pos-embed``); defaults are the core's own
    (:class:`LossConfig`, :class:`DJEPAConfig`), a modality only changes ``preset``.
    """

    preset: Literal["tiny", "small", "B", "L", "H"] = "B"
    """Model size: tiny (CPU tests), small (CPU runs), or the paper's B / L / H."""
    loss: Literal["diffusion", "flow"] = LossConfig.kind
    """Per-token loss: diffusion (Eq. 4) or flow matching (Eq. 7)."""
    beta_schedule: Literal["linear", "cosine"] = LossConfig.beta_schedule
    """Diffusion β schedule: linear (paper App. B) or cosine (MAR code)."""
    prediction_loss_weight: float = LossConfig.prediction_weight
    """Weight of the JEPA prediction loss L_p; 0 = the MAR baseline (Table 6)."""
    pos_embed: Literal["learned", "rope"] = DJEPAConfig.pos_embed
    """Positions: learned tables (official code) or axial RoPE."""

    def build(self, *, token_dim: int, grid: tuple[int, ...], num_classes: int,
              **overrides: Any) -> DJEPAConfig:
        """The :class:`DJEPAConfig` of this preset and choices for the data's token dim, grid
        and number of classes (``overrides`` as in :func:`preset`).

        Raises:
            KeyError: unknown preset. ValueError: an invalid combination (the config's checks).
        """
        loss = dict(kind=self.loss, beta_schedule=self.beta_schedule,
                    prediction_weight=self.prediction_loss_weight)
        return preset(self.preset, token_dim=token_dim, grid=tuple(grid), num_classes=num_classes,
                      pos_embed=self.pos_embed, loss=loss, **overrides)
