"""Conditions (DESIGN.md §7, issue 11): none, class ids, and a sequence through joint attention.

A condition module turns the user's condition input into a :class:`ConditionState`, what the
context encoder φ and the feature predictor γ receive:

* ``vector [B, E]`` — added to every buffer token (class conditioning, the official code);
* ``sequence [B, L, D_c]`` with ``sequence_padding [B, L] bool, True = padding`` — a second
  stream attended through SD3-style joint (MM-DiT) blocks (:class:`djepa.core.blocks.JointBlock`:
  separate weights per stream, one joint attention, RoPE on both streams).

Every kind has a **null** (the unconditional input of classifier-free guidance) and a
training-time **dropout** that replaces a row's whole condition by the null with probability
``drop_prob``, drawn from the generator the rest of the training step uses (torch's global RNG
when it is None, as the engine checkpoints it).

Kinds: :class:`NoCondition` (``None``), :class:`ClassCondition` (``labels [B] int64``; buffer
vector + learned null class, today's parameters and names), :class:`SequenceCondition`
(:class:`SequenceInput`; learned one-token null sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["ConditionState", "SequenceInput", "NoCondition", "ClassCondition", "SequenceCondition",
           "build_condition"]


def _drop_rows(batch_size: int, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``[B]`` bool, True with probability p (the row's condition is dropped to the null)."""
    if generator is None:
        u = torch.rand(batch_size, device=device)
    else:
        u = torch.rand(batch_size, generator=generator, device=generator.device).to(device)
    return u < p


@dataclass(frozen=True)
class SequenceInput:
    """A condition sequence: ``values [B, L, D_c]`` float and ``padding [B, L] bool, True =
    padding`` (None = no padding).

    ``aligned [B, N, D_a]`` float (optional, needs ``DJEPAConfig.aligned_dim = D_a``): a
    token-aligned condition, one vector per token of the batch (e.g. length-regulated phoneme
    features for mel-frame tokens); the model adds a learned projection of it to every token's
    embedding in φ and in γ (masked positions included). Its null is zeros (condition dropout
    and CFG's unconditional half).

    ``null [B] bool`` (optional, True = this row is the null condition): the condition module
    replaces the row by its learned null sequence, as condition dropout does; the row's
    ``values`` / ``padding`` are ignored. This is how a caller mixes unconditional rows (an
    empty prompt) with real ones when the values are projected first
    (``DJEPAConfig.condition_input_dim``: the null lives in the projected space, so it cannot
    be handed in as values)."""

    values: Tensor
    padding: Tensor | None = None
    aligned: Tensor | None = None
    null: Tensor | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 3:
            raise ValueError(f"sequence values must be [B, L, D_c], got {list(self.values.shape)}")
        if self.padding is not None and (self.padding.dtype != torch.bool
                                         or tuple(self.padding.shape) != tuple(self.values.shape[:2])):
            raise ValueError(f"sequence padding must be bool {list(self.values.shape[:2])}, "
                             f"got {self.padding.dtype} {list(self.padding.shape)}")
        if self.aligned is not None and (self.aligned.ndim != 3 or self.aligned.shape[0] != self.values.shape[0]):
            raise ValueError(f"aligned condition must be [{self.values.shape[0]}, N, D_a], "
                             f"got {list(self.aligned.shape)}")
        if self.null is not None and (self.null.dtype != torch.bool
                                      or tuple(self.null.shape) != (self.values.shape[0],)):
            raise ValueError(f"sequence null flags must be bool [{self.values.shape[0]}], "
                             f"got {self.null.dtype} {list(self.null.shape)}")


@dataclass(frozen=True)
class ConditionState:
    """What the backbone receives (see the module docstring). Fields are None when unused."""

    vector: Tensor | None = None
    sequence: Tensor | None = None
    sequence_padding: Tensor | None = None
    aligned: Tensor | None = None  # [B, N, D_a] token-aligned condition (None = zeros)

    @staticmethod
    def of(cond: "ConditionState | Tensor | None") -> "ConditionState":
        """A state from a state, a bare ``[B, E]`` buffer vector, or None (nothing)."""
        if cond is None:
            return ConditionState()
        return cond if isinstance(cond, ConditionState) else ConditionState(vector=cond)

    def cat(self, other: "ConditionState") -> "ConditionState":
        """Rows of ``self`` then of ``other`` (the CFG doubled batch); sequences of different
        length are padded to the longer (padding = True)."""
        vec = None if self.vector is None else torch.cat([self.vector, other.vector])
        if self.sequence is None:
            return ConditionState(vec)
        a, pa = _padded(self.sequence, self.sequence_padding)
        b, pb = _padded(other.sequence, other.sequence_padding)
        L = max(a.shape[1], b.shape[1])
        a, pa = _pad_to(a, pa, L)
        b, pb = _pad_to(b, pb, L)
        aligned = None
        if self.aligned is not None or other.aligned is not None:  # a missing half is zeros (the null)
            ref = self.aligned if self.aligned is not None else other.aligned
            fill = lambda t, n: ref.new_zeros(n, *ref.shape[1:]) if t is None else t.to(ref.dtype)  # noqa: E731
            aligned = torch.cat([fill(self.aligned, a.shape[0]), fill(other.aligned, b.shape[0])])
        return ConditionState(vec, torch.cat([a, b.to(a.dtype)]), torch.cat([pa, pb]), aligned)


def _padded(seq: Tensor, pad: Tensor | None) -> tuple[Tensor, Tensor]:
    return seq, (torch.zeros(seq.shape[:2], dtype=torch.bool, device=seq.device) if pad is None else pad)


def _pad_to(seq: Tensor, pad: Tensor, length: int) -> tuple[Tensor, Tensor]:
    extra = length - seq.shape[1]
    if extra == 0:
        return seq, pad
    seq = torch.cat([seq, seq.new_zeros(seq.shape[0], extra, seq.shape[2])], dim=1)
    return seq, torch.cat([pad, pad.new_ones(pad.shape[0], extra)], dim=1)


class NoCondition(nn.Module):
    """Unconditional model: no parameters; the state is empty, the null is the same."""

    kind = "none"
    drop_prob = 0.0

    def state(self, cond: None, batch_size: int, *, drop: bool = False,
              generator: torch.Generator | None = None) -> ConditionState:
        if cond is not None:
            raise ValueError("this model is unconditional (condition='none'); pass no condition")
        return ConditionState()

    def null_state(self, batch_size: int) -> ConditionState:
        return ConditionState()


class ClassCondition(nn.Module):
    """Class embedding with label dropout to a learned null class (the official "fake latent").

    Args:
        num_classes: number of real classes C; valid labels are 0 … C−1.
        dim: embedding width (the context encoder's width E).
        label_drop_prob: probability that a training label is replaced by the null class (0.1).

    Parameters (names kept from the first release): ``class_embed`` (Embedding C×E),
    ``null_embed`` ``[1, E]``.
    """

    kind = "class"

    def __init__(self, num_classes: int, dim: int, label_drop_prob: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label_drop_prob = label_drop_prob
        self.class_embed = nn.Embedding(num_classes, dim)
        self.null_embed = nn.Parameter(torch.zeros(1, dim))

    @property
    def drop_prob(self) -> float:
        return self.label_drop_prob

    def check_labels(self, labels: Tensor) -> None:
        """Raise ``ValueError`` naming the offending id when a label is outside [0, C)."""
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"class labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}")
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
                drop_labels: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Embed ``labels: [B] int64`` → ``[B, E]``; ``None`` gives the null class for every row.

        With ``drop_labels`` each label is replaced by the null class with probability
        ``label_drop_prob``, drawn from ``generator`` (torch's global RNG when None).
        """
        if labels is None:
            if batch_size is None:
                raise ValueError("batch_size is required when labels is None")
            return self.null(batch_size)
        self.check_labels(labels)
        emb = self.class_embed(labels)
        if drop_labels and self.label_drop_prob > 0:
            drop = _drop_rows(labels.shape[0], self.label_drop_prob, labels.device, generator)
            emb = torch.where(drop.unsqueeze(-1), self.null_embed.to(emb.dtype), emb)
        return emb

    def state(self, labels: Tensor | None, batch_size: int, *, drop: bool = False,
              generator: torch.Generator | None = None) -> ConditionState:
        """``ConditionState(vector=[B, E])``."""
        return ConditionState(vector=self(labels, batch_size, drop_labels=drop, generator=generator))

    def null_state(self, batch_size: int) -> ConditionState:
        return ConditionState(vector=self.null(batch_size))


class SequenceCondition(nn.Module):
    """A condition sequence ``[B, L, D_c]`` (phonemes, text-encoder states) for joint blocks.

    Args:
        dim: D_c, channels of the sequence (the joint blocks' context width).
        drop_prob: probability that a training row's whole sequence is replaced by the null.
        input_dim: D_in of the values handed in; when non-zero, ``input_proj = nn.Linear(D_in,
            D_c)`` maps them to D_c first (SD3's ``context_embedder``). 0 = values are D_c wide.

    Parameters: ``null_embed [1, 1, D_c]`` — the null sequence is this one learned token (CFG's
    unconditional input, and what dropped rows see), in the projected D_c space.
    """

    kind = "sequence"

    def __init__(self, dim: int, drop_prob: float = 0.1, input_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.drop_prob = drop_prob
        self.input_dim = input_dim or dim
        self.null_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.input_proj = nn.Linear(input_dim, dim) if input_dim else None

    def null_state(self, batch_size: int) -> ConditionState:
        """The one-token null sequence per row: ``[B, 1, D_c]``, no padding."""
        return ConditionState(sequence=self.null_embed.expand(batch_size, -1, -1), sequence_padding=None)

    def state(self, cond: SequenceInput | None, batch_size: int, *, drop: bool = False,
              generator: torch.Generator | None = None) -> ConditionState:
        """``ConditionState(sequence, sequence_padding)``; ``None`` = the null for every row.

        Raises:
            ValueError: not a :class:`SequenceInput`, wrong width or batch size.
        """
        if cond is None:
            return self.null_state(batch_size)
        if not isinstance(cond, SequenceInput):
            raise ValueError(f"a sequence-conditioned model takes a SequenceInput, got {type(cond).__name__}")
        seq, pad, aligned = cond.values, cond.padding, cond.aligned
        if seq.shape[0] != batch_size or seq.shape[2] != self.input_dim:
            raise ValueError(f"condition sequence must be [{batch_size}, L, {self.input_dim}], got {list(seq.shape)}")
        seq = seq.to(self.null_embed.dtype)
        if self.input_proj is not None:
            seq = self.input_proj(seq)  # [B, L, D_in] -> [B, L, D_c]
        pad = (torch.zeros(seq.shape[:2], dtype=torch.bool, device=seq.device) if pad is None
               else pad.to(seq.device))
        dropped = None
        if drop and self.drop_prob > 0 and seq.shape[1] > 0:
            dropped = _drop_rows(batch_size, self.drop_prob, seq.device, generator)
        if cond.null is not None:  # rows flagged null by the caller (an empty prompt)
            flagged = cond.null.to(seq.device)
            dropped = flagged if dropped is None else dropped | flagged
        if dropped is not None and seq.shape[1] > 0:
            null_seq, null_pad = _pad_to(self.null_embed.expand(batch_size, -1, -1).to(seq.dtype),
                                         torch.zeros(batch_size, 1, dtype=torch.bool, device=seq.device),
                                         seq.shape[1])
            seq = torch.where(dropped[:, None, None], null_seq, seq)
            pad = torch.where(dropped[:, None], null_pad, pad)
            if aligned is not None:  # the same rows lose their aligned condition (null = zeros)
                aligned = aligned.masked_fill(dropped.to(aligned.device)[:, None, None], 0.0)
        return ConditionState(sequence=seq, sequence_padding=pad, aligned=aligned)


def build_condition(kind: str, *, num_classes: int, encoder_dim: int, condition_dim: int,
                    drop_prob: float, condition_input_dim: int = 0) -> nn.Module:
    """The condition module of ``DJEPAConfig.condition`` (``"class"``, ``"none"``, ``"sequence"``).

    Raises:
        ValueError: unknown kind.
    """
    if kind == "class":
        return ClassCondition(num_classes, encoder_dim, drop_prob)
    if kind == "none":
        return NoCondition()
    if kind == "sequence":
        return SequenceCondition(condition_dim, drop_prob, input_dim=condition_input_dim)
    raise ValueError(f"unknown condition kind {kind!r}; choose 'class', 'none' or 'sequence'")
