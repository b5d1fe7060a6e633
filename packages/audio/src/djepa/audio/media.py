"""Audio media: wav writing (soundfile, 16-bit PCM, 22,050 Hz), mel-spectrogram images (PNG and
a ``[1, H, W]`` tensor for TensorBoard), and the sentence cross-fade."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["write_wav", "mel_image", "save_mel_png", "crossfade_join"]


def write_wav(path: str | Path, wav: Tensor | np.ndarray, sample_rate: int = 22050) -> Path:
    """Atomically write mono float samples in [−1, 1] as 16-bit PCM."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.clip(np.asarray(torch.as_tensor(wav).float().cpu()), -1.0, 1.0)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.wav")
    sf.write(tmp, x, sample_rate, subtype="PCM_16")
    os.replace(tmp, path)
    return path


def mel_image(mel: Tensor, lo: float = -11.5, hi: float = 2.5) -> Tensor:
    """log-mel ``[80, T]`` → ``[1, 80, T]`` in [0, 1], low frequencies at the bottom."""
    return ((mel.float().cpu() - lo) / (hi - lo)).clamp(0, 1).flip(0)[None]


def save_mel_png(path: str | Path, mels: list[Tensor], titles: list[str]) -> Path:
    """One panel per mel (matplotlib, ``origin="lower"``), stacked vertically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(mels), 1, figsize=(10, 2.6 * len(mels)), squeeze=False)
    for ax, m, t in zip(axes[:, 0], mels, titles):
        ax.imshow(m.float().cpu().numpy(), origin="lower", aspect="auto", vmin=-11.5, vmax=2.5, cmap="magma")
        ax.set_title(t, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("frame (256 samples)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def crossfade_join(pieces: list[Tensor], sample_rate: int = 22050, fade_s: float = 0.15) -> Tensor:
    """Join waveforms with a linear cross-fade of ``fade_s`` seconds (F5-TTS: 0.15 s); a piece
    shorter than the fade is joined with a shorter one."""
    if not pieces:
        return torch.zeros(0)
    out = pieces[0].float()
    for p in pieces[1:]:
        p = p.float()
        n = min(int(fade_s * sample_rate), out.shape[0], p.shape[0])
        if n == 0:
            out = torch.cat([out, p])
            continue
        w = torch.linspace(0.0, 1.0, n)
        mid = out[-n:] * (1 - w) + p[:n] * w
        out = torch.cat([out[:-n], mid, p[n:]])
    return out
