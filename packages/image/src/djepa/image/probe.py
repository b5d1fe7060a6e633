"""``image-probe``: linear probing of a run's context encoder (paper App. E.2, Table 9).

Protocol (I-JEPA / MAE linear probing, at CPU scale):

1. the frozen encoder φ (EMA weights, eval mode, null condition) gives one pooled feature per
   image of the train and of the test split (:mod:`djepa.image.features`), extracted once, in
   batches, with a progress bar, cached on disk (key: the weights' sha256 + tokenizer + data set);
2. a validation split (``val_fraction``, stratified, seeded) is carved from **train**; for every
   (learning rate, weight decay) of the sweep a linear layer is trained with cross-entropy on
   the rest of train, features standardised with that part's per-dimension mean / std (MAE's
   ``BatchNorm1d(affine=False)`` before the head, at its eval statistics); the setting with the
   best validation top-1 wins (ties: the first in sweep order);
3. the winner is refitted on the whole train split (statistics of the whole train split) and
   scored once on **test**. Test features and labels reach nothing but that last score.

The head: ``nn.Linear(E, classes)``, weight N(0, 0.01²) (MAE's probe init), bias 0, trained by
one of two optimizers (``ProbeSettings.optimizer``):

* ``"lbfgs"`` (default): full-batch L-BFGS (strong-Wolfe line search) on the mean
  cross-entropy plus ``weight_decay/2 · ‖W‖²`` — the convex problem solved to convergence, so
  the sweep is over the weight decay only (the protocol of CLIP's linear probes: L-BFGS
  logistic regression, L2 strength chosen on a validation split). Deterministic.
* ``"adamw"``: mini-batch AdamW (β = 0.9, 0.999; decoupled weight decay), cosine learning-rate
  decay to 0 over ``epochs``, a seeded batch order; the sweep is learning rate × weight decay.

Deviation from MAE (LARS, lr 0.1 · batch/256, 90 epochs, batch 16384 on ImageNet): on a CPU
with tens of thousands of features, a mini-batch probe of a few hundred steps is still
under-trained (the validation score keeps rising with the learning rate), while L-BFGS
converges in seconds.

``--random-init`` probes the same architecture with freshly initialised weights (the
"randomly initialised encoder" baseline; seeded).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from djepa.core.cli import UserError, parse, run_main, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.sampler_flags import resolve_device

__all__ = ["ProbeSettings", "ProbeFit", "stratified_split", "train_linear", "train_linear_lbfgs",
           "fit_linear_probe",
           "probe_accuracy", "ImageProbeConfig", "load_image_run", "run", "main"]


@dataclass(frozen=True)
class ProbeSettings:
    """Linear-probe training and the sweep.

    Attributes:
        optimizer: ``"lbfgs"`` (full batch, sweep over ``weight_decays``) or ``"adamw"``
            (mini-batches, sweep over ``lrs`` × ``weight_decays``).
        lrs: peak learning rates of the AdamW sweep (not used by L-BFGS).
        weight_decays: L2 strengths (L-BFGS: ``wd/2·‖W‖²`` added to the loss) or AdamW
            decoupled weight decays.
        epochs: AdamW: passes over the fit set per setting.
        batch_size: AdamW: features per step.
        lbfgs_iters: L-BFGS: most iterations per setting.
        val_fraction: share of each class of train held out for choosing the setting.
        seed: seeds the split, the head's init and the batch order.
    """

    optimizer: Literal["lbfgs", "adamw"] = "lbfgs"
    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
    epochs: int = 20
    batch_size: int = 1024
    lbfgs_iters: int = 300
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgs", "adamw"):
            raise ValueError(f"probe optimizer must be 'lbfgs' or 'adamw', got {self.optimizer!r}")
        if self.lbfgs_iters < 1:
            raise ValueError("lbfgs_iters must be >= 1")
        if not self.lrs or not self.weight_decays or any(v <= 0 for v in self.lrs) \
                or any(v < 0 for v in self.weight_decays):
            raise ValueError("the probe sweep needs learning rates > 0 and weight decays >= 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("probe epochs and batch size must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class ProbeFit:
    """A fitted linear probe.

    Attributes:
        head: ``nn.Linear(E, classes)`` on standardised features.
        mean / std: ``[E]`` standardisation statistics (of the data it was refitted on).
        lr / weight_decay: the chosen setting.
        sweep: ``[{"lr", "weight_decay", "val_top1"}]`` for every setting, in sweep order.
        num_fit / num_val: sizes of the two parts of train used for the choice.
    """

    head: nn.Linear
    mean: Tensor
    std: Tensor
    lr: float
    weight_decay: float
    sweep: list[dict[str, float]] = field(default_factory=list)
    num_fit: int = 0
    num_val: int = 0

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """``[M, E]`` → predicted class ``[M]`` int64."""
        return self.head((features.float() - self.mean) / self.std).argmax(-1)


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(fit_idx, val_idx)`` int64: ``round(fraction · n_c)`` items of every class ``c`` (at
    least one when the class has two or more) go to validation, chosen by a seeded permutation;
    both index sets ascending."""
    g = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(labels):
        idx = (labels == c).nonzero().squeeze(1)
        k = int(round(fraction * len(idx)))
        k = max(k, 1) if len(idx) >= 2 else 0
        val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values if val else torch.zeros(0, dtype=torch.long)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().squeeze(1), val_idx


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp(min=1e-6)
    return mean, std


def train_linear(x: Tensor, y: Tensor, num_classes: int, *, lr: float, weight_decay: float,
                 epochs: int, batch_size: int, seed: int) -> nn.Linear:
    """A linear layer trained with cross-entropy on standardised ``x [M, E]`` / ``y [M]``
    (AdamW, cosine decay to 0 per step, seeded init and batch order). Deterministic."""
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    m = len(y)
    steps_per_epoch = max(1, math.ceil(m / batch_size))
    total = epochs * steps_per_epoch
    step = 0
    for _ in range(epochs):
        order = torch.randperm(m, generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
            loss = nn.functional.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return head.eval().requires_grad_(False)


def train_linear_lbfgs(x: Tensor, y: Tensor, num_classes: int, *, weight_decay: float,
                       max_iter: int, seed: int) -> nn.Linear:
    """A linear layer minimising ``mean CE + weight_decay/2 · ‖W‖²`` (bias not penalised) on
    standardised ``x [M, E]`` / ``y [M]`` with full-batch L-BFGS (strong-Wolfe line search;
    seeded init). Deterministic."""
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head.eval().requires_grad_(False)


def _train(x: Tensor, y: Tensor, num_classes: int, settings: "ProbeSettings", lr: float, wd: float) -> nn.Linear:
    if settings.optimizer == "lbfgs":
        return train_linear_lbfgs(x, y, num_classes, weight_decay=wd, max_iter=settings.lbfgs_iters,
                                  seed=settings.seed)
    return train_linear(x, y, num_classes, lr=lr, weight_decay=wd, epochs=settings.epochs,
                        batch_size=settings.batch_size, seed=settings.seed)


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int,
                     settings: ProbeSettings = ProbeSettings(), *, log: Any = None) -> ProbeFit:
    """Choose the probe setting on a validation split of **train** and refit on all of train.

    Args:
        features: train features ``[M, E]`` float.
        labels: train labels ``[M]`` int64 in ``[0, num_classes)``.
        num_classes: number of classes.
        settings: the sweep.
        log: called with one line per setting (optional).

    Returns:
        :class:`ProbeFit` (never sees test data: it takes none).

    Raises:
        ValueError: shapes that disagree, fewer than 2 items, or labels out of range.
    """
    x, y = features.float(), labels.long()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features [M, E] and labels [M] expected, got {list(x.shape)} and {list(y.shape)}")
    if len(y) < 2:
        raise ValueError("the linear probe needs at least 2 training items")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    fit_idx, val_idx = stratified_split(y, settings.val_fraction, settings.seed)
    mean, std = _stats(x[fit_idx])
    xf, xv = (x[fit_idx] - mean) / std, (x[val_idx] - mean) / std
    sweep: list[dict[str, float]] = []
    best = None
    lrs = settings.lrs if settings.optimizer == "adamw" else (1.0,)  # L-BFGS: line search, lr 1
    for lr in lrs:
        for wd in settings.weight_decays:
            head = _train(xf, y[fit_idx], num_classes, settings, lr, wd)
            with torch.no_grad():
                acc = float((head(xv).argmax(-1) == y[val_idx]).float().mean()) if len(val_idx) else 0.0
            sweep.append({"lr": lr, "weight_decay": wd, "val_top1": acc})
            if log is not None:
                what = f"wd {wd:g}" if settings.optimizer == "lbfgs" else f"lr {lr:g} wd {wd:g}"
                log(f"probe ({settings.optimizer}) {what}: val top-1 {100 * acc:.2f} %")
            if best is None or acc > best[0]:
                best = (acc, lr, wd)
    assert best is not None
    _, lr, wd = best
    mean, std = _stats(x)
    head = _train((x - mean) / std, y, num_classes, settings, lr, wd)
    return ProbeFit(head=head, mean=mean, std=std, lr=lr, weight_decay=wd, sweep=sweep,
                    num_fit=len(fit_idx), num_val=len(val_idx))


def probe_accuracy(fit: ProbeFit, features: Tensor, labels: Tensor) -> float:
    """Top-1 of ``fit`` on ``features [M, E]`` / ``labels [M]`` in ``[0, 1]``."""
    if len(labels) == 0:
        raise ValueError("no items to score")
    return float((fit.predict(features) == labels.long()).float().mean())


# ---------------------------------------------------------------------------------------- CLI


@dataclass(frozen=True)
class ImageProbeConfig:
    """Linear-probe top-1 of an image run's context encoder (paper App. E.2, Table 9)."""

    checkpoint: str
    """A training run folder (its pretrained/ EMA export), a save_pretrained folder, or one
    checkpoint RUN/checkpoints/step_XXXXXXXX (its EMA weights)."""
    dataset: Literal["digits", "idx", "imagefolder"] | None = None
    """Labelled data set: digits, idx (MNIST / Fashion-MNIST) or imagefolder; default: the one
    the run was trained on (its config.json)."""
    data_dir: str | None = None
    """Folder of the IDX files / ImageFolder root (default: the run's)."""
    output: str | None = None
    """Write the result as JSON here."""
    random_init: bool = False
    """Probe the same architecture with random weights (seeded by --seed) instead of the run's."""
    batch_size: int = 256
    """Images per encoder forward while extracting features."""
    max_train: int | None = None
    """Use only the first N train images (default: all)."""
    max_test: int | None = None
    """Score only the first N test images (default: all)."""
    optimizer: Literal["lbfgs", "adamw"] = ProbeSettings.optimizer
    """Probe optimizer: lbfgs (full batch, weight-decay sweep) or adamw (mini-batches, lr × wd sweep)."""
    lrs: tuple[float, ...] = ProbeSettings.lrs
    """Learning rates of the AdamW sweep."""
    weight_decays: tuple[float, ...] = ProbeSettings.weight_decays
    """Weight decays (L2 strengths) of the sweep."""
    epochs: int = ProbeSettings.epochs
    """AdamW probe epochs per setting."""
    probe_batch_size: int = ProbeSettings.batch_size
    """AdamW: features per probe training step."""
    lbfgs_iters: int = ProbeSettings.lbfgs_iters
    """L-BFGS: most iterations per setting."""
    val_fraction: float = ProbeSettings.val_fraction
    """Share of train held out to choose the setting (test is never used for it)."""
    seed: int = 0
    """Seeds the validation split, the probe and --random-init."""
    cache_dir: str = "~/.cache/djepa/probe"
    """Where extracted features are cached (safetensors; key: weights sha256 + tokenizer + data)."""
    cache: bool = True
    """Read / write the feature cache."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda, cuda:1, …"""
    progress: bool = True
    """Show progress bars."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def load_image_run(path: str | Path, device: torch.device | str = "cpu", prog: str = "image-probe"):
    """:func:`djepa.core.runs.load_run` for an **image** run: ``(LoadedRun, tokenizer)``.

    Raises:
        UserError: the run's tokenizer is not an image one (another modality's run).
        As :func:`djepa.core.runs.load_run` otherwise (a missing or non-run folder, a corrupt
        checkpoint, a tokenizer that does not fit the model): one line each.
    """
    import djepa.image.tokenizer  # noqa: F401  (register the image tokenizer kinds)
    import djepa.image.vae  # noqa: F401
    from djepa.core.runs import load_run
    from djepa.core.tokenizer import tokenizer_from_config
    from djepa.image.features import IMAGE_TOKENIZER_KINDS

    run = load_run(path, device, tokenizer=False)
    kind = run.tokenizer_config.get("kind")
    if kind not in IMAGE_TOKENIZER_KINDS:
        what = f"a {kind!r} tokenizer" if kind else "no tokenizer record"
        raise UserError(f"{path} is not an image run ({what}; {prog} takes runs of image-train: "
                        f"tokenizer kind {' or '.join(IMAGE_TOKENIZER_KINDS)})")
    if len(run.model.config.grid) != 2:
        raise UserError(f"{path} is not an image run (token grid {run.model.config.grid} is not 2-D)")
    tok = tokenizer_from_config(run.tokenizer_config, source=str(path))
    if int(tok.token_dim) != run.model.config.token_dim or tuple(tok.grid) != tuple(run.model.config.grid):
        raise ValueError(f"{path}: its tokenizer record does not match the model "
                         f"(tokens {tok.token_dim}×{tuple(tok.grid)} vs {run.model.config.token_dim}×"
                         f"{run.model.config.grid})")
    return run, tok


def data_source(run: Any, dataset: str | None, data_dir: str | None) -> tuple[str, str | None]:
    """The (dataset, data_dir) to use: the flags, else what the run recorded (config.json).

    Raises:
        UserError: no --dataset and the run records none.
    """
    recorded = (run.run_config or {}).get("data") or {}
    name = dataset or recorded.get("dataset")
    if name is None:
        raise UserError("give --dataset (this checkpoint records no training data set)")
    if data_dir is None and name == recorded.get("dataset"):
        data_dir = recorded.get("data_dir")
    return name, data_dir


def build_split(name: str, data_dir: str | None, tokenizer: Any, split: str, limit: int | None):
    """The ``split`` of the data set at the tokenizer's image size (first ``limit`` items)."""
    from torch.utils.data import Subset

    from djepa.image.datasets import build_dataset

    size = tokenizer.image_size
    side = int(size[0]) if isinstance(size, (tuple, list)) else int(size)
    ds = build_dataset(name, data_dir, side, split=split)
    if len(ds) == 0:
        raise UserError(f"the {split} split of {name} at {data_dir} is empty")
    if limit is not None:
        if limit < 1:
            raise UserError("--max-train / --max-test must be >= 1")
        ds_limited = Subset(ds, range(min(limit, len(ds))))
        ds_limited.num_classes = ds.num_classes  # type: ignore[attr-defined]
        return ds_limited
    return ds


def _labels_digest(ds: Any) -> str | None:
    """sha256 of the data set's ``targets`` (a Subset: of its items), so that a cache entry is
    never reused for other labels; None when the data set exposes no targets."""
    import hashlib

    from torch.utils.data import Subset

    idx = None
    if isinstance(ds, Subset):
        idx, ds = list(ds.indices), ds.dataset
    targets = getattr(ds, "targets", None)
    if targets is None:
        return None
    t = torch.as_tensor(targets).long().reshape(-1)
    if idx is not None:
        t = t[torch.as_tensor(idx, dtype=torch.long)]
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _features(model: Any, tokenizer: Any, ds: Any, *, identity: dict[str, Any], weights_key: Any,
              cfg: ImageProbeConfig, device: torch.device, split: str, log: Any) -> tuple[Tensor, Tensor]:
    from djepa.image.features import FeatureCache, cache_key, extract_features

    cache = FeatureCache(cfg.cache_dir) if cfg.cache else None
    key = None
    if cache is not None:
        key = weights_key(dict(identity, split=split, items=len(ds), labels=_labels_digest(ds)))
        hit = cache.load(key)
        if hit is not None:
            log(f"{split} features from cache {cache.path(key)}")
            return hit
    t0 = time.perf_counter()
    feats, labels = extract_features(model, tokenizer, ds, batch_size=cfg.batch_size, device=device,
                                     progress=cfg.progress, desc=f"{split} features")
    log(f"{split} features: {tuple(feats.shape)} in {time.perf_counter() - t0:.1f} s")
    if cache is not None and key is not None:
        cache.save(key, feats, labels)
    return feats, labels


def run(cfg: ImageProbeConfig) -> dict:
    """Extract, probe, score; returns the result dict (printed; written to ``--output``).

    Raises:
        UserError / ValueError / FileNotFoundError: bad flags, a non-image or non-run folder,
        missing data (one line each through :func:`main`).
    """
    from djepa.core.config import config_to_dict
    from djepa.core.model import DJEPA
    from djepa.image.features import cache_key

    if cfg.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    settings = ProbeSettings(optimizer=cfg.optimizer, lrs=tuple(cfg.lrs), weight_decays=tuple(cfg.weight_decays),
                             epochs=cfg.epochs, batch_size=cfg.probe_batch_size, lbfgs_iters=cfg.lbfgs_iters,
                             val_fraction=cfg.val_fraction, seed=cfg.seed)
    device = resolve_device(cfg.device)

    def log(msg: str) -> None:
        print(f"image-probe: {msg}", file=sys.stderr)

    t_start = time.perf_counter()
    loaded, tokenizer = load_image_run(cfg.checkpoint, device)
    model = loaded.model
    if cfg.random_init:
        torch.manual_seed(cfg.seed)
        model = DJEPA(model.config).to(device).eval()
        blob = json.dumps({"random_init": cfg.seed, "model": config_to_dict(model.config)}, sort_keys=True)

        def weights_key(data: dict) -> str:
            import hashlib
            return hashlib.sha256((blob + json.dumps(data, sort_keys=True, default=str)).encode()).hexdigest()
    else:
        def weights_key(data: dict) -> str:
            return cache_key(loaded.weights, loaded.tokenizer_config, data)
    name, data_dir = data_source(loaded, cfg.dataset, cfg.data_dir)
    train_ds = build_split(name, data_dir, tokenizer, "train", cfg.max_train)
    test_ds = build_split(name, data_dir, tokenizer, "test", cfg.max_test)
    num_classes = int(getattr(train_ds, "num_classes"))
    identity = dict(dataset=name, data_dir=str(Path(data_dir).resolve()) if data_dir else None,
                    image_size=list(tokenizer.image_size) if isinstance(tokenizer.image_size, tuple)
                    else tokenizer.image_size)
    kw = dict(identity=identity, weights_key=weights_key, cfg=cfg, device=device, log=log)
    x_train, y_train = _features(model, tokenizer, train_ds, split="train", **kw)
    x_test, y_test = _features(model, tokenizer, test_ds, split="test", **kw)

    t0 = time.perf_counter()
    fit = fit_linear_probe(x_train, y_train, num_classes, settings, log=log)
    top1 = probe_accuracy(fit, x_test, y_test)
    result = dict(
        top1=top1, checkpoint=str(cfg.checkpoint), weights=str(loaded.weights), random_init=cfg.random_init,
        dataset=name, data_dir=data_dir, num_train=len(y_train), num_fit=fit.num_fit, num_val=fit.num_val,
        num_test=len(y_test), num_classes=num_classes, feature_dim=int(x_train.shape[1]),
        chosen_lr=fit.lr, chosen_weight_decay=fit.weight_decay, sweep=fit.sweep,
        optimizer=settings.optimizer, epochs=settings.epochs, probe_batch_size=settings.batch_size,
        lbfgs_iters=settings.lbfgs_iters, seed=cfg.seed,
        probe_seconds=round(time.perf_counter() - t0, 2), seconds=round(time.perf_counter() - t_start, 2))
    best_val = max(s["val_top1"] for s in fit.sweep)
    chosen = f"wd {fit.weight_decay:g}" if settings.optimizer == "lbfgs" else f"lr {fit.lr:g}, wd {fit.weight_decay:g}"
    print(f"image-probe: linear-probe top-1 {100 * top1:.2f} % on {len(y_test)} test images "
          f"({settings.optimizer}, {chosen} chosen on {fit.num_val} validation images from "
          f"train: {100 * best_val:.2f} %)")
    if cfg.output:
        from djepa.core.pretrained import atomic_write_text

        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-probe``."""
    return run_main("image-probe", lambda: run(with_cpu_speed(parse(ImageProbeConfig, argv, prog="image-probe"))) and 0)


if __name__ == "__main__":
    raise SystemExit(main())
