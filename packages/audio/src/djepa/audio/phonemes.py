"""Phonemes offline from espeak-ng (paper App. G.1 used a G2P tool; we use espeak-ng through
``phonemizer`` with the library and data shipped by the PyPI package ``espeakng-loader``, so
``uv sync`` is all a machine needs).

A phoneme string (IPA with stress marks, word spaces and punctuation kept) is split into one
symbol per Unicode character. The :class:`PhonemeVocab` is built from the training text and
saved with the model; at inference a symbol outside it is **reported** (one warning naming the
symbols and the text) and left out — never silently.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["phonemize", "PhonemeVocab", "PAD"]

PAD = "<pad>"
_lock = threading.Lock()
_backend = None


def _get_backend():
    global _backend
    with _lock:
        if _backend is None:
            import espeakng_loader
            from phonemizer.backend import EspeakBackend
            from phonemizer.backend.espeak.wrapper import EspeakWrapper

            EspeakWrapper.set_library(espeakng_loader.get_library_path())
            EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
            _backend = EspeakBackend("en-us", preserve_punctuation=True, with_stress=True,
                                     language_switch="remove-flags")
        return _backend


def phonemize(texts: Sequence[str]) -> list[str]:
    """IPA strings (en-us, stress marks, punctuation kept) for normalised English ``texts``."""
    if not texts:
        return []
    out = _get_backend().phonemize(list(texts), strip=True, njobs=1)
    return [" ".join(p.split()) for p in out]


@dataclass(frozen=True)
class PhonemeVocab:
    """Symbols → ids; id 0 is padding. ``symbols`` excludes the pad symbol."""

    symbols: tuple[str, ...]

    @classmethod
    def build(cls, phoneme_strings: Iterable[str]) -> "PhonemeVocab":
        seen = sorted({ch for s in phoneme_strings for ch in s})
        return cls(tuple(seen))

    @property
    def size(self) -> int:
        """Number of ids, padding included."""
        return len(self.symbols) + 1

    def encode(self, phonemes: str, *, what: str = "") -> list[int]:
        """Ids of the symbols of ``phonemes``; unknown symbols are warned about (naming them and
        ``what``) and left out."""
        table = {s: i + 1 for i, s in enumerate(self.symbols)}
        ids, unknown = [], []
        for ch in phonemes:
            if ch in table:
                ids.append(table[ch])
            else:
                unknown.append(ch)
        if unknown:
            warnings.warn(f"phoneme symbol(s) {sorted(set(unknown))!r} not in the model's vocabulary "
                          f"({len(self.symbols)} symbols) were left out{': ' + what[:60] if what else ''}",
                          stacklevel=2)
        return ids
