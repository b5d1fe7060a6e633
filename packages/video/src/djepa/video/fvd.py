"""Fréchet Video Distance with an I3D detector given as a local TorchScript file.

FVD (Unterthiner et al. 2018) is the Fréchet distance of I3D features of real and generated
clips. Numbers differ across repositories because the protocol differs (MODALITIES.md), so it is
pinned here and written next to every result (:class:`FVDProtocol`), in the style of
StyleGAN-V's ``fvd2048_16f``: ``num_frames`` (16) consecutive frames taken every ``stride``
frames from frame ``start`` of each clip (after the 8 fps resampling), grey replicated to RGB,
each frame resized to ``resize × resize`` (224, bilinear, ``align_corners=False``, no
antialiasing), values mapped to ``[−1, 1]``; ``num_real`` real clips (drawn with ``seed`` from
the named split) against ``num_fake`` generated ones.

The detector: ``torch.jit.load(path)`` (TorchScript only — never ``torch.load``/unpickling; a
pickle is refused by TorchScript's loader) called as ``model(x)`` with
``x [B, 3, num_frames, resize, resize] float32`` in ``[−1, 1]``, returning features ``[B, D]``
(StyleGAN-V's ``i3d_torchscript.pt`` returns 400-d logits with ``return_features=False``; a
model with another signature must be wrapped into this one). No I3D weights can be downloaded
here: tests use a tiny random TorchScript of the same signature.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from djepa.core.metrics import frechet_distance_from_features

__all__ = ["FVDProtocol", "load_i3d", "fvd_clips", "i3d_features", "fvd"]


@dataclass(frozen=True)
class FVDProtocol:
    """The pinned FVD protocol (module docstring); written into every result JSON."""

    num_frames: int = 16
    stride: int = 1
    start: int = 0
    resize: int = 224
    interpolation: str = "bilinear (align_corners=False, no antialias)"
    value_range: tuple[float, float] = (-1.0, 1.0)
    num_real: int = 2048
    num_fake: int = 2048
    real_split: str = "train"
    seed: int = 0
    detector: str = ""
    detector_sha256: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        d["name"] = f"fvd_{self.num_frames}f_stride{self.stride}_{self.resize}px"
        return d


def load_i3d(path: str | Path, device: torch.device | str = "cpu"):
    """``(model, sha256)``: the TorchScript detector in eval mode.

    Raises:
        FileNotFoundError: no such file. ValueError: not a TorchScript archive.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"I3D TorchScript file {p} not found")
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(p), map_location=torch.device(device)).eval()
    except RuntimeError as e:
        raise ValueError(f"{p} is not a TorchScript file (torch.jit.load: {str(e).splitlines()[0]})") from None
    return model, sha


def fvd_clips(videos: Tensor, protocol: FVDProtocol) -> Tensor:
    """``[B, C, T, H, W]`` in ``[0, 1]`` → the detector input ``[B, 3, F, S, S]`` in ``[−1, 1]``.

    Raises:
        ValueError: clips shorter than ``start + (num_frames − 1)·stride + 1`` frames.
    """
    need = protocol.start + (protocol.num_frames - 1) * protocol.stride + 1
    b, c, t, h, w = videos.shape
    if t < need:
        raise ValueError(f"the FVD protocol takes {protocol.num_frames} frames at stride {protocol.stride} "
                         f"(≥ {need} frames), clips have {t}; pass --fvd-frames {max(1, (t - protocol.start - 1) // protocol.stride + 1)}")
    x = videos[:, :, protocol.start:need:protocol.stride].float()
    if c == 1:
        x = x.expand(-1, 3, -1, -1, -1)
    f = x.shape[2]
    x = x.permute(0, 2, 1, 3, 4).reshape(b * f, 3, h, w)
    x = F.interpolate(x, size=(protocol.resize, protocol.resize), mode="bilinear", align_corners=False, antialias=False)
    x = x.reshape(b, f, 3, protocol.resize, protocol.resize).permute(0, 2, 1, 3, 4)
    return x * 2.0 - 1.0


@torch.inference_mode()
def i3d_features(model, videos: Tensor, protocol: FVDProtocol, batch_size: int = 8) -> np.ndarray:
    """Detector features ``[B, D]`` float64 of ``videos`` under ``protocol``."""
    dev = next(iter(model.parameters()), torch.empty(0)).device
    out = []
    for i in range(0, len(videos), batch_size):
        x = fvd_clips(videos[i:i + batch_size], protocol).to(dev)
        out.append(model(x).float().reshape(len(x), -1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def fvd(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Fréchet distance of two feature sets (:func:`djepa.core.metrics.frechet_distance_from_features`)."""
    return frechet_distance_from_features(real_features, fake_features)
