"""The text tokenizer of the Transfusion-style text+image model (paper App. G.4): SentencePiece.

Trained by ``mm-train-tokenizer`` (or by ``mm-train`` itself when no ``--tokenizer`` is given)
on the shapes set's training captions plus the chat phrasings of :mod:`djepa.multimodal.mm_sequence`
(BPE, byte fallback on: any UTF-8 text encodes, unseen characters as byte pieces; case folded by
the ``nmt_nfkc_cf`` normaliser, so "Draw a RED circle" reads as the captions do).

Ids (fixed): ``0 <pad>``, ``1 <unk>``, ``2 <bos>``, ``3 <eos>``, then the *control symbols*
:data:`CONTROL_TOKENS` (``<|visual_start|>``, ``<|visual_end|>``, ``<|user|>``,
``<|assistant|>``), declared to SentencePiece as ``control_symbols``: SentencePiece never
produces a control id from text, so a user message that contains the literal string
``<|visual_start|>`` is tokenized as ordinary characters and cannot open an image span
(MODALITIES.md, text+image: the control tokens must not be reachable from raw user text).

Storage: the trained model is SentencePiece's serialized ``ModelProto`` (a protobuf — data, not
a pickle). The model keeps these bytes as a ``uint8`` buffer, so every checkpoint and the export
carry the tokenizer that produced their ids (:class:`djepa.multimodal.mm_model.MMModel`);
``mm-train-tokenizer`` writes them to ``OUT/tokenizer.model`` with ``OUT/tokenizer.json``
(sha256, vocabulary size, control ids).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONTROL_TOKENS", "VISUAL_START", "VISUAL_END", "USER", "ASSISTANT", "PAD_ID", "UNK_ID",
           "BOS_ID", "EOS_ID", "MMTokenizer", "train_sentencepiece", "default_corpus",
           "TokenizerTrainConfig", "run", "main", "MODEL_FILE"]

VISUAL_START = "<|visual_start|>"
VISUAL_END = "<|visual_end|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
#: Control symbols, ids 4, 5, 6, 7 in this order.
CONTROL_TOKENS: tuple[str, ...] = (VISUAL_START, VISUAL_END, USER, ASSISTANT)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_FILE = "tokenizer.model"


class MMTokenizer:
    """A SentencePiece processor built from serialized model bytes (never from a pickle).

    Args:
        model_proto: the bytes of a SentencePiece ``ModelProto`` (:func:`train_sentencepiece`).

    Attributes:
        model_proto: the bytes; sha256: their hex digest; vocab_size: pieces (ids ``0 … V−1``);
        visual_start, visual_end, user, assistant: the control ids.

    Raises:
        ValueError: bytes SentencePiece cannot parse, or a model without the control symbols at
            their fixed ids (another tokenizer).
    """

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sha256 = hashlib.sha256(self.model_proto).hexdigest()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(self.model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError / OSError variants
            raise ValueError(f"not a SentencePiece model ({e})") from None
        self.sp = sp
        self.vocab_size = int(sp.GetPieceSize())
        ids = [sp.PieceToId(t) for t in CONTROL_TOKENS]
        if ids != [4, 5, 6, 7] or not all(sp.IsControl(i) for i in ids) \
                or (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError("this SentencePiece model lacks the mm control symbols at ids 4-7 "
                             "(train it with mm-train-tokenizer)")
        self.visual_start, self.visual_end, self.user, self.assistant = ids
        self.bos, self.eos, self.pad = BOS_ID, EOS_ID, PAD_ID

    @classmethod
    def from_file(cls, path: str | Path) -> "MMTokenizer":
        """Read ``path`` (a ``tokenizer.model`` file or a folder holding one).

        Raises:
            FileNotFoundError: no such file. ValueError: not a valid mm tokenizer (names the file).
        """
        p = Path(path)
        if p.is_dir():
            p = p / MODEL_FILE
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer {p} not found (write one with mm-train-tokenizer)")
        try:
            return cls(p.read_bytes())
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    def encode(self, text: str) -> list[int]:
        """Ordinary text → ids (no bos/eos; never a control id, whatever the text holds)."""
        return list(self.sp.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text; control, bos/eos and pad ids are dropped."""
        keep = [int(i) for i in ids if int(i) >= len(CONTROL_TOKENS) + 4 or int(i) == UNK_ID]
        return self.sp.DecodeIds(keep)

    def piece(self, i: int) -> str:
        return self.sp.IdToPiece(int(i))

    def is_control(self, i: int) -> bool:
        """True for pad/bos/eos and the four control symbols."""
        return int(i) < 8 and int(i) != UNK_ID

    def describe(self) -> dict:
        """JSON record: kind, vocab size, sha256, control ids."""
        return dict(kind="sentencepiece", vocab_size=self.vocab_size, sha256=self.sha256,
                    control=dict(zip(CONTROL_TOKENS, (4, 5, 6, 7))), bos=BOS_ID, eos=EOS_ID, pad=PAD_ID)


def default_corpus() -> list[str]:
    """The training lines: every phrasing of every *training* prompt of the shapes set (the
    evaluation split's held-out captions are not read) and the chat phrasings
    (:data:`djepa.multimodal.mm_sequence.DRAW_TEMPLATES` / ``ASK_TEMPLATES``)."""
    from djepa.multimodal import shapes
    from djepa.multimodal.mm_sequence import ASK_TEMPLATES, DRAW_TEMPLATES

    lines: list[str] = []
    for p in shapes.train_prompts():
        lines.extend(shapes.captions(p))
    lines.extend(t.format(caption="").strip() for t in DRAW_TEMPLATES if t.strip() != "{caption}")
    lines.extend(ASK_TEMPLATES)
    return lines


def train_sentencepiece(lines: Sequence[str], vocab_size: int = 384, model_type: str = "bpe") -> bytes:
    """Train a SentencePiece model on ``lines``; return its serialized ``ModelProto``.

    Byte fallback on (the 256 byte pieces are part of ``vocab_size``), control symbols
    :data:`CONTROL_TOKENS` at ids 4–7, ``nmt_nfkc_cf`` normalisation (case folding), one
    thread (deterministic). ``hard_vocab_limit`` off: a small corpus yields fewer pieces
    rather than an error.

    Raises:
        ValueError: no lines, or ``vocab_size`` too small for the byte pieces and controls.
    """
    import sentencepiece as spm

    lines = [str(s) for s in lines if str(s).strip()]
    if not lines:
        raise ValueError("the tokenizer corpus is empty")
    if vocab_size < 256 + 8 + 8:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte fallback needs 256 pieces + 8 "
                         "special ids + some text pieces (use >= 272)")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=int(vocab_size),
        model_type=model_type, byte_fallback=True, character_coverage=1.0,
        control_symbols=list(CONTROL_TOKENS), pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        normalization_rule_name="nmt_nfkc_cf", hard_vocab_limit=False, num_threads=1,
        minloglevel=2)
    return buf.getvalue()


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Train the SentencePiece tokenizer of the text+image model on the shapes captions."""

    output_dir: str = "runs/mm-tokenizer"
    """Where tokenizer.model (SentencePiece ModelProto bytes) and tokenizer.json go."""
    vocab_size: int = 384
    """Pieces including the 256 byte-fallback pieces and the 8 special ids."""
    model_type: str = "bpe"
    """SentencePiece model type (bpe or unigram)."""
    corpus: str | None = None
    """A UTF-8 text file, one line per sentence (default: the shapes training captions + chat phrasings)."""


def run(cfg: TokenizerTrainConfig) -> int:
    """Train and write ``OUT/tokenizer.model`` + ``OUT/tokenizer.json`` (atomically)."""
    from djepa.core.cli import UserError
    from djepa.core.pretrained import atomic_write_bytes, atomic_write_text

    if cfg.model_type not in ("bpe", "unigram"):
        raise UserError(f"--model-type must be bpe or unigram, got {cfg.model_type!r}")
    if cfg.corpus:
        p = Path(cfg.corpus)
        if not p.is_file():
            raise UserError(f"corpus file {p} not found")
        lines = p.read_text(encoding="utf-8").splitlines()
    else:
        lines = default_corpus()
    proto = train_sentencepiece(lines, cfg.vocab_size, cfg.model_type)
    tok = MMTokenizer(proto)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MODEL_FILE, proto)
    atomic_write_text(out / "tokenizer.json", json.dumps(tok.describe(), indent=2) + "\n")
    print(f"mm-train-tokenizer: {tok.vocab_size} pieces from {len(lines)} lines -> {out / MODEL_FILE}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mm-train-tokenizer``."""
    from djepa.core.cli import parse, run_main

    return run_main("mm-train-tokenizer", lambda: run(parse(TokenizerTrainConfig, argv, prog="mm-train-tokenizer")))


if __name__ == "__main__":
    sys.exit(main())
