"""Training data for the TTS model: utterances of an LJSpeech folder with phoneme ids, log-mel
and F0 (cached per utterance), a padding collate and the engine's prepare step.

Text: LJSpeech's normalised column (App. G.1 practice), phonemised with espeak-ng.
Utterances that cannot be used are warned about and skipped: an unreadable wav (by name), one
with fewer mel frames than phonemes (MAS needs a frame per phoneme), one longer than
``max_frames``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from djepa.audio.features import FeatureCache
from djepa.audio.ljspeech import LJSpeech
from djepa.audio.phonemes import PhonemeVocab, phonemize

__all__ = ["Item", "TTSDataset", "collate", "prepare_batch", "mel_statistics"]


@dataclass
class Item:
    id: str
    text: str
    phonemes: str
    ids: np.ndarray   # [L] int64
    mel: np.ndarray   # [80, T] float32
    f0: np.ndarray    # [T] float32


class TTSDataset(Dataset):
    """Items of an LJSpeech folder (see the module docstring).

    Args:
        root: the LJSpeech folder. split / val_fraction / ids: as :class:`LJSpeech`.
        cache_dir: feature cache folder. vocab: the phoneme vocabulary (None = built from
            these utterances). max_frames: longer utterances are skipped. exclude: IDs never used.

    Raises:
        ValueError: no usable utterance.
    """

    def __init__(self, root: str | Path, *, split: str = "train", val_fraction: float = 0.05,
                 ids: list[str] | None = None, cache_dir: str | Path, vocab: PhonemeVocab | None = None,
                 max_frames: int = 1000, exclude: set[str] | None = None, progress: bool = True) -> None:
        lj = LJSpeech(root, split=split, val_fraction=val_fraction, ids=ids)
        utts = [u for u in lj.utterances if not exclude or u.id not in exclude]
        phon = phonemize([u.text for u in utts])
        self.vocab = vocab or PhonemeVocab.build(phon)
        cache = FeatureCache(cache_dir)
        items, skipped = [], {"unreadable": [], "too short": [], "too long": []}
        it = list(zip(utts, phon))
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="features", unit="utt", leave=False)
        for u, p in it:
            try:
                mel, f0 = cache.get(u.id, u.wav)
            except ValueError as e:
                warnings.warn(f"skipped {u.wav.name}: {e}", stacklevel=2)
                skipped["unreadable"].append(u.id)
                continue
            tok = np.asarray(self.vocab.encode(p, what=u.id), dtype=np.int64)
            if mel.shape[1] > max_frames:
                skipped["too long"].append(u.id)
                continue
            if len(tok) == 0 or mel.shape[1] < len(tok):
                skipped["too short"].append(u.id)
                continue
            items.append(Item(u.id, u.text, p, tok, mel, f0))
        for why, lst in skipped.items():
            if lst and why != "unreadable":
                warnings.warn(f"{lj.root}: skipped {len(lst)} utterance(s) {why} (e.g. {lst[0]}; "
                              f"max_frames={max_frames}, MAS needs frames >= phonemes)", stacklevel=2)
        if not items:
            raise ValueError(f"{lj.root}: no usable utterance in split {split!r}")
        self.items = items
        self.root = lj.root

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]


def collate(items: list[Item]) -> dict[str, Tensor]:
    """Pad to the longest row: ``phonemes [B, L]`` (0), ``mel [B, T, 80]`` (0),
    ``f0 [B, T]`` (0), ``frame_lengths [B]``."""
    b = len(items)
    lmax = max(len(it.ids) for it in items)
    tmax = max(it.mel.shape[1] for it in items)
    ph = torch.zeros(b, lmax, dtype=torch.long)
    mel = torch.zeros(b, tmax, 80)
    f0 = torch.zeros(b, tmax)
    fl = torch.zeros(b, dtype=torch.long)
    for i, it in enumerate(items):
        ph[i, :len(it.ids)] = torch.from_numpy(it.ids)
        t = it.mel.shape[1]
        mel[i, :t] = torch.from_numpy(it.mel.T)
        f0[i, :t] = torch.from_numpy(it.f0)
        fl[i] = t
    return {"phonemes": ph, "mel": mel, "f0": f0, "frame_lengths": fl}


def prepare_batch(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The engine's prepare step: the collated tensors on ``device`` (TTSModel.forward's kwargs)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def mel_statistics(items: list[Item]) -> tuple[list[float], list[float], float, float]:
    """Per-bin mean / std of the log-mel over all frames, and mean / std of log-F0 over voiced
    frames."""
    mels = np.concatenate([it.mel for it in items], axis=1).astype(np.float64)
    f0 = np.concatenate([it.f0 for it in items])
    lf = np.log(f0[f0 > 0]) if (f0 > 0).any() else np.array([5.3, 5.3])
    return (mels.mean(1).tolist(), np.maximum(mels.std(1), 1e-3).tolist(),
            float(lf.mean()), float(max(lf.std(), 1e-3)))
