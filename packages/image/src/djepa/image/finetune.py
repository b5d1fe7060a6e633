"""``image-finetune``: the context encoder φ plus a linear head, trained end to end (paper
App. E.2, Table 10), on the shared engine (:mod:`djepa.core.train`: DeepSpeed, resume,
progress bar, TensorBoard, verified atomic checkpoints, one writer per run folder).

The network (:class:`EncoderClassifier`): the run's φ on the full, unmasked image with the
null condition folded into a learned vector (a class model's null class; none for an
unconditional one), global average pool over the image tokens (buffer tokens dropped, as
:func:`djepa.image.features.pooled_features`), a linear head (MAE's init: weight
N(0, 2e-5²), bias 0). ``--from-scratch`` builds the same network from a freshly initialised
D-JEPA of the same config (the "scratch" row of Table 10).

Recipe: the I-JEPA / MAE fine-tuning recipe where it fits a CPU: AdamW (β = 0.9, 0.999),
weight decay 0.05 (none on biases, norms, embeddings, buffer and null vector), linear warm-up
then cosine decay, label smoothing 0.1, layer-wise lr decay (BEiT / MAE ``param_groups_lrd``:
token embedding, position table, buffer and null vector are layer 0, block ``i`` is layer
``i + 1``, the final norm and the head layer ``depth + 1``; scale
``layer_decay ** (depth + 1 − layer)``). Not done (deviation, documented): RandAugment, mixup /
cutmix, drop path; no EMA of the weights by default (``--ema-decay 0``: the engine's EMA then
equals the trained weights, which are evaluated).

At the end the trained network's top-1 on the **test** split is printed and written to
``OUTPUT/result.json``; running the same command on a finished folder re-evaluates it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from djepa.core.cli import flat_dict, is_rank_zero, parse, run_main, UserError, with_cpu_speed
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.train.checkpoint import one_writer
from djepa.core.train.config import TrainConfig

__all__ = ["EncoderClassifier", "ClassifierOutput", "ImageFinetuneConfig", "FINETUNE_DEFAULTS",
           "evaluate_top1", "run", "main"]

# Engine settings of the fine-tuning CLI where they differ from the core TrainConfig defaults
# (MAE / I-JEPA fine-tuning: AdamW β2 0.999, wd 0.05, warm-up + cosine; no EMA; short CPU runs).
FINETUNE_DEFAULTS: dict = dict(
    output_dir="runs/finetune", max_steps=1000, micro_batch_size=64, lr=5e-4, lr_schedule="cosine",
    warmup_steps=100, min_lr=1e-6, weight_decay=0.05, betas=(0.9, 0.999), ema_decay=0.0,
    checkpoint_every=500, sample_every=0, log_every=50)


class ClassifierOutput(NamedTuple):
    """One training forward: ``loss`` (cross-entropy with label smoothing, scalar float32) and
    ``top1`` (share of the batch classified right, detached; logged by the engine)."""

    loss: Tensor
    top1: Tensor


class EncoderClassifier(nn.Module):
    """φ (a :class:`~djepa.core.model.ContextEncoder`) + global average pool + linear head.

    Args:
        config: the D-JEPA config φ is built from (its ``condition`` must be ``"class"`` or
            ``"none"``).
        num_classes: classes of the head.
        layer_decay: layer-wise lr decay (1.0 = none).
        label_smoothing: of the training cross-entropy.

    Shapes: ``tokens [B, N, D]`` float (the config's full grid) → logits ``[B, num_classes]``.

    Raises:
        ValueError: a sequence-conditioned config, ``layer_decay`` outside (0, 1],
            ``num_classes < 1``.
    """

    no_weight_decay_prefixes = ("encoder.token_embed.", "encoder.buffer", "encoder.pos_embed", "null")

    def __init__(self, config: Any, num_classes: int, *, layer_decay: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        from djepa.core.model import ContextEncoder

        if config.condition == "sequence":
            raise ValueError("fine-tuning takes class-conditional or unconditional image runs "
                             "(this run's encoder reads a condition sequence)")
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer decay must be in (0, 1], got {layer_decay}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config
        self.layer_decay = float(layer_decay)
        self.label_smoothing = float(label_smoothing)
        self.encoder = ContextEncoder(config)
        self.null = nn.Parameter(torch.zeros(1, config.encoder_dim)) if config.condition == "class" else None
        self.head = nn.Linear(config.encoder_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE fine-tuning head init
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_djepa(cls, model: Any, num_classes: int, **kw: Any) -> "EncoderClassifier":
        """φ and the null condition vector copied from a :class:`~djepa.core.model.DJEPA`
        (its weights as they are: EMA weights from :func:`djepa.core.runs.load_run`)."""
        clf = cls(model.config, num_classes, **kw)
        clf.encoder.load_state_dict(model.encoder.state_dict(), strict=True)
        vec = model.null_state(1).vector
        if clf.null is not None:
            if vec is None:
                raise ValueError("the model's null condition has no vector")
            with torch.no_grad():
                clf.null.copy_(vec.detach().reshape(1, -1).to(clf.null.dtype))
        return clf.to(next(model.parameters()).device)

    def features(self, tokens: Tensor) -> Tensor:
        """``[B, N, D]`` → ``[B, E]``: mean of φ's outputs over the N image tokens (buffer dropped)."""
        cond = None if self.null is None else self.null.expand(tokens.shape[0], -1)
        out = self.encoder(tokens.to(self.encoder.token_embed.weight.dtype), cond, None)
        return out[:, self.config.buffer_size:].mean(1)

    def logits(self, tokens: Tensor) -> Tensor:
        """``[B, N, D]`` → ``[B, num_classes]``."""
        return self.head(self.features(tokens))

    def forward(self, tokens: Tensor, labels: Tensor, *, target_model: Any = None) -> ClassifierOutput:
        """Cross-entropy on ``labels [B]`` int64 (``target_model``, passed by the engine, is not used)."""
        logits = self.logits(tokens)
        loss = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        top1 = (logits.detach().argmax(-1) == labels).float().mean()
        return ClassifierOutput(loss, top1)

    def layer_id(self, name: str) -> int:
        """BEiT / MAE layer id of a parameter name: embeddings, buffer, null → 0; block i → i + 1;
        final norm and head → depth + 1."""
        depth = len(self.encoder.blocks)
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("encoder.norm.", "head.")):
            return depth + 1
        return 0

    def param_lr_scales(self) -> dict[str, float]:
        """``{name: layer_decay ** (depth + 1 − layer_id)}`` (read by
        :func:`djepa.core.train.param_groups`)."""
        depth = len(self.encoder.blocks)
        return {n: self.layer_decay ** (depth + 1 - self.layer_id(n)) for n, _ in self.named_parameters()}


@torch.no_grad()
def evaluate_top1(model: EncoderClassifier, tokenizer: Any, dataset: Any, *, batch_size: int = 256,
                  device: torch.device | str = "cpu", progress: bool = True) -> float:
    """Top-1 of ``model`` (eval mode) on ``(image, label)`` items, in ``[0, 1]``."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from djepa.image.features import encode_images

    was = model.training
    model.eval()
    right = total = 0
    try:
        for images, y in tqdm(DataLoader(dataset, batch_size=batch_size), desc="test top-1",
                              disable=not progress, unit="batch"):
            tokens = encode_images(tokenizer, images.to(device).float())
            pred = model.logits(tokens).argmax(-1).cpu()
            right += int((pred == y.reshape(-1)).sum())
            total += len(y)
    finally:
        model.train(was)
    if total == 0:
        raise ValueError("no test images to score")
    return right / total


def _default_train() -> TrainConfig:
    return TrainConfig(**FINETUNE_DEFAULTS)


@dataclass(frozen=True)
class ImageFinetuneConfig:
    """Fine-tune an image run's context encoder with a linear head (paper App. E.2, Table 10)."""

    checkpoint: str
    """The pre-trained image run: a run folder (its pretrained/ EMA export), a save_pretrained
    folder, or RUN/checkpoints/step_XXXXXXXX. With --from-scratch only its architecture is used."""
    dataset: Literal["digits", "idx", "imagefolder"] | None = None
    """Labelled data set (default: the one the run was trained on)."""
    data_dir: str | None = None
    """Folder of the IDX files / ImageFolder root (default: the run's)."""
    from_scratch: bool = False
    """Train the same network from random weights (seeded by --seed) — Table 10's baseline."""
    layer_decay: float = 0.75
    """Layer-wise lr decay (1.0 = none; MAE: 0.65 for B, 0.75 for L)."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy (MAE / I-JEPA fine-tuning: 0.1)."""
    max_train: int | None = None
    """Train on the first N train images only (default: all)."""
    max_test: int | None = None
    """Score the first N test images only (default: all)."""
    eval_batch_size: int = 256
    """Images per forward when scoring the test split."""
    train: TrainConfig = field(default_factory=_default_train)
    """The training engine (core TrainConfig; fine-tuning defaults FINETUNE_DEFAULTS)."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


@one_writer("cfg.train")
def run(cfg: ImageFinetuneConfig) -> dict:
    """Fine-tune (or resume), then score on test; returns the result dict.

    Raises:
        UserError / ValueError / FileNotFoundError: a non-image or non-run checkpoint, bad
        flags, missing data (one line each through :func:`main`).
    """
    from djepa.core.config import config_to_dict
    from djepa.core.model import DJEPA
    from djepa.core.pretrained import atomic_write_text
    from djepa.core.train import train
    from djepa.image.features import encode_images
    from djepa.image.probe import build_split, data_source, load_image_run

    if cfg.eval_batch_size < 1:
        raise UserError("--eval-batch-size must be >= 1")
    loaded, tokenizer = load_image_run(cfg.checkpoint, "cpu", prog="image-finetune")
    if loaded.model.config.condition == "sequence":
        raise UserError(f"{cfg.checkpoint}: image-finetune takes class-conditional or unconditional "
                        f"image runs (this one reads a condition sequence)")
    name, data_dir = data_source(loaded, cfg.dataset, cfg.data_dir)
    train_ds = build_split(name, data_dir, tokenizer, "train", cfg.max_train)
    num_classes = int(getattr(train_ds, "num_classes"))
    kw = dict(layer_decay=cfg.layer_decay, label_smoothing=cfg.label_smoothing)
    torch.manual_seed(cfg.train.seed)
    source = DJEPA(loaded.model.config).eval() if cfg.from_scratch else loaded.model
    model = EncoderClassifier.from_djepa(source, num_classes, **kw).train()
    del source

    def prepare_batch(batch, device):
        images, labels = batch
        return {"tokens": encode_images(tokenizer, images.to(device, non_blocking=True).float()),
                "labels": labels.to(device, non_blocking=True)}

    side = tokenizer.image_size
    classifier_info = dict(source=str(cfg.checkpoint), source_weights=str(loaded.weights),
                           from_scratch=cfg.from_scratch, num_classes=num_classes,
                           layer_decay=cfg.layer_decay, label_smoothing=cfg.label_smoothing,
                           encoder_model=config_to_dict(loaded.model.config))
    data_info = dict(dataset=name, data_dir=data_dir, image_size=list(side) if isinstance(side, tuple) else side,
                     max_train=cfg.max_train)
    t0 = time.perf_counter()
    result = train(model, train_ds, cfg.train, prepare_batch=prepare_batch,
                   config_to_save={"finetune": flat_dict(cfg), "classifier": classifier_info,
                                   "tokenizer": dict(loaded.tokenizer_config), "data": data_info},
                   must_match=("classifier", "tokenizer", "data"))
    train_seconds = time.perf_counter() - t0
    summary: dict[str, Any] = dict(step=result.step, resumed_from=result.resumed_from,
                                   from_scratch=cfg.from_scratch, checkpoint=str(cfg.checkpoint),
                                   train_seconds=round(train_seconds, 2), last_losses=result.last_losses)
    if result.interrupted:
        if is_rank_zero():
            print(f"image-finetune: interrupted at step {result.step}; checkpoint written; run the "
                  f"same command to resume", file=sys.stderr)
        summary["interrupted"] = True
        return summary
    if not result.finished:
        if is_rank_zero():
            print(f"image-finetune: stopped at step {result.step} of {cfg.train.max_steps} "
                  f"(--stop-at-step); run the same command to continue", file=sys.stderr)
        return summary
    if not is_rank_zero():
        return summary
    device = next(result.ema.module.parameters()).device
    test_ds = build_split(name, data_dir, tokenizer, "test", cfg.max_test)
    t1 = time.perf_counter()
    top1 = evaluate_top1(result.ema.module, tokenizer, test_ds, batch_size=cfg.eval_batch_size,
                         device=device, progress=cfg.train.progress_bar)
    summary.update(top1=top1, num_test=len(test_ds), eval_seconds=round(time.perf_counter() - t1, 2),
                   ema_decay=cfg.train.ema_decay)
    out = Path(cfg.train.output_dir)
    atomic_write_text(out / "result.json", json.dumps(summary, indent=2, default=str) + "\n")
    what = "from scratch" if cfg.from_scratch else f"from {cfg.checkpoint}"
    print(f"image-finetune: test top-1 {100 * top1:.2f} % on {len(test_ds)} images after "
          f"{result.step} steps ({what}); {out / 'result.json'}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-finetune``: 0 done (or stopped at --stop-at-step), 130
    interrupted (checkpoint written), 2 bad input."""
    def go() -> int:
        res = run(with_cpu_speed(parse(ImageFinetuneConfig, argv, prog="image-finetune")))
        return 130 if res.get("interrupted") else 0

    return run_main("image-finetune", go)


if __name__ == "__main__":
    raise SystemExit(main())
