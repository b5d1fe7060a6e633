"""Acoustic features that match the vocoder exactly (HiFi-GAN V1 LJSpeech, Kong et al. 2020,
``meldataset.py``) and F0 per mel frame with Parselmouth (paper App. G.1).

Mel: 22,050 Hz, 80 bins, FFT 1024, hop 256, Hann window 1024, fmin 0, fmax 8000 (librosa's
Slaney mel filterbank, as HiFi-GAN uses), reflect padding (FFT − hop)/2 on both sides and
``center=False``, magnitude ``sqrt(|S|² + 1e-9)``, natural ``log(clamp(x, 1e-5))``. A clip of
``S`` samples gives ``T = (S − 256) // 256 + 1`` frames. (NATSpeech's fmax 7600 would be wrong
for this vocoder.)

F0: Praat's autocorrelation pitch (``to_pitch_ac``, time step = hop / rate, voicing threshold
0.6, floor 80 Hz, ceiling 750 Hz — NATSpeech's settings), zero-padded to T frames, 0 = unvoiced;
``voiced = f0 > 0``. :func:`f0_to_coarse` is NATSpeech's 256-bin mel-scale quantisation (bins
1 … 255, unvoiced → 1) that feeds the ``Embedding(300, 256)`` pitch table.

Features are cached per utterance (:class:`FeatureCache`, one ``.npz`` per ID, keyed by the
wav's size and mtime and the feature settings).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["MelConfig", "mel_spectrogram", "compute_f0", "f0_to_coarse", "FeatureCache", "HOP"]

HOP = 256


@dataclass(frozen=True)
class MelConfig:
    """HiFi-GAN V1 LJSpeech mel settings (its ``config_v1.json``)."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop: int = HOP
    win: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0


_BASIS: dict[tuple, Tensor] = {}


def _mel_basis(cfg: MelConfig, device: torch.device) -> Tensor:
    key = (cfg, str(device))
    if key not in _BASIS:
        import librosa

        b = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax)
        _BASIS[key] = torch.from_numpy(b).float().to(device)
    return _BASIS[key]


def mel_spectrogram(wav: Tensor | np.ndarray, cfg: MelConfig = MelConfig()) -> Tensor:
    """``wav [S]`` or ``[B, S]`` float in [−1, 1] → log-mel ``[80, T]`` / ``[B, 80, T]`` float32
    (natural log of the mel magnitude, HiFi-GAN's ``mel_spectrogram``).

    Raises:
        ValueError: fewer than ``(n_fft + hop) / 2`` samples (reflect padding needs them).
    """
    y = torch.as_tensor(wav, dtype=torch.float32)
    single = y.ndim == 1
    if single:
        y = y[None]
    pad = (cfg.n_fft - cfg.hop) // 2
    if y.shape[-1] <= pad:
        raise ValueError(f"audio of {y.shape[-1]} samples is too short for a mel frame (need > {pad})")
    y = torch.nn.functional.pad(y[:, None], (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(y, cfg.n_fft, hop_length=cfg.hop, win_length=cfg.win,
                      window=torch.hann_window(cfg.win, device=y.device), center=False,
                      normalized=False, onesided=True, return_complex=True)
    mag = torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = torch.log(torch.clamp(_mel_basis(cfg, y.device) @ mag, min=1e-5))
    return mel[0] if single else mel


def compute_f0(wav: np.ndarray, num_frames: int, cfg: MelConfig = MelConfig(),
               f0_min: float = 80.0, f0_max: float = 750.0) -> np.ndarray:
    """``[num_frames] float32`` F0 in Hz per mel frame (0 = unvoiced), Praat autocorrelation."""
    import parselmouth

    snd = parselmouth.Sound(np.asarray(wav, dtype=np.float64), sampling_frequency=cfg.sample_rate)
    f0 = snd.to_pitch_ac(time_step=cfg.hop / cfg.sample_rate, voicing_threshold=0.6,
                         pitch_floor=f0_min, pitch_ceiling=f0_max).selected_array["frequency"]
    f0 = np.nan_to_num(f0.astype(np.float32))
    lpad = max(0, (len(wav) // cfg.hop - len(f0) + 1) // 2)
    out = np.zeros(num_frames, dtype=np.float32)
    n = max(0, min(len(f0), num_frames - lpad))
    out[lpad:lpad + n] = f0[:n]
    return out


def f0_to_coarse(f0: Tensor, bins: int = 256, f0_min: float = 50.0, f0_max: float = 1100.0) -> Tensor:
    """NATSpeech's coarse pitch: ``f0 [...] Hz`` (0 = unvoiced) → int64 bins in [1, bins − 1]."""
    mel_min = 1127.0 * np.log(1 + f0_min / 700.0)
    mel_max = 1127.0 * np.log(1 + f0_max / 700.0)
    m = 1127.0 * torch.log1p(f0.float().clamp(min=0) / 700.0)
    m = torch.where(m > 0, (m - mel_min) * (bins - 2) / (mel_max - mel_min) + 1, m)
    return torch.round(m.clamp(1, bins - 1)).long()


class FeatureCache:
    """One ``.npz`` per utterance under ``root``: ``mel [80, T] float32``, ``f0 [T] float32``.

    The key of an entry holds the ID, the wav's size and mtime and the feature settings, so an
    edited wav or other settings recompute. Writes are atomic (temp file + rename).
    """

    def __init__(self, root: str | Path, cfg: MelConfig = MelConfig()) -> None:
        self.root = Path(root)
        self.cfg = cfg
        self._tag = hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]

    def _path(self, uid: str, wav: Path) -> Path:
        st = wav.stat()
        h = hashlib.sha1(f"{uid}|{st.st_size}|{st.st_mtime_ns}|{self._tag}".encode()).hexdigest()[:12]
        return self.root / f"{uid}.{h}.npz"

    def get(self, uid: str, wav_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        """``(mel [80, T], f0 [T])`` of the wav, from the cache or computed and stored.

        Raises:
            ValueError: the wav cannot be read (see :func:`djepa.audio.ljspeech.load_wav`).
        """
        from djepa.audio.ljspeech import load_wav

        wav_path = Path(wav_path)
        path = self._path(uid, wav_path)
        if path.is_file():
            try:
                with np.load(path) as z:
                    return z["mel"], z["f0"]
            except Exception:  # a damaged cache entry is recomputed
                pass
        wav = load_wav(wav_path, self.cfg.sample_rate)
        mel = mel_spectrogram(wav, self.cfg).numpy()
        f0 = compute_f0(wav, mel.shape[1], self.cfg)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, mel=mel, f0=f0)
        os.replace(tmp, path)
        return mel, f0
