"""One sequence per example and its one attention mask (Transfusion layout; paper App. G.4).

Layout (ids from :mod:`djepa.multimodal.mm_tokenizer`)::

    <bos> <|user|> draw a red circle <|assistant|> <|visual_start|> IMG×N <|visual_end|> <eos>   (caption → image)
    <bos> <|user|> <|visual_start|> IMG×N <|visual_end|> what is in this picture? <|assistant|> a red circle <eos>
    <bos> a red circle <eos>                                                                      (caption alone)
    <bos> <|visual_start|> IMG×N <|visual_end|> <eos>       (caption → image with the text dropped: CFG's null)

``IMG×N`` are the image's N continuous tokens (pixel patches, row-major over the fixed grid
``(H, W)``) between the two control tokens; a chat appends turns (``… <eos> <|user|> …``).

A packed batch (:class:`MMBatch`) holds, per row and position: the text id (``PAD_ID`` at image
and padding positions), the image token (zeros elsewhere), ``is_image``, ``maskable`` (True only
on the image tokens of a span the model is taught to *generate*: the caption → image span; an
image given to be described is never masked), ``padding`` (True = padding, at the end of a row),
the next-token target of every text position (``-100`` = none: image positions, the position
before an image token, padding), the span index (``segment``) and the positions for RoPE.

Positions (3 axes, for :class:`djepa.core.rope.AxialRoPE` with a (t, h, w) channel split): a
running index ``s``; a text token gets ``(s, s, s)`` — 1-D RoPE, the same angle on every axis —
and ``s += 1``; an image span starting at ``s`` gives token ``(r, c)`` the position
``(s, s + r, s + c)`` — 2-D RoPE inside the span — and then ``s += max(H, W)``
(Qwen2-VL's multimodal RoPE convention). Relative angles inside a span depend on ``(Δr, Δc)``
only; text-to-text on the index difference only.

Mask (:func:`attention_mask`): causal over the sequence and full (bidirectional) inside each
image span — :func:`djepa.core.attention.block_causal_mask` over segments (each image span one
bidirectional segment, each run of text one causal segment) — and no padding key.
``True = may attend`` (the core's ``attn_mask`` polarity), ``[B, 1, L, L]``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

from djepa.core.attention import block_causal_mask
from djepa.multimodal.mm_tokenizer import BOS_ID, EOS_ID, PAD_ID, MMTokenizer

__all__ = ["Text", "Image", "Segment", "MMBatch", "pack", "attention_mask", "positions_of",
           "IGNORE", "DRAW_TEMPLATES", "ASK_TEMPLATES", "t2i_example", "i2t_example", "text_example",
           "null_image_prefix", "ExampleKind"]

IGNORE = -100
#: User phrasings of a caption → image request (``{caption}`` is the shapes caption).
DRAW_TEMPLATES: tuple[str, ...] = ("draw {caption}", "{caption}", "show me {caption}", "generate {caption}",
                                   "make an image of {caption}")
#: User questions of an image → caption request.
ASK_TEMPLATES: tuple[str, ...] = ("what is in this picture?", "describe the image.", "what do you see?",
                                  "caption this image.")

ExampleKind = Literal["t2i", "i2t", "text"]


@dataclass(frozen=True)
class Text:
    """Text ids (controls included) of one segment."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class Image:
    """One image span: ``tokens [N, D]`` float (row-major over ``grid``); ``generate`` = the
    span is a target (its tokens maskable); ``False`` = given (visible context)."""

    tokens: Tensor
    grid: tuple[int, int]
    generate: bool = False


Segment = Text | Image


@dataclass
class MMBatch:
    """A packed batch (module docstring). ``B`` rows, ``L`` positions, ``D`` token channels.

    Attributes:
        ids: ``[B, L]`` int64 (``PAD_ID`` at image and padding positions).
        image: ``[B, L, D]`` float32 (zeros at text / padding positions).
        is_image: ``[B, L]`` bool. maskable: ``[B, L]`` bool (generated image tokens only).
        padding: ``[B, L]`` bool, True = padding. targets: ``[B, L]`` int64 next-token ids,
            ``IGNORE`` where no text loss counts. segment: ``[B, L]`` int64, non-decreasing.
        positions: ``[B, L, 3]`` int64 RoPE positions.
    """

    ids: Tensor
    image: Tensor
    is_image: Tensor
    maskable: Tensor
    padding: Tensor
    targets: Tensor
    segment: Tensor
    positions: Tensor

    def to(self, device: torch.device | str) -> "MMBatch":
        return MMBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ids.shape)  # type: ignore[return-value]

    def rows(self, idx: list[int] | Tensor) -> "MMBatch":
        """The rows ``idx`` (same padding length)."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return MMBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def _row(segments: list[Segment], token_dim: int, start: int = 0):
    ids, img, is_img, maskable, seg, pos = [], [], [], [], [], []
    s, segment, prev_kind = start, -1, None
    for part in segments:
        if isinstance(part, Text):
            if prev_kind != "text":
                segment += 1
            for t in part.ids:
                ids.append(int(t))
                img.append(torch.zeros(token_dim))
                is_img.append(False)
                maskable.append(False)
                seg.append(segment)
                pos.append((s, s, s))
                s += 1
            if part.ids:
                prev_kind = "text"
        else:
            h, w = part.grid
            if part.tokens.shape != (h * w, token_dim):
                raise ValueError(f"image span must be [{h * w}, {token_dim}] for grid {part.grid}, got "
                                 f"{list(part.tokens.shape)}")
            segment += 1
            for k in range(h * w):
                r, c = divmod(k, w)
                ids.append(PAD_ID)
                img.append(part.tokens[k].float())
                is_img.append(True)
                maskable.append(bool(part.generate))
                seg.append(segment)
                pos.append((s, s + r, s + c))
            s += max(h, w)
            prev_kind = "image"
    return ids, img, is_img, maskable, seg, pos


def pack(rows: list[list[Segment]], token_dim: int, length: int | None = None, *, left: bool = False) -> MMBatch:
    """Pack example rows (lists of :class:`Text` / :class:`Image`) into one right-padded
    :class:`MMBatch` of length ``max(len(row))`` (or ``length``); ``left=True`` pads on the left
    instead (inference: every row's next token then lands in the same column; the padding is
    segment 0 and position 0, never a key).

    Targets: position ``i`` gets ``ids[i+1]`` when ``i`` and ``i+1`` are both text (a control
    token such as ``<|visual_start|>`` is a text-side id and is predicted; the image tokens and
    the ``<|visual_end|>`` that closes a span — forced, never sampled — are not).

    Raises:
        ValueError: an empty row, an image span of the wrong shape, or ``length`` too short.
    """
    built = [_row(r, token_dim) for r in rows]
    if any(not b[0] for b in built):
        raise ValueError("every row needs at least one token")
    L = max(len(b[0]) for b in built) if length is None else int(length)
    if any(len(b[0]) > L for b in built):
        raise ValueError(f"a row is longer than the packing length {L}")
    B = len(rows)
    ids = torch.full((B, L), PAD_ID, dtype=torch.long)
    image = torch.zeros(B, L, token_dim)
    is_image = torch.zeros(B, L, dtype=torch.bool)
    maskable = torch.zeros(B, L, dtype=torch.bool)
    padding = torch.ones(B, L, dtype=torch.bool)
    segment = torch.zeros(B, L, dtype=torch.long)
    positions = torch.zeros(B, L, 3, dtype=torch.long)
    targets = torch.full((B, L), IGNORE, dtype=torch.long)
    for b, (i_, im, ii, mk, sg, ps) in enumerate(built):
        n = len(i_)
        if left:
            r = slice(L - n, L)
            segment[b, r] = torch.tensor(sg) + 1  # padding: segment 0 (never a key)
        else:
            r = slice(0, n)
            segment[b, :n] = torch.tensor(sg)
            segment[b, n:] = sg[-1] + 1  # padding: one trailing segment (never a key)
        ids[b, r] = torch.tensor(i_)
        image[b, r] = torch.stack(im)
        is_image[b, r] = torch.tensor(ii)
        maskable[b, r] = torch.tensor(mk)
        padding[b, r] = False
        positions[b, r] = torch.tensor(ps)
        if not left:
            positions[b, n:] = positions[b, n - 1].max() + 1
        text = ~torch.tensor(ii, dtype=torch.bool)
        row_ids = torch.tensor(i_)
        tgt = torch.full((n,), IGNORE, dtype=torch.long)
        tgt[:-1] = torch.where(text[:-1] & text[1:], row_ids[1:], torch.tensor(IGNORE))
        # the <|visual_end|> after a span is forced: the last image token has no target anyway
        targets[b, r] = tgt
    return MMBatch(ids, image, is_image, maskable, padding, targets, segment, positions)


def attention_mask(batch: MMBatch) -> Tensor:
    """``[B, 1, L, L]`` bool, True = may attend: block-causal over segments (text causal, image
    spans bidirectional; :func:`djepa.core.attention.block_causal_mask`), padding never a key.
    A padding query row still sees the real keys before it (finite outputs, ignored)."""
    m = block_causal_mask(batch.segment, ~batch.is_image)
    return m & ~batch.padding[:, None, None, :]


def positions_of(batch: MMBatch) -> Tensor:
    """The RoPE positions ``[B, L, 3]`` (as packed)."""
    return batch.positions


# ------------------------------------------------------------------ training examples
def t2i_example(tok: MMTokenizer, caption: str, tokens: Tensor, grid: tuple[int, int], *,
                template: str = "draw {caption}", drop_text: bool = False) -> list[Segment]:
    """Caption → image: the image span is generated (maskable). ``drop_text``: the null prompt
    ``<bos> <|visual_start|>`` (CFG's unconditional input, the text dropped)."""
    tail = [Image(tokens, grid, generate=True), Text((tok.visual_end, EOS_ID))]
    if drop_text:
        return [Text(null_image_prefix(tok))] + tail
    ids = (BOS_ID, tok.user, *tok.encode(template.format(caption=caption)), tok.assistant, tok.visual_start)
    return [Text(ids)] + tail


def null_image_prefix(tok: MMTokenizer) -> tuple[int, ...]:
    """The prefix of an unconditional image: ``<bos> <|visual_start|>``."""
    return (BOS_ID, tok.visual_start)


def i2t_example(tok: MMTokenizer, caption: str, tokens: Tensor, grid: tuple[int, int], *,
                question: str = "what is in this picture?") -> list[Segment]:
    """Image → caption: the image is given (visible), the caption is the answer."""
    return [Text((BOS_ID, tok.user, tok.visual_start)), Image(tokens, grid, generate=False),
            Text((tok.visual_end, *tok.encode(question), tok.assistant, *tok.encode(caption), EOS_ID))]


def text_example(tok: MMTokenizer, caption: str) -> list[Segment]:
    """A caption alone: ``<bos> caption <eos>`` (language modelling)."""
    return [Text((BOS_ID, *tok.encode(caption), EOS_ID))]


@dataclass(frozen=True)
class ExampleMix:
    """Probabilities of the training example kinds and of dropping the text of a caption →
    image example (CFG)."""

    t2i: float = 0.5
    i2t: float = 0.3
    text: float = 0.2
    text_drop_prob: float = 0.1

    def __post_init__(self) -> None:
        if min(self.t2i, self.i2t, self.text) < 0 or self.t2i + self.i2t + self.text <= 0:
            raise ValueError("example mix probabilities must be >= 0 and not all 0")
        if not 0.0 <= self.text_drop_prob <= 1.0:
            raise ValueError(f"text_drop_prob must be in [0, 1], got {self.text_drop_prob}")

    def draw(self, rng: random.Random) -> tuple[ExampleKind, bool, int]:
        """(kind, drop the text, template index) from ``rng``."""
        kind = rng.choices(("t2i", "i2t", "text"), weights=(self.t2i, self.i2t, self.text))[0]
        drop = kind == "t2i" and rng.random() < self.text_drop_prob
        return kind, drop, rng.randrange(1 << 30)  # type: ignore[return-value]
