"""The training loop: one code path from a laptop CPU to multi-node GPUs (DESIGN.md §4).

``train(model, dataset, cfg)`` wraps ``model`` in a DeepSpeed engine (client AdamW with two
parameter groups, ZeRO stage 0/1/2, gradient clipping and accumulation), keeps an fp32
:class:`~djepa.core.ema.EMA` that is passed to the model as its target encoder on every step,
writes verified checkpoints, and logs to a progress bar and TensorBoard.

Model contract: ``model(**prepare(batch), target_model=ema.module)`` — the modality's prepare
step returns the keyword arguments (default ``{"tokens": [B, N, D] float, "labels": [B] int64}``;
``tokens`` may be a :class:`~djepa.core.batch.TokenBatch`, and any condition key the model
takes, e.g. ``condition=SequenceInput(...)``)
returns a NamedTuple whose first field is the total ``loss`` (scalar) and whose other fields are
loss parts (D-JEPA: ``DJEPAOutput(loss, token_loss, prediction_loss)``); all fields are logged.
The model draws its training randomness from torch's global RNG, which is seeded with
``cfg.seed + rank`` and checkpointed per rank, so a resumed run continues bit-for-bit.

Precision (decision):
    * ``fp32``: DeepSpeed fp32.
    * ``bf16``: DeepSpeed fp32 + ``torch.autocast(device, bfloat16)`` around the forward, as MAR
      and the official D-JEPA code do: parameters, gradients, gradient all-reduce, AdamW state
      and the EMA all stay fp32, so the EMA recurrence is exact. (DeepSpeed's ``bf16`` section
      keeps bf16 module weights; its ``torch_autocast`` section reduces Linear gradients in bf16 —
      both deviate from the reference and were not used.)
    * ``fp16``: DeepSpeed fp16 (fp16 weights, fp32 master copy in the optimizer, dynamic loss
      scaling) with autocast(float16) so the fp32 EMA target encoder accepts fp16 inputs; the EMA
      reads the fp16 weights (rounded) — prefer bf16. Overflow steps skipped by the loss scaler
      do not update the EMA. Not exercised by the CPU tests.

ZeRO stage 3 (decision): refused with a ``ValueError`` — the EMA update and the target-encoder
forward read full parameters every step, which stage 3 partitions; stages 1/2 replicate them.

Non-finite losses: the loss parts of every micro-batch are all-reduced *before* backward, so
every rank sees the same verdict. With ``grad_accum_steps == 1`` the step is skipped entirely
(no backward, no DeepSpeed step: optimizer, loss scaler and EMA untouched; the data position and
the step counter advance). With accumulation, the bad micro-batch contributes a zero gradient
(a ``0·Σθ`` backward keeps DeepSpeed's micro-step counter aligned) and the update uses the
remaining micro-batches; when *every* micro-batch of the step is bad, the boundary
``engine.step()`` runs with the client optimizer's ``step`` disabled (:func:`_optimizer_held`),
so DeepSpeed's bookkeeping advances but weights, AdamW moments / step counts and the EMA stay
bit-identical (a zero-gradient AdamW step would still apply weight decay and moment decay).

Non-finite gradients with a finite loss (an overflow in backward) are caught on the
accumulation boundary, before the update, without an extra sync: ZeRO stage 0 checks the global
norm it already computes for logging and holds the optimizer as above; ZeRO 1/2 rely on
DeepSpeed's own check (its ZeRO optimizer computes the all-reduced global norm and, for fp32
parameters, skips the update when it is non-finite: ``was_step_applied()`` is False). Such a
step is treated like a non-finite-loss step. With ``fp16`` a non-finite gradient is a loss-scale
overflow that the loss scaler handles (step skipped, EMA untouched, not counted).

Every skipped step (non-finite loss or gradient) is warned and counted; after
``max_nonfinite_steps`` consecutive ones :class:`NonFiniteLossError` is raised without writing
a checkpoint (the last good one stays).

EMA on resume: weights and ``num_updates`` (so the warm-up continues) come from the checkpoint;
the decay is the configured ``cfg.ema_decay`` (one log line when the saved one differs).

Run folder (trust boundary, :mod:`djepa.core.train.checkpoint`): ``train`` holds the folder's
lock for its whole duration (a second run on it is refused), reads DeepSpeed's files with
``weights_only=True`` and an allow-list, and refuses instead of restarting at step 0 when no
checkpoint verifies.

SIGINT / SIGTERM: a flag is set; it is all-reduced with the next loss, the current step
finishes, a checkpoint is written and ``train`` returns (``TrainResult.interrupted``).

Previews: every ``cfg.sample_every`` steps rank 0 calls the modality's
:class:`~djepa.core.train.preview.PreviewHook` on the EMA model; the hook writes its own media
(PNG grid, mp4, wav) under ``RUN/samples`` and may hand back one image for TensorBoard.

How ``train`` reads (one piece per function, in call order): :func:`_setup` (distributed init,
seeding, AdamW, DeepSpeed, EMA) → :func:`_resume` (choose / check / load a checkpoint, or write
``config.json``) → the step loop in :func:`train`: :func:`_optimizer_step` (one optimizer step of
``grad_accum_steps`` micro-batches, EMA update), :func:`_count_skip` (non-finite bookkeeping),
:func:`_log_step`, :func:`_preview`, :func:`_save_checkpoint` on the checkpoint cadence → the
final checkpoint and :func:`_export`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from djepa.core.batch import TokenBatch
from djepa.core.config import with_saved_defaults
from djepa.core.ema import EMA
from djepa.core.train import checkpoint as ckpt
from djepa.core.train import distributed as D
from djepa.core.train.config import TrainConfig, deepspeed_config
from djepa.core.train.data import ResumableLoader, ShardedOrder
from djepa.core.train.observe import Observer
from djepa.core.train.params import param_groups
from djepa.core.train.preview import PreviewHook, PreviewRequest, image_grid_preview
from djepa.core.train.schedules import lr_at, weight_decay_at

__all__ = ["train", "TrainResult", "NonFiniteLossError"]

StepCallback = Callable[[int, dict[str, float], nn.Module, EMA], None]


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses / gradients; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        step: optimizer steps done (including skipped ones).
        last_losses: loss parts of the last finite step, averaged over micro-batches and ranks.
        skipped_steps: steps with a non-finite loss or gradient (whole run, incl. before resume).
        output_dir: the run directory.
        finished: ``step >= cfg.max_steps``.
        interrupted: stopped by SIGINT / SIGTERM.
        resumed_from: checkpoint tag the run resumed from (``None`` = fresh start).
        ema: the EMA (its ``module`` is the sampling model).
    """

    step: int
    last_losses: dict[str, float]
    skipped_steps: int
    output_dir: Path
    finished: bool
    interrupted: bool
    resumed_from: str | None
    ema: EMA


class _StopFlag:
    """Set by SIGINT/SIGTERM; handlers are installed only in the main thread and restored."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _cast_tokens(tokens: Any, dtype: torch.dtype) -> Any:
    """Floating tokens (a tensor or a TokenBatch's) cast to ``dtype``; anything else unchanged."""
    if isinstance(tokens, TokenBatch):
        return tokens.to(tokens.tokens.device, dtype) if tokens.tokens.is_floating_point() else tokens
    if isinstance(tokens, Tensor) and tokens.is_floating_point():
        return tokens.to(dtype)
    return tokens


def _default_prepare(batch: Any, device: torch.device) -> dict[str, Tensor]:
    if isinstance(batch, Mapping):
        tokens, labels = batch["tokens"], batch["labels"]
    else:
        tokens, labels = batch[0], batch[1]
    nb = device.type == "cuda"
    return {"tokens": tokens.to(device, non_blocking=nb), "labels": labels.to(device, non_blocking=nb)}


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _zero_loss(module: nn.Module) -> Tensor:
    """0 · Σθ: a finite loss whose gradient is exactly zero for every trainable parameter."""
    return sum((p.sum() * 0.0 for p in module.parameters() if p.requires_grad),
               torch.zeros((), device=next(module.parameters()).device))


@contextlib.contextmanager
def _optimizer_held(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block, ``optimizer.step()`` does nothing.

    Wrap a boundary ``engine.step()`` with it to skip the update but keep DeepSpeed's state
    consistent: its micro-step / global-step counters advance, gradients (and ZeRO's reduced
    gradient buffers) are cleared, and ZeRO copies the unchanged fp32 partitions back into the
    parameters, so weights and AdamW state (moments, step counts) stay bit-identical. DeepSpeed
    keeps the client optimizer object (stage 0: as ``engine.optimizer``; ZeRO 1/2 and fp16:
    wrapped), so the instance attribute shadows the method everywhere.
    """
    optimizer.step = lambda *args, **kwargs: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del optimizer.step


def _grad_norm(module: nn.Module) -> float:
    """Global L2 norm of the (all-reduced, unclipped) gradients — ZeRO stage 0 only."""
    sq = [p.grad.detach().float().pow(2).sum() for p in module.parameters() if p.grad is not None]
    return float(torch.stack(sq).sum().sqrt()) if sq else 0.0


def _as_float(x: Any) -> float | None:
    if x is None:
        return None
    if isinstance(x, Tensor):
        return float(x.detach().float().item())
    return float(x)


def _save_ema(path: Path, ema: EMA) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in ema.module.state_dict().items()}
    save_file(tensors, str(path), metadata={"num_updates": str(ema.num_updates),
                                            "decay": repr(ema.decay)})


def _load_ema(path: Path, ema: EMA, device: torch.device) -> float | None:
    """Load the EMA weights and ``num_updates`` of ``path``; ``ema.decay`` (configured) is kept.

    Returns:
        the decay saved in the metadata (``None`` if absent), for the caller to report.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path), device=str(device))
        ema.load_state_dict({"module": state, "num_updates": int(meta.get("num_updates", 0)),
                             "decay": ema.decay})
        return float(meta["decay"]) if "decay" in meta else None
    except Exception as e:  # safetensors' own error types, a bad key set, bad metadata
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ckpt.CheckpointError(f"{path}: unreadable EMA state ({first})") from None


def _check_resume_compatible(out: Path, ckpt_dir: Path, cfg: TrainConfig, world: int,
                             config_to_save: Mapping[str, Any] | None, must_match: tuple[str, ...],
                             model_config_type: type | None = None) -> None:
    """Refuse to resume a checkpoint written by a different run setup (clear one-line errors).

    The saved ``model`` section is read as ``model_config_type`` (the model's config dataclass)
    reads it (:func:`~djepa.core.config.with_saved_defaults`): a field the old file predates
    counts as the value the old run used (``projector_order`` absent = ``"norm_first"``), so a
    model built with today's default for it is refused rather than silently switched.

    Raises:
        djepa.core.train.checkpoint.CheckpointError: another model/data section, ZeRO stage,
            precision, or (ZeRO >= 1) world size than the checkpoint was written with.
    """
    saved_cfg_path = out / "config.json"
    if config_to_save and saved_cfg_path.is_file():
        saved_cfg = json.loads(saved_cfg_path.read_text())
        if model_config_type is not None and "model" in saved_cfg:
            saved_cfg["model"] = with_saved_defaults(model_config_type, saved_cfg["model"])
        now = json.loads(json.dumps(dict(config_to_save), default=str))
        for section in must_match:
            if section in now and section in saved_cfg and now[section] != saved_cfg[section]:
                a, b = now[section], saved_cfg[section]
                keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if isinstance(a, dict) and isinstance(b, dict) else [section]
                raise ckpt.CheckpointError(
                    f"{out} holds a run with a different {section!r} configuration (differs in {keys}); "
                    f"use another --output-dir, or resume with the original settings")
    state = ckpt.read_trainer_state(ckpt_dir)
    for key, now_value in (("zero_stage", cfg.zero_stage), ("precision", cfg.precision)):
        if key in state and state[key] != now_value:
            raise ckpt.CheckpointError(
                f"{ckpt_dir} was written with {key}={state[key]!r}, this run uses {now_value!r}; "
                f"resume with the same {key}")
    if cfg.zero_stage >= 1 and state.get("world_size", world) != world:
        raise ckpt.CheckpointError(
            f"{ckpt_dir} was written by {state['world_size']} processes with ZeRO stage "
            f"{cfg.zero_stage} (optimizer state partitioned); resume with {state['world_size']} processes")


# --- the pieces of a run, in the order train() uses them ---------------------------------------

@dataclass
class _Run:
    """What every piece of a run reads, built once by :func:`_setup` (read-only afterwards)."""

    cfg: TrainConfig
    rank: int
    world: int
    out: Path                                  # the run folder
    root: Path                                 # out / "checkpoints"
    engine: Any                                # the DeepSpeed engine
    optimizer: torch.optim.Optimizer           # the client AdamW (held by _optimizer_held)
    ema: EMA                                   # fp32 EMA = target encoder = sampling model
    device: torch.device
    prepare: Callable[[Any, torch.device], Mapping[str, Any]]
    autocast: Callable[[], Any]                # the forward's precision context
    in_dtype: torch.dtype | None               # fp16: tokens cast to the fp16 weights' dtype
    manual_norm: bool                          # ZeRO 0 (not fp16): we compute the grad norm
    gas: int                                   # micro-batches per optimizer step
    global_batch: int                          # samples per optimizer step, all ranks


def _setup(model: nn.Module, cfg: TrainConfig,
           prepare_batch: Callable[[Any, torch.device], Mapping[str, Any]] | None) -> _Run:
    """Distributed init, seeding, the client AdamW, the DeepSpeed engine and the EMA.

    Raises:
        ValueError: ZeRO stage 3. RuntimeError: DeepSpeed dropped the parameter-group flags.
    """
    if cfg.zero_stage == 3:
        raise ValueError(
            "ZeRO stage 3 is not supported: the EMA update and the EMA target-encoder forward "
            "need full parameters after every step, which stage 3 partitions across ranks. "
            "Use zero_stage 1 or 2 (parameters replicated, optimizer state / gradients sharded).")
    D.init_distributed()
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(getattr(logging, cfg.deepspeed_log_level.upper(), logging.WARNING))
    rank, world = D.rank(), D.world_size()
    _seed_all(cfg.seed + rank)
    # Fused AdamW (one kernel for all tensors; CPU and CUDA in torch >= 2.4): same update rule,
    # rounding-level differences; much less per-parameter overhead at ZeRO stage 0.
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr_at(0, cfg, world),
                                  betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                  fused=True)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           config=deepspeed_config(cfg, world))
    ckpt.safe_checkpoint_engine(engine)  # DeepSpeed's default engine unpickles with any global
    device = engine.device if isinstance(engine.device, torch.device) else torch.device(engine.device)
    ema = EMA(engine.module, decay=cfg.ema_decay, warmup=cfg.ema_warmup_steps or None).to(device)
    if not all("djepa_decay" in g for g in engine.optimizer.param_groups):
        raise RuntimeError("DeepSpeed dropped the parameter-group flags; cannot schedule weight decay")
    if cfg.precision == "bf16":
        autocast: Callable[[], Any] = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    elif cfg.precision == "fp16":
        autocast = lambda: torch.autocast(device.type, dtype=torch.float16)
    else:
        autocast = contextlib.nullcontext
    out = Path(cfg.output_dir)
    return _Run(cfg=cfg, rank=rank, world=world, out=out, root=out / "checkpoints", engine=engine,
                optimizer=optimizer, ema=ema, device=device,
                prepare=prepare_batch or _default_prepare, autocast=autocast,
                in_dtype=torch.float16 if cfg.precision == "fp16" else None,
                manual_norm=cfg.zero_stage == 0 and cfg.precision != "fp16",
                gas=cfg.grad_accum_steps, global_batch=cfg.global_batch_size(world))


def _fresh_state() -> dict[str, Any]:
    """The trainer state a new run starts from (checkpointed as ``trainer_state.json``)."""
    return {"step": 0, "epoch": 0, "batch_index": 0, "skipped_total": 0,
            "consecutive_nonfinite": 0, "samples_seen": 0}


def _resume(run: _Run, model: nn.Module, config_to_save: Mapping[str, Any] | None,
            must_match: tuple[str, ...]) -> tuple[str | None, dict[str, Any]]:
    """Choose the checkpoint (rank 0, broadcast), check it fits this run, load DeepSpeed's
    state, the EMA, the trainer state and the RNG; or, on a fresh start, write ``config.json``.

    Returns:
        ``(tag, state)``: the checkpoint resumed from (``None`` = fresh start) and the trainer
        state to continue from.

    Raises:
        As :func:`train` (CheckpointError, FileExistsError).
    """
    cfg, rank, world, out, root = run.cfg, run.rank, run.world, run.out, run.root
    obs = Observer(out, active=rank == 0, start_step=0, max_steps=cfg.max_steps,
                   tensorboard=False, progress_bar=False)  # logging only until we know the step
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        tag, err = ckpt.choose_checkpoint(root, cfg.resume, checksums=cfg.verify_checksums,
                                          log=obs.log)
    else:
        tag, err = None, None
    tag, err = D.broadcast_object((tag, err))
    if err is not None:
        raise (FileExistsError(err) if cfg.resume is False else ckpt.CheckpointError(err))

    state = _fresh_state()
    if tag is not None:
        model_cfg = getattr(model, "config", None)
        _check_resume_compatible(out, root / tag, cfg, world, config_to_save, must_match,
                                 type(model_cfg) if dataclasses.is_dataclass(model_cfg) else None)
        load_path, _ = run.engine.load_checkpoint(str(root), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False,
                                                  load_module_strict=True)
        if load_path is None:
            raise ckpt.CheckpointError(f"DeepSpeed could not load {root / tag}")
        ema = run.ema
        saved_decay = _load_ema(root / tag / "ema.safetensors", ema, run.device)
        if saved_decay is not None and saved_decay != ema.decay:
            obs.log(f"EMA decay {ema.decay!r} (configured) replaces {saved_decay!r} (saved in "
                    f"{tag}); num_updates {ema.num_updates} restored")
        saved = ckpt.read_trainer_state(root / tag)
        state.update({k: saved[k] for k in state})
        if saved.get("world_size") != world or saved.get("micro_batch_size") != cfg.micro_batch_size:
            obs.log(f"WARNING: resuming {tag} with world size {world} / micro-batch "
                    f"{cfg.micro_batch_size} (saved: {saved.get('world_size')} / "
                    f"{saved.get('micro_batch_size')}): the data order is not continued exactly")
        if not ckpt.load_rng(root / tag, rank):
            _seed_all(cfg.seed + rank + 7919 * state["step"])
        obs.log(f"resumed from {root / tag} at step {state['step']}")
    elif rank == 0:
        ckpt.atomic_write_text(out / "config.json", json.dumps(
            {**dict(config_to_save or {}), "train": cfg.to_dict(), "world_size": world},
            indent=2, sort_keys=True, default=str))
    D.barrier()
    return tag, state


@dataclass
class _StepOutcome:
    """What one optimizer step (:func:`_optimizer_step`) did."""

    lr: float
    wd: float
    sums: Tensor | None          # loss parts summed over the finite micro-batches and ranks
    names: list[str]             # the loss parts' names (the model output's fields)
    bad: int                     # micro-batches with a non-finite loss
    bad_grad: bool               # non-finite gradient on the boundary (update held / skipped)
    stop_any: bool               # some rank got SIGINT / SIGTERM
    stage0_norm: float | None    # ZeRO 0: the global grad norm we computed
    applied: bool                # the update happened (the EMA was updated)
    decay: float | None          # the EMA decay used (None: no EMA update)

    @property
    def skipped(self) -> bool:
        return self.bad > 0 or self.bad_grad


def _optimizer_step(run: _Run, loader: ResumableLoader, step: int, stop_flag: _StopFlag) -> _StepOutcome:
    """One optimizer step of ``run.gas`` micro-batches: schedules, forward, the all-reduced
    finiteness verdict (with the stop flag), backward, DeepSpeed's step (held when nothing
    finite contributed or the gradient is non-finite) and the EMA update (module docstring)."""
    cfg, engine, device, gas = run.cfg, run.engine, run.device, run.gas
    lr, wd = lr_at(step, cfg, run.world), weight_decay_at(step, cfg)
    for g in engine.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)  # lr_scale: params.param_groups (layer-wise decay)
        g["weight_decay"] = wd if g["djepa_decay"] else 0.0
    sums: Tensor | None = None
    stage0_norm: float | None = None
    names: list[str] = []
    bad, bad_grad, stop_any = 0, False, False
    for _ in range(gas):
        inputs = dict(run.prepare(next(loader), device))
        if run.in_dtype is not None:  # DeepSpeed fp16 holds fp16 weights
            inputs["tokens"] = _cast_tokens(inputs["tokens"], run.in_dtype)
        with run.autocast():  # the model gets whatever the modality's prepare returned
            res = engine(**inputs, target_model=run.ema.module)
        parts = res._asdict() if hasattr(res, "_asdict") else {"loss": res}
        names = list(parts)
        vec = torch.stack([v.detach().float().reshape(()) for v in parts.values()]
                          + [torch.tensor(float(stop_flag.requested), device=device)])
        D.all_reduce_sum(vec)
        stop_any = stop_any or bool(vec[-1] > 0)
        vec = vec[:-1]
        finite = bool(torch.isfinite(vec).all())
        if finite:
            sums = vec if sums is None else sums + vec
        else:
            bad += 1
        if finite or gas > 1:  # gas == 1 and bad: no backward, no DeepSpeed step
            engine.backward(parts["loss"] if finite else _zero_loss(engine.module))
            boundary = engine.is_gradient_accumulation_boundary()
            hold = boundary and bad == gas  # no micro-batch contributed
            if boundary and run.manual_norm and not hold:
                stage0_norm = _grad_norm(engine.module)  # DeepSpeed reports none
                hold = bad_grad = not math.isfinite(stage0_norm)
            with _optimizer_held(run.optimizer) if hold else contextlib.nullcontext():
                engine.step()
            if boundary and not hold and cfg.precision != "fp16" and not engine.was_step_applied():
                bad_grad = True  # ZeRO 1/2 skipped it: non-finite global norm
        del res, parts
    applied = bad < gas and not bad_grad and engine.was_step_applied()
    decay = run.ema.update(engine.module) if applied else None
    return _StepOutcome(lr=lr, wd=wd, sums=sums, names=names, bad=bad, bad_grad=bad_grad,
                        stop_any=stop_any, stage0_norm=stage0_norm, applied=applied, decay=decay)


def _count_skip(run: _Run, state: dict[str, Any], res: _StepOutcome, step: int, obs: Observer) -> None:
    """Update the skipped-step counters; warn for a skipped step.

    Raises:
        NonFiniteLossError: ``cfg.max_nonfinite_steps`` consecutive skipped steps.
    """
    if not res.skipped:
        state["consecutive_nonfinite"] = 0
        return
    cfg, gas = run.cfg, run.gas
    state["skipped_total"] += 1
    state["consecutive_nonfinite"] += 1
    what = ([f"non-finite loss in {res.bad}/{gas} micro-batch(es)"] if res.bad else []) \
        + (["non-finite gradient"] if res.bad_grad else [])
    msg = (f"step {step}: {', '.join(what)} "
           f"(consecutive {state['consecutive_nonfinite']}, total {state['skipped_total']}); "
           + ("bad micro-batches dropped" if res.applied else "step skipped"))
    if run.rank == 0:
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    obs.log("WARNING: " + msg)
    if state["consecutive_nonfinite"] >= cfg.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{state['consecutive_nonfinite']} consecutive steps with a non-finite "
            f"loss or gradient (limit max_nonfinite_steps={cfg.max_nonfinite_steps}); "
            f"stopped at step {step}; last good checkpoint: {ckpt.read_latest(run.root)}")


@dataclass
class _LogClock:
    """When and at which step the last log line was written (for its it/s)."""

    time: float
    step: int


def _log_step(run: _Run, obs: Observer, step: int, res: _StepOutcome, losses: dict[str, float],
              seconds: float, clock: _LogClock, state: dict[str, Any]) -> None:
    """TensorBoard scalars and one log line for ``step`` (every ``cfg.log_every`` steps)."""
    gnorm = (res.stage0_norm if run.manual_norm else
             _as_float(run.engine.get_global_grad_norm())) if res.applied else None
    now = time.perf_counter()
    scalars = {f"loss/{n}": v for n, v in losses.items()}
    scalars.update({"opt/lr": res.lr, "opt/weight_decay": res.wd, "opt/grad_norm": gnorm,
                    "ema/decay": res.decay, "perf/samples_per_s": run.global_batch / seconds,
                    "perf/skipped_steps": float(state["skipped_total"])})
    obs.scalars(step, scalars)
    parts_txt = " ".join(f"{n} {v:.4f}" for n, v in losses.items())
    obs.log(f"step {step}/{run.cfg.max_steps} {parts_txt} lr {res.lr:.3g} wd {res.wd:.3g} "
            f"grad_norm {gnorm if gnorm is None else f'{gnorm:.3g}'} "
            f"{(step - clock.step) / max(now - clock.time, 1e-9):.2f} it/s")
    clock.time, clock.step = now, step


def _preview(run: _Run, hook: PreviewHook, step: int, obs: Observer) -> None:
    """Call the modality's preview hook on the EMA model (rank 0, no grad); log its files and
    add its image, if any, to TensorBoard."""
    request = PreviewRequest(step=step, samples_dir=run.out / "samples", device=run.device,
                             seed=run.cfg.seed)
    with torch.no_grad():
        preview = hook(run.ema.module, request)
    if preview.tensorboard_image is not None:
        obs.image(step, "samples", preview.tensorboard_image)
    files = ", ".join(str(p) for p in preview.files) or "nothing"
    obs.log(f"samples written to {files}")


def _save_checkpoint(run: _Run, loader: ResumableLoader, state: dict[str, Any], step: int,
                     obs: Observer) -> None:
    """Write ``checkpoints/step_N`` (all ranks): DeepSpeed's files, RNG per rank, the EMA and
    the trainer state, then the manifest, its verification, ``latest`` and pruning."""
    cfg, rank, root = run.cfg, run.rank, run.root
    tag_now = ckpt.tag_for_step(step)
    ckpt_dir = root / tag_now
    if rank == 0:
        ckpt.set_aside(root, tag_now, obs.log)  # a stale, unconfirmed one with the same tag
    D.barrier()
    with ckpt.writing(ckpt_dir, rank):
        run.engine.save_checkpoint(str(root), tag=tag_now, client_state={"djepa_step": step},
                                   save_latest=False)
        ckpt.save_rng(ckpt_dir, rank)
        if rank == 0:
            _save_ema(ckpt_dir / "ema.safetensors", run.ema)
            epoch, batch_index = loader.position
            trainer_state = dict(state, step=step, epoch=epoch, batch_index=batch_index,
                                 world_size=run.world, micro_batch_size=cfg.micro_batch_size,
                                 zero_stage=cfg.zero_stage, precision=cfg.precision,
                                 grad_accum_steps=run.gas, ema_num_updates=run.ema.num_updates,
                                 train_config=cfg.to_dict())
            ckpt.atomic_write_text(ckpt_dir / "trainer_state.json",
                                   json.dumps(trainer_state, indent=1, sort_keys=True))
        D.barrier()
        if rank == 0:
            ckpt.write_manifest(ckpt_dir, checksums=cfg.verify_checksums)
            ckpt.verify(ckpt_dir, checksums=cfg.verify_checksums)
    if rank == 0:
        ckpt.write_latest(root, tag_now)
        ckpt.prune(root, cfg.keep_last, protect=tag_now)
    D.barrier()


def _export(run: _Run, obs: Observer) -> None:
    """Rank 0: the EMA model's ``save_pretrained`` into ``RUN/pretrained`` (if it has one)."""
    if run.rank == 0 and hasattr(run.ema.module, "save_pretrained"):
        run.ema.module.save_pretrained(run.out / "pretrained")
        obs.log(f"EMA weights exported to {run.out / 'pretrained'}")


@ckpt.one_writer("cfg")
def train(model: nn.Module, dataset: Dataset, cfg: TrainConfig, *,
          prepare_batch: Callable[[Any, torch.device], Mapping[str, Tensor]] | None = None,
          preview: PreviewHook | None = None,
          sample_fn: Callable[[nn.Module, int], Tensor] | None = None,
          config_to_save: Mapping[str, Any] | None = None,
          collate_fn: Callable[[list[Any]], Any] | None = None,
          must_match: tuple[str, ...] = ("model",),
          step_callback: StepCallback | None = None) -> TrainResult:
    """Train ``model`` on ``dataset`` with DeepSpeed; resume, checkpoint, log, export.

    Args:
        model: an ``nn.Module`` following the contract in the module docstring (CPU or any
            device; DeepSpeed moves it). Its ``no_weight_decay_prefixes`` (if any) select the
            parameters without weight decay, together with every ``ndim <= 1`` parameter.
        dataset: map-style dataset; read in the seeded, rank-sharded order of
            :class:`~djepa.core.train.data.ShardedOrder`.
        cfg: the :class:`TrainConfig`.
        prepare_batch: ``(collated_batch, device) -> {"tokens": [B, N, D] float,
            "labels": [B] int64}`` on ``device`` (e.g. sampling VAE posteriors); default: the
            batch is ``(tokens, labels)`` or a dict with those keys.
        preview: the modality's :class:`~djepa.core.train.preview.PreviewHook`
            ``(ema_module, PreviewRequest) -> Preview``, called on rank 0 under ``no_grad``
            every ``cfg.sample_every`` steps; it writes its own media under ``RUN/samples``
            (PNG, mp4, wav, …) and may return one image for TensorBoard.
        sample_fn: shorthand for ``preview=image_grid_preview(sample_fn)``:
            ``(ema_module, step) -> images [B, C, H, W] in [0, 1]``, tiled into
            ``samples/step_XXXXXXXX.png`` and TensorBoard.
        config_to_save: JSON-safe mapping (model / data / tokenizer sections) written to
            ``output_dir/config.json`` next to the ``train`` section and ``world_size``.
        collate_fn: DataLoader collate function (default: ``default_collate``).
        must_match: sections of ``config_to_save`` that must equal the run folder's saved
            ``config.json`` to resume (a different model or data in the same folder is refused
            instead of silently continuing the old run).
        step_callback: ``(step, losses, module, ema)`` after every step (all ranks).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: ZeRO stage 3; a dataset smaller than one micro-batch per rank; both
            ``preview`` and ``sample_fn``.
        NonFiniteLossError: ``cfg.max_nonfinite_steps`` consecutive steps with a non-finite
            loss or gradient.
        djepa.core.train.checkpoint.CheckpointError: ``resume=True`` without a complete,
            verified checkpoint; no checkpoint verifies although one was confirmed
            (:func:`~djepa.core.train.checkpoint.choose_checkpoint`); a checkpoint file that
            references anything but tensors and DeepSpeed's known types (never unpickled);
            a malformed ``checkpoints/latest``; no space left while writing a checkpoint.
        djepa.core.train.checkpoint.RunFolderBusy: another live run holds ``output_dir``.
        FileExistsError: ``resume=False`` but ``output_dir`` already holds checkpoints.

    Warns:
        RuntimeWarning: a rejected checkpoint (message names the bad file) before falling back
            to the previous one; every step with a non-finite loss or gradient.
    """
    if preview is not None and sample_fn is not None:
        raise ValueError("pass preview or sample_fn, not both")
    if sample_fn is not None:
        preview = image_grid_preview(sample_fn)
    run = _setup(model, cfg, prepare_batch)
    tag, state = _resume(run, model, config_to_save, must_match)
    order = ShardedOrder(len(dataset), cfg.micro_batch_size, run.rank, run.world, cfg.seed)  # type: ignore[arg-type]
    loader = ResumableLoader(dataset, order, num_workers=cfg.num_workers, collate_fn=collate_fn,
                             pin_memory=run.device.type == "cuda", epoch=state["epoch"],
                             batch_index=state["batch_index"])
    step = int(state["step"])
    end = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    obs = Observer(run.out, active=run.rank == 0, start_step=step, max_steps=cfg.max_steps,
                   tensorboard=cfg.tensorboard, progress_bar=cfg.progress_bar)

    run.engine.train()
    last_losses: dict[str, float] = {}
    last_saved = step if tag is not None else -1
    interrupted = False
    clock = _LogClock(time.perf_counter(), step)
    try:
        with _StopFlag() as stop_flag:
            while step < end:
                t0 = time.perf_counter()
                res = _optimizer_step(run, loader, step, stop_flag)
                step += 1
                state["samples_seen"] += run.global_batch
                _count_skip(run, state, res, step, obs)
                if res.sums is not None:
                    last_losses = {n: float(v) / ((run.gas - res.bad) * run.world)
                                   for n, v in zip(res.names, res.sums)}
                dt = time.perf_counter() - t0
                obs.step(step, last_losses)
                if step_callback is not None:
                    step_callback(step, dict(last_losses), run.engine.module, run.ema)
                if step % cfg.log_every == 0 or step == end:
                    _log_step(run, obs, step, res, last_losses, dt, clock, state)
                if preview is not None and cfg.sample_every and step % cfg.sample_every == 0 \
                        and run.rank == 0:
                    _preview(run, preview, step, obs)
                periodic = step % cfg.checkpoint_every == 0 and not state["consecutive_nonfinite"]
                if res.stop_any or step == end or periodic:  # no periodic save inside a NaN streak
                    _save_checkpoint(run, loader, state, step, obs)
                    last_saved = step
                if res.stop_any:
                    interrupted = True
                    obs.log(f"stop requested: checkpoint {ckpt.tag_for_step(step)} written, exiting")
                    break
        if step > last_saved and not interrupted:
            _save_checkpoint(run, loader, state, step, obs)
        finished = step >= cfg.max_steps
        if finished:
            _export(run, obs)
        D.barrier()
    finally:
        obs.close()
    return TrainResult(step=step, last_losses=last_losses, skipped_steps=state["skipped_total"],
                       output_dir=run.out, finished=finished, interrupted=interrupted,
                       resumed_from=tag, ema=run.ema)
