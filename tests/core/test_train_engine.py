"""In-process (one rank, gloo, CPU) tests of ``djepa.core.train.train`` on DeepSpeed.

All runs of this module share one process, so DeepSpeed's process group is set up once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from djepa.core.train import CheckpointError, NonFiniteLossError, TrainConfig, train
from djepa.core.safe_load import torch_load
from djepa.core.train.checkpoint import deepspeed_safe_globals
from djepa.core.train.selftest import ToyDJEPA, toy_dataset



def _cfg(out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), max_steps=6, micro_batch_size=8, zero_stage=2,
                precision="fp32", lr=3e-3, weight_decay=0.0, ema_decay=0.9, grad_clip=3.0,
                tensorboard=False, progress_bar=False, log_every=100, checkpoint_every=1000)
    base.update(kw)
    return TrainConfig(**base)


def _toy(seed: int = 0, **kw) -> ToyDJEPA:
    torch.manual_seed(seed)
    return ToyDJEPA(**kw)


def _run(out: Path, model=None, data=None, **kw):
    losses: list[dict[str, float]] = []
    res = train(model if model is not None else _toy(), data if data is not None else toy_dataset(8),
                _cfg(out, **kw), step_callback=lambda s, l, m, e: losses.append(l))
    return res, [l["loss"] for l in losses]


@pytest.mark.parametrize("stage,precision", [(0, "fp32"), (1, "fp32"), (1, "bf16"),
                                             (2, "fp32"), (2, "bf16"), (2, "fp16")])
def test_stages_and_precisions_train(tmp_path, stage, precision):
    if precision == "fp16":
        from deepspeed.accelerator import get_accelerator

        if not get_accelerator().is_fp16_supported():  # DeepSpeed's CPU accelerator needs AMX/AVX-512 fp16
            pytest.skip("DeepSpeed says fp16 is not supported on this device")
    # One fixed batch (dataset = micro-batch): full-batch descent, the loss must go down.
    res, losses = _run(tmp_path, zero_stage=stage, precision=precision, max_steps=8,
                       weight_decay=0.05, weight_decay_end=0.1)
    assert len(losses) == 8 and all(math.isfinite(l) for l in losses)
    assert losses[-1] < 0.9 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 6
    assert res.finished and res.skipped_steps == 0
    # every file DeepSpeed wrote loads with weights_only=True and the allow-list (resume path)
    files = sorted((Path(res.output_dir) / "checkpoints").rglob("*.pt"))
    assert files and all(isinstance(torch_load(f, allow=deepspeed_safe_globals()), dict)
                         for f in files)


def test_zero3_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ZeRO stage 3 is not supported"):
        train(_toy(), toy_dataset(8), _cfg(tmp_path, zero_stage=3))


def test_ema_equals_recurrence_on_recorded_history_and_observability(tmp_path):
    model = _toy(1)
    history = [{n: p.detach().double().clone() for n, p in model.named_parameters()}]

    def record(step, losses, module, ema):
        history.append({n: p.detach().double().clone() for n, p in module.named_parameters()})

    res = train(model, toy_dataset(16), _cfg(tmp_path, max_steps=6, ema_decay=0.7,
                                             ema_warmup_steps=3, tensorboard=True, log_every=2,
                                             progress_bar=True,
                                             sample_every=3),
                step_callback=record,
                sample_fn=lambda m, step: torch.rand(4, 3, 8, 8))
    assert len(history) == 7
    for name, p in res.ema.module.named_parameters():
        e = history[0][name]
        for k, h in enumerate(history[1:]):
            d = 0.7 * min(1.0, k / 3)                     # linear warm-up of the decay
            e = d * e + (1 - d) * h[name]
        torch.testing.assert_close(p.double(), e, rtol=1e-5, atol=1e-6)
    # the EMA differs from the live weights (it is not a copy)
    assert not torch.allclose(res.ema.module.token_loss[0].weight, model.token_loss[0].weight)
    out = Path(res.output_dir)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_00000003.png",
                                                                    "step_00000006.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert {"loss/loss", "loss/token_loss", "loss/prediction_loss", "opt/lr", "opt/weight_decay",
            "opt/grad_norm", "ema/decay", "perf/samples_per_s"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("ema/decay")] == [2, 4, 6]
    assert [e.value for e in acc.Scalars("ema/decay")] == pytest.approx([0.7 / 3, 0.7, 0.7])
    assert "samples" in acc.Tags()["images"]


def _ckpt_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor reachable in a DeepSpeed checkpoint file, by path."""
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix, x):
        if isinstance(x, torch.Tensor):
            flat[prefix] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(f"{prefix}/{i}", v)

    walk("", torch_load(path, allow=deepspeed_safe_globals()))
    return flat


def test_stop_resume_finish_equals_uninterrupted(tmp_path):
    # noise_std > 0: the model draws from the global RNG, so RNG restore is exercised too;
    # 24 samples / micro-batch 8 = 3 batches per epoch: the run crosses epochs, stop mid-epoch.
    kw = dict(max_steps=7, ema_decay=0.8, weight_decay=0.05, weight_decay_end=0.2,
              lr_schedule="cosine", warmup_steps=2)
    data = toy_dataset(24)
    full, full_losses = _run(tmp_path / "full", _toy(2, noise_std=0.3), data, **kw)
    part, part_losses = _run(tmp_path / "resumed", _toy(2, noise_std=0.3), data, stop_at_step=4, **kw)
    assert part.step == 4 and not part.finished
    rest, rest_losses = _run(tmp_path / "resumed", _toy(99, noise_std=0.3), data, **kw)
    assert rest.resumed_from == "step_00000004" and rest.finished
    assert part_losses + rest_losses == full_losses              # bit-identical trajectory
    a = Path(full.output_dir) / "checkpoints" / "step_00000007"
    b = Path(rest.output_dir) / "checkpoints" / "step_00000007"
    counts = {}
    for fname in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        ta, tb = _ckpt_tensors(a / fname), _ckpt_tensors(b / fname)
        counts[fname] = len(ta)
        assert ta.keys() == tb.keys() and len(ta) >= 8
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{fname}{k} differs"
    ea, eb = load_file(a / "ema.safetensors"), load_file(b / "ema.safetensors")
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    sa = json.loads((a / "trainer_state.json").read_text())
    sb = json.loads((b / "trainer_state.json").read_text())
    for key in ("step", "epoch", "batch_index", "ema_num_updates", "samples_seen"):
        assert sa[key] == sb[key]
    assert (sa["epoch"], sa["batch_index"]) == (2, 1)
    print(f"\nresume equality (bit-identical): tensors per file {counts}, {len(ea)} EMA tensors; "
          f"losses {['%.6f' % l for l in full_losses]}")


def test_truncated_checkpoint_is_rejected_and_previous_is_used(tmp_path):
    res, _ = _run(tmp_path, max_steps=4, checkpoint_every=2, keep_last=3)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000004"
    bad = root / "step_00000004" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    with open(bad, "r+b") as f:
        f.truncate(bad.stat().st_size // 2)
    with pytest.warns(RuntimeWarning, match=r"step_00000004/zero_pp_rank_0_mp_rank_00_optim_states"
                                            r"\.pt: size \d+ bytes, manifest says \d+"):
        res2, _ = _run(tmp_path, max_steps=6, checkpoint_every=2, keep_last=3)
    assert res2.resumed_from == "step_00000002" and res2.step == 6
    assert (root / "latest").read_text().strip() == "step_00000006"
    # nothing usable at all + resume=True → a clear error
    for d in root.glob("step_*"):
        (d / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no complete, verified checkpoint"), \
            pytest.warns(RuntimeWarning, match="no manifest.json"):
        _run(tmp_path, max_steps=8, resume=True)
    with pytest.raises(FileExistsError, match="resume=False"):
        _run(tmp_path, max_steps=8, resume=False)


class _NaNAtStep(ToyDJEPA):
    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls, self.calls = set(bad_calls), 0

    def forward(self, tokens, labels, *, target_model=None):
        out = super().forward(tokens, labels, target_model=target_model)
        self.calls += 1
        if self.calls in self.bad_calls:
            return out._replace(loss=out.loss * float("nan"))
        return out


def test_nonfinite_loss_skips_the_step_then_stops(tmp_path):
    torch.manual_seed(3)
    model = _NaNAtStep(bad_calls={3})
    snaps = {}

    def record(step, losses, module, ema):
        snaps[step] = [p.detach().clone() for p in module.parameters()]

    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        res = train(model, toy_dataset(8), _cfg(tmp_path / "a", max_steps=5), step_callback=record)
    assert res.skipped_steps == 1 and res.finished and math.isfinite(res.last_losses["loss"])
    assert all(torch.equal(a, b) for a, b in zip(snaps[2], snaps[3]))      # step 3 skipped
    assert not all(torch.equal(a, b) for a, b in zip(snaps[3], snaps[4]))
    assert res.ema.num_updates == 4
    torch.manual_seed(3)
    with pytest.raises(NonFiniteLossError, match="3 consecutive"), pytest.warns(RuntimeWarning):
        train(_NaNAtStep(bad_calls={2, 3, 4}), toy_dataset(8),
              _cfg(tmp_path / "b", max_steps=6, max_nonfinite_steps=3, checkpoint_every=1))
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step_00000001"


def _ckpt_dir_tensors(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint: DeepSpeed files (weights, fp32 partitions, AdamW moments
    and step counts) and the EMA."""
    flat = {f"{f.name}{k}": v for f in sorted(ckpt_dir.glob("*_states.pt"))
            for k, v in _ckpt_tensors(f).items()}
    flat.update({f"ema/{k}": v for k, v in load_file(ckpt_dir / "ema.safetensors").items()})
    return flat


def _assert_step_left_no_trace(root: Path, before: int, after: int) -> None:
    a = _ckpt_dir_tensors(root / f"step_{before:08d}")
    b = _ckpt_dir_tensors(root / f"step_{after:08d}")
    assert a.keys() == b.keys()
    assert any("exp_avg_sq" in k for k in a) and any("ema/" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} changed by the skipped step {after}"


class _PoisonGrad(torch.autograd.Function):
    """Identity forward; backward returns ``value`` everywhere: a finite loss whose gradient is
    non-finite (an overflow in backward)."""

    @staticmethod
    def forward(ctx, x, value):
        ctx.value = value
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, ctx.value), None


class _BadGradAtCall(ToyDJEPA):
    """Non-finite gradients of every parameter upstream of the prediction loss (the token-loss
    head's stay finite) on the chosen forward calls; the loss values are unchanged."""

    def __init__(self, bad_calls, value):
        super().__init__()
        self.bad_calls, self.calls, self.value = set(bad_calls), 0, value

    def forward(self, tokens, labels, *, target_model=None):
        out = super().forward(tokens, labels, target_model=target_model)
        self.calls += 1
        if self.calls in self.bad_calls:
            pred = _PoisonGrad.apply(out.prediction_loss, self.value)
            return out._replace(loss=out.token_loss + pred, prediction_loss=pred)
        return out


@pytest.mark.parametrize("stage,precision,value", [(0, "fp32", float("nan")),
                                                   (1, "bf16", float("inf")),
                                                   (2, "fp32", float("nan"))])
def test_nonfinite_gradient_with_finite_loss_skips_the_step(tmp_path, stage, precision, value):
    torch.manual_seed(3)
    model = _BadGradAtCall(bad_calls={3}, value=value)
    snaps, losses = {}, {}

    def record(step, l, module, ema):
        snaps[step] = [p.detach().clone() for p in module.parameters()]
        losses[step] = l["loss"]

    kw = dict(max_steps=5, zero_stage=stage, precision=precision, weight_decay=0.05,
              checkpoint_every=1, keep_last=10)
    # stop at the bad step (no periodic checkpoint inside a non-finite streak), then resume
    with pytest.warns(RuntimeWarning, match=r"step 3: non-finite gradient \(consecutive 1, "
                                            r"total 1\); step skipped"):
        train(model, toy_dataset(8), _cfg(tmp_path, stop_at_step=3, **kw), step_callback=record)
    res = train(_BadGradAtCall(bad_calls=(), value=value), toy_dataset(8), _cfg(tmp_path, **kw),
                step_callback=record)
    assert res.resumed_from == "step_00000003" and res.finished
    assert res.skipped_steps == 1 and res.ema.num_updates == 4
    assert all(math.isfinite(l) for l in losses.values())
    assert all(torch.equal(a, b) for a, b in zip(snaps[2], snaps[3]))      # nothing applied
    assert not any(torch.equal(a, b) for a, b in zip(snaps[3], snaps[4]))  # training goes on
    assert all(torch.isfinite(p).all() for p in snaps[5])
    assert all(torch.isfinite(p).all() for p in res.ema.module.parameters())
    _assert_step_left_no_trace(tmp_path / "checkpoints", 2, 3)  # weights, AdamW state, EMA
    state = json.loads((tmp_path / "checkpoints" / "step_00000003"
                        / "trainer_state.json").read_text())
    assert (state["skipped_total"], state["consecutive_nonfinite"]) == (1, 1)


@pytest.mark.parametrize("stage", [0, 2])
def test_grad_accumulation_all_micro_batches_nonfinite_leaves_no_trace(tmp_path, stage):
    # gas=2: calls 5 and 6 are both micro-batches of step 3. A zero-gradient AdamW step would
    # still apply weight decay and move the weights with the decaying moments.
    torch.manual_seed(3)
    model = _NaNAtStep(bad_calls={5, 6})
    snaps = {}

    def record(step, losses, module, ema):
        snaps[step] = [p.detach().clone() for p in module.parameters()]

    kw = dict(max_steps=5, zero_stage=stage, micro_batch_size=4, grad_accum_steps=2,
              weight_decay=0.05, checkpoint_every=1, keep_last=10)
    with pytest.warns(RuntimeWarning, match=r"step 3: non-finite loss in 2/2 .*step skipped"):
        train(model, toy_dataset(16), _cfg(tmp_path, stop_at_step=3, **kw), step_callback=record)
    res = train(_NaNAtStep(bad_calls=()), toy_dataset(16), _cfg(tmp_path, **kw),
                step_callback=record)
    assert res.resumed_from == "step_00000003" and res.finished
    assert res.skipped_steps == 1 and res.ema.num_updates == 4
    assert all(torch.equal(a, b) for a, b in zip(snaps[2], snaps[3]))
    assert not any(torch.equal(a, b) for a, b in zip(snaps[3], snaps[4]))
    assert not any(torch.equal(a, b) for a, b in zip(snaps[4], snaps[5]))
    _assert_step_left_no_trace(tmp_path / "checkpoints", 2, 3)


class _BadGradThenNaNLoss(_BadGradAtCall):
    def forward(self, tokens, labels, *, target_model=None):
        out = super().forward(tokens, labels, target_model=target_model)
        return out._replace(loss=out.loss * float("nan")) if self.calls in self.nan_calls else out


@pytest.mark.parametrize("stage", [0, 2])
def test_grad_accumulation_nonfinite_gradient_then_nonfinite_loss(tmp_path, stage):
    # step 2 = calls 3, 4: a NaN gradient with a finite loss, then a NaN loss on the boundary
    # micro-batch; the gradient must still be checked before the update.
    torch.manual_seed(3)
    model = _BadGradThenNaNLoss(bad_calls={3}, value=float("nan"))
    model.nan_calls = {4}
    snaps = {}

    def record(step, losses, module, ema):
        snaps[step] = [p.detach().clone() for p in module.parameters()]

    with pytest.warns(RuntimeWarning, match=r"step 2: non-finite loss in 1/2 micro-batch\(es\), "
                                            r"non-finite gradient .*step skipped"):
        res = train(model, toy_dataset(16), _cfg(tmp_path, max_steps=3, zero_stage=stage,
                                                 micro_batch_size=4, grad_accum_steps=2),
                    step_callback=record)
    assert res.skipped_steps == 1 and res.ema.num_updates == 2
    assert all(torch.equal(a, b) for a, b in zip(snaps[1], snaps[2]))
    assert all(torch.isfinite(p).all() for p in snaps[3])


def test_resume_uses_the_configured_ema_decay(tmp_path, capsys):
    data = toy_dataset(16)
    _run(tmp_path, _toy(5), data, max_steps=4, stop_at_step=2, ema_decay=0.9, ema_warmup_steps=3)
    saved = load_file(tmp_path / "checkpoints" / "step_00000002" / "ema.safetensors")
    capsys.readouterr()
    model = _toy(6)
    history = []
    res = train(model, data, _cfg(tmp_path, max_steps=4, ema_decay=0.5, ema_warmup_steps=3),
                step_callback=lambda s, l, m, e: history.append(
                    {n: p.detach().double().clone() for n, p in m.named_parameters()}))
    assert res.resumed_from == "step_00000002" and res.ema.decay == 0.5
    lines = [l for l in capsys.readouterr().out.splitlines() if "EMA decay" in l]
    assert len(lines) == 1 and "0.5" in lines[0] and "0.9" in lines[0]
    for name, p in res.ema.module.named_parameters():
        e = saved[name].double()
        for k, h in zip((2, 3), history):        # num_updates restored: warm-up continues at 2
            d = 0.5 * min(1.0, k / 3)
            e = d * e + (1 - d) * h[name]
        torch.testing.assert_close(p.double(), e, rtol=1e-6, atol=1e-7)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoints" / "step_00000004" / "ema.safetensors"), "pt") as f:
        assert float(f.metadata()["decay"]) == 0.5
    # resuming with the saved decay logs nothing
    train(_toy(6), data, _cfg(tmp_path, max_steps=5, ema_decay=0.5, ema_warmup_steps=3))
    assert "EMA decay" not in capsys.readouterr().out


def test_tiny_djepa_trains_and_exports(tmp_path):
    from djepa.core.config import preset
    from djepa.core.model import DJEPA

    torch.manual_seed(0)
    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10))
    res, losses = _run(tmp_path, model=model, data=toy_dataset(16), max_steps=4, micro_batch_size=4,
                       precision="bf16", zero_stage=2, lr=1e-3, weight_decay=0.02)
    assert all(math.isfinite(l) for l in losses) and res.finished
    assert set(res.last_losses) == {"loss", "token_loss", "prediction_loss"}
    assert res.last_losses["prediction_loss"] > 0
    assert (tmp_path / "pretrained").is_dir() and any((tmp_path / "pretrained").iterdir())


def test_grad_accumulation_matches_larger_micro_batch(tmp_path):
    data = toy_dataset(32)
    _, big = _run(tmp_path / "big", _toy(4), data, micro_batch_size=8, max_steps=4)
    _, acc = _run(tmp_path / "acc", _toy(4), data, micro_batch_size=4, grad_accum_steps=2,
                  max_steps=4)
    # With one rank, micro-batches 2k and 2k+1 of size 4 hold exactly batch k of size 8.
    assert acc == pytest.approx(big, rel=1e-5)


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    import os
    import signal

    def kill_at_2(step, losses, module, ema):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    res = train(_toy(), toy_dataset(8), _cfg(tmp_path, max_steps=10), step_callback=kill_at_2)
    assert res.interrupted and not res.finished and res.step == 3   # flag seen at step 3's reduce
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) is before                  # handler restored
    res2, _ = _run(tmp_path, max_steps=10)
    assert res2.resumed_from == "step_00000003" and res2.finished
