"""Training configuration (paper App. B; DESIGN.md §4) and its DeepSpeed translation.

Defaults follow the paper / FIDELITY.md "Training": AdamW β = (0.9, 0.95), base lr 1e-4 per
256 samples (``lr = blr · global_batch / 256``), weight decay 0.02 (paper: linear 0.02 → 0.2,
set ``weight_decay_end=0.2``), gradient clipping 3.0, bf16, EMA decay 0.9999.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

__all__ = ["TrainConfig", "deepspeed_config"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything the engine needs besides the model and the data.

    The CLIs nest this class (:func:`djepa.core.cli.parse`, no prefix: ``--max-steps``);
    ``micro_batch_size`` / ``grad_accum_steps`` keep the flags ``--batch-size`` / ``--grad-accum``.

    Attributes:
        output_dir: run directory (``checkpoints/``, ``tensorboard/``, ``samples/``,
            ``pretrained/``, ``config.json``).
        max_steps: optimizer steps of the whole run (schedules are defined over it).
        micro_batch_size: samples per rank per forward.
        grad_accum_steps: micro-batches per optimizer step;
            global batch = micro_batch_size · grad_accum_steps · world_size.
        blr: base learning rate per 256 samples; ``lr = blr · global_batch / 256``.
        lr: absolute peak learning rate; overrides ``blr`` when set.
        lr_schedule: ``"constant"`` after warm-up (paper) or ``"cosine"`` decay to ``min_lr``.
        warmup_steps: linear warm-up length in optimizer steps (paper: 100 epochs).
        min_lr: floor of the cosine schedule.
        weight_decay: AdamW weight decay (start value when ``weight_decay_end`` is set).
        weight_decay_end: when set, wd goes linearly from ``weight_decay`` to this value over the
            run (paper: 0.02 → 0.2).
        betas: AdamW (β1, β2).
        eps: AdamW ε.
        grad_clip: global gradient-norm clip (0 disables).
        zero_stage: DeepSpeed ZeRO stage 0, 1 or 2 (3 is refused: see ``engine``).
        precision: ``"fp32"``; ``"bf16"`` = fp32 master weights + ``torch.autocast(bfloat16)``
            forward; ``"fp16"`` = DeepSpeed fp16 with dynamic loss scaling.
        ema_decay: EMA decay of the target encoder / sampling weights
            (:class:`djepa.core.ema.EMA`; on resume the configured value is used, the EMA weights
            and update count are restored).
        ema_warmup_steps: linear ramp of the EMA decay over this many steps (0 = constant).
        checkpoint_every: write a checkpoint every N steps (and always at the end / on stop).
        keep_last: number of complete checkpoints kept.
        sample_every: call ``sample_fn`` every N steps (0 = never).
        log_every: TensorBoard / log-line period in steps.
        seed: seeds data order (same on every rank) and the model's randomness (seed + rank).
        num_workers: DataLoader workers.
        max_nonfinite_steps: stop with an error after this many consecutive steps with a
            non-finite loss or gradient.
        resume: ``"auto"`` (resume if a complete checkpoint exists), ``True`` (must resume) or
            ``False`` (must start fresh; refuses a directory that already has checkpoints);
            ``"yes"`` / ``"no"`` (the CLI spelling) are stored as ``True`` / ``False``.
        stop_at_step: end this invocation after this step (checkpoint written), leaving the
            schedules defined over ``max_steps`` — for time-limited jobs and resume tests.
        tensorboard: write TensorBoard scalars (rank 0 only).
        progress_bar: show a tqdm progress bar (rank 0 only).
        verify_checksums: record and verify sha256 of every checkpoint file (sizes always).
        deepspeed_log_level: level of DeepSpeed's own logger.
    """

    output_dir: str
    max_steps: int
    micro_batch_size: Annotated[int, tyro.conf.arg(name="batch_size")]
    grad_accum_steps: Annotated[int, tyro.conf.arg(name="grad_accum")] = 1
    blr: float = 1e-4
    lr: float | None = None
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0
    weight_decay: float = 0.02
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 3.0
    zero_stage: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    ema_decay: float = 0.9999
    ema_warmup_steps: int = 0
    checkpoint_every: int = 1000
    keep_last: int = 2
    sample_every: int = 0
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    max_nonfinite_steps: int = 20
    resume: bool | Literal["auto", "yes", "no"] = "auto"
    stop_at_step: int | None = None
    tensorboard: bool = True
    progress_bar: bool = True
    verify_checksums: bool = True
    deepspeed_log_level: str = "warning"

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", str(Path(self.output_dir)))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.resume in ("yes", "no"):
            object.__setattr__(self, "resume", self.resume == "yes")
        for name in ("max_steps", "micro_batch_size", "grad_accum_steps", "checkpoint_every",
                     "keep_last", "log_every", "max_nonfinite_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.sample_every < 0 or self.num_workers < 0:
            raise ValueError("warmup_steps, sample_every and num_workers must be >= 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.resume not in (True, False, "auto"):
            raise ValueError(f"resume must be True, False or 'auto', got {self.resume!r}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ValueError(f"stop_at_step must be >= 1, got {self.stop_at_step}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")

    def global_batch_size(self, world_size: int) -> int:
        """micro_batch_size · grad_accum_steps · world_size."""
        return self.micro_batch_size * self.grad_accum_steps * world_size

    def peak_lr(self, world_size: int) -> float:
        """``lr`` if set, else ``blr · global_batch / 256`` (paper App. B)."""
        if self.lr is not None:
            return float(self.lr)
        return self.blr * self.global_batch_size(world_size) / 256.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for ``cfg``.

    bf16 is *not* DeepSpeed's ``bf16`` section (that keeps bf16 module weights and would make the
    EMA read rounded weights): DeepSpeed runs in fp32 and the engine wraps the forward in
    ``torch.autocast(bfloat16)``, as MAR and the official D-JEPA code do (fp32 gradients and
    all-reduce). fp16 uses DeepSpeed's fp16 mode with dynamic loss scaling.
    """
    ds: dict[str, Any] = {
        "train_batch_size": cfg.global_batch_size(world_size),
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": float(cfg.grad_clip),
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": int(cfg.zero_stage)},
    }
    if cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                      "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    return ds
