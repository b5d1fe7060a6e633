"""The embedded default corpus: single-speaker speech synthesised at first run (issue 14).

**A demonstration corpus, not LJSpeech.** The package carries 2,550 public-domain LJSpeech
transcripts (``data/sentences.txt``, see ``data/SOURCE.txt``); at first run each one is spoken
by the espeak-ng library that the PyPI package ``espeakng-loader`` ships (voice ``en-us``,
22,050 Hz, 16-bit), written as an LJSpeech folder (``metadata.csv`` + ``wavs/``) under the
cache directory, so ``uv run tts-train`` needs no download. espeak-ng is a formant synthesiser:
the speech is robotic but consistent, which a small model can learn on two CPU cores. The real
target is LJSpeech (``tts-train --data-dir LJSpeech-1.1``). The 50 IDs of
:func:`held_out_ids` are written to ``heldout.txt`` and never trained on (``tts-eval --ids``).

Synthesis calls the C API (``espeak_Initialize`` with synchronous retrieval,
``espeak_SetSynthCallback``, ``espeak_Synth``) through ctypes; nothing is downloaded or run
from a file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["sentences", "held_out_ids", "EspeakSynth", "build_default_corpus", "default_cache_dir"]

NUM_HELD_OUT = 50


def sentences() -> list[tuple[str, str]]:
    """``(ID, normalised text)`` of the carried transcripts, in ID order."""
    text = resources.files("djepa.audio").joinpath("data/sentences.txt").read_text(encoding="utf-8")
    return [tuple(line.split("|", 1)) for line in text.splitlines() if "|" in line]  # type: ignore[misc]


def held_out_ids() -> list[str]:
    """The 50 evaluation IDs: the smallest ``sha1("heldout:" + ID)``, sorted."""
    ids = [i for i, _ in sentences()]
    return sorted(sorted(ids, key=lambda i: hashlib.sha1(f"heldout:{i}".encode()).hexdigest())[:NUM_HELD_OUT])


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/djepa/audio`` (default ``~/.cache/djepa/audio``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "djepa" / "audio"


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakSynth:
    """espeak-ng speech synthesis through its C API (the library of ``espeakng-loader``).

    ``EspeakSynth()(text) -> int16 samples [S]`` at :attr:`sample_rate` (22,050 Hz).

    Raises:
        RuntimeError: the library cannot be initialised or the voice is missing.
    """

    def __init__(self, voice: str = "en-us", rate_wpm: int = 165) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = Path(espeakng_loader.get_data_path())
        self.lib.espeak_Initialize.restype = ctypes.c_int
        sr = self.lib.espeak_Initialize(2, 0, str(data.parent).encode(), 0)  # AUDIO_OUTPUT_SYNCHRONOUS
        if sr <= 0:
            raise RuntimeError(f"espeak-ng could not be initialised with data at {data}")
        self.sample_rate = int(sr)
        self._chunks: list[np.ndarray] = []

        def cb(wav, n, events):
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._cb = _CALLBACK(cb)  # keep a reference: the library calls it
        self.lib.espeak_SetSynthCallback(self._cb)
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, int(rate_wpm), 0)  # espeakRATE

    def __call__(self, text: str) -> np.ndarray:
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        # espeakCHARS_UTF8 (1) | espeakENDPAUSE (0x1000); POS_CHARACTER (1)
        err = self.lib.espeak_Synth(ctypes.c_char_p(data), ctypes.c_size_t(len(data)), 0, 1, 0,
                                    1 | 0x1000, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) on {text[:40]!r}")
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def build_default_corpus(root: str | Path | None = None, *, limit: int | None = None,
                         log=print) -> Path:
    """The default corpus as an LJSpeech folder (``ROOT/espeak-corpus``), synthesised once.

    Returns the folder; an existing complete folder (``metadata.csv`` written last) is reused.
    """
    import soundfile as sf

    root = Path(root) if root is not None else default_cache_dir()
    rows = sentences()[:limit] if limit else sentences()
    tag = hashlib.sha1("\n".join(i for i, _ in rows).encode()).hexdigest()[:8]
    out = root / f"espeak-corpus-{tag}"
    if (out / "metadata.csv").is_file():
        return out
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    synth = EspeakSynth()
    from tqdm import tqdm

    log(f"synthesising the default corpus ({len(rows)} sentences, espeak-ng) into {out} (once)")
    for uid, text in tqdm(rows, desc="espeak-ng", unit="utt", leave=False):
        path = out / "wavs" / f"{uid}.wav"
        if path.is_file():
            continue
        wav = synth(text)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, wav, synth.sample_rate, subtype="PCM_16")
        os.replace(tmp, path)
    (out / "heldout.txt").write_text("\n".join(held_out_ids()) + "\n")
    tmp = out / "metadata.csv.tmp"
    tmp.write_text("".join(f"{uid}|{text}|{text}\n" for uid, text in rows), encoding="utf-8")
    os.replace(tmp, out / "metadata.csv")
    return out
