"""LJSpeech as distributed (Ito 2017; paper App. G.1): ``metadata.csv`` rows ``ID|raw|normalized``
and ``wavs/ID.wav`` (22,050 Hz mono 16-bit).

Audio is read with soundfile (torchaudio's loader needs torchcodec + ffmpeg); a file of another
rate is resampled (soxr through librosa), stereo is averaged to mono, 8-bit / float files are
read as float in [−1, 1]. A file that cannot be read (truncated, 0 length, not audio) is
warned by name and skipped; a metadata row with missing columns is reported (file and line)
and skipped. The train / validation split is deterministic by ID (a hash of the ID, not the
row order), so adding rows never moves an old clip to the other side.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Utterance", "read_metadata", "load_wav", "split_of", "LJSpeech", "SAMPLE_RATE"]

SAMPLE_RATE = 22050


@dataclass(frozen=True)
class Utterance:
    """One metadata row: ``id``, raw text, normalised text, and the wav path."""

    id: str
    raw: str
    text: str
    wav: Path


def read_metadata(path: str | Path, wav_dir: str | Path | None = None) -> list[Utterance]:
    """Parse an LJSpeech ``metadata.csv`` (``ID|raw|normalized``, UTF-8, no quoting).

    A row with only ``ID|raw`` uses the raw text as normalised text (some LJSpeech copies); a
    row without text, or with more than 3 columns, is warned (file:line) and skipped.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (an LJSpeech folder has metadata.csv and wavs/)")
    wav_dir = Path(wav_dir) if wav_dir is not None else path.parent / "wavs"
    out, bad = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("|")
        if len(cols) == 2 and cols[0].strip() and cols[1].strip():
            cols = [cols[0], cols[1], cols[1]]
        if len(cols) != 3 or not cols[0].strip() or not cols[2].strip():
            bad.append(i)
            continue
        uid = cols[0].strip()
        out.append(Utterance(uid, cols[1].strip(), cols[2].strip(), wav_dir / f"{uid}.wav"))
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} row(s) with missing columns (lines "
                      f"{', '.join(map(str, bad[:10]))}{' …' if len(bad) > 10 else ''}); expected ID|raw|normalized",
                      stacklevel=2)
    return out


def load_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``[T] float32`` mono samples in [−1, 1] at ``sample_rate`` (resampled when the file's rate
    differs; channels averaged).

    Raises:
        ValueError: unreadable, empty or non-finite audio (the message names the file).
    """
    import soundfile as sf

    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise ValueError(f"{path}: not a readable audio file ({str(e).splitlines()[0][:120]})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: empty audio (0 samples)")
    x = data.mean(axis=1)
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: audio holds non-finite samples")
    if sr != sample_rate:
        import librosa

        x = librosa.resample(x, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(x, dtype=np.float32)


def split_of(uid: str, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` for an utterance ID: ``sha1(ID)`` as a number in [0, 1) below
    ``val_fraction`` → validation. Deterministic, independent of row order."""
    h = int.from_bytes(hashlib.sha1(uid.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64
    return "val" if h < val_fraction else "train"


class LJSpeech:
    """An LJSpeech folder: the utterances of one split whose wav exists.

    Args:
        root: folder with ``metadata.csv`` and ``wavs/`` (or a parent holding ``LJSpeech-1.1/``).
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: share of IDs in the validation split (by :func:`split_of`).
        ids: if given, only these IDs (in this order), whatever the split.

    Raises:
        FileNotFoundError: no ``metadata.csv``. ValueError: unknown split.
    """

    def __init__(self, root: str | Path, split: str = "train", val_fraction: float = 0.05,
                 ids: list[str] | None = None) -> None:
        root = Path(root)
        if not (root / "metadata.csv").is_file() and (root / "LJSpeech-1.1" / "metadata.csv").is_file():
            root = root / "LJSpeech-1.1"
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.root = root
        rows = read_metadata(root / "metadata.csv")
        if ids is not None:
            by_id = {u.id: u for u in rows}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise ValueError(f"{root / 'metadata.csv'} has no row for ID(s) {missing[:5]}")
            rows = [by_id[i] for i in ids]
        elif split != "all":
            rows = [u for u in rows if split_of(u.id, val_fraction) == split]
        present = [u for u in rows if u.wav.is_file()]
        if len(present) < len(rows):
            gone = [u.id for u in rows if not u.wav.is_file()]
            warnings.warn(f"{root}: {len(gone)} metadata row(s) have no wav (e.g. {gone[0]}.wav); skipped",
                          stacklevel=2)
        self.utterances = present

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> Utterance:
        return self.utterances[i]
