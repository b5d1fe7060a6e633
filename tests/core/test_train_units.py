"""Unit tests of the training engine's pieces that need no DeepSpeed: schedules, parameter
groups, data order, EMA, checkpoint manifests, PNG grids."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch
from torch import nn

from djepa.core.ema import EMA
from djepa.core.train import TrainConfig, lr_at, no_weight_decay_names, param_groups, weight_decay_at
from djepa.core.train import checkpoint as ckpt
from djepa.core.train.data import ResumableLoader, ShardedOrder
from djepa.core.train.observe import make_grid, write_png
from djepa.core.train.selftest import ToyDJEPA, toy_dataset


def _cfg(**kw):
    base = dict(output_dir="/tmp/unused", max_steps=100, micro_batch_size=8)
    base.update(kw)
    return TrainConfig(**base)


# --- schedules ---------------------------------------------------------------------------------

def test_lr_scaling_warmup_constant_and_cosine():
    cfg = _cfg(blr=1e-4, micro_batch_size=32, grad_accum_steps=2, warmup_steps=10)
    # lr = blr * global_batch / 256 with global batch 32*2*4 = 256 on 4 ranks
    assert cfg.peak_lr(4) == pytest.approx(1e-4)
    assert cfg.peak_lr(8) == pytest.approx(2e-4)
    assert lr_at(0, cfg, 4) == pytest.approx(1e-4 * 1 / 10)
    assert lr_at(9, cfg, 4) == pytest.approx(1e-4)
    assert lr_at(57, cfg, 4) == pytest.approx(1e-4)
    assert _cfg(lr=3e-3).peak_lr(16) == 3e-3
    cos = _cfg(lr=1.0, min_lr=0.1, lr_schedule="cosine", warmup_steps=20, max_steps=120)
    assert lr_at(20, cos, 1) == pytest.approx(1.0)
    assert lr_at(70, cos, 1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(120, cos, 1) == pytest.approx(0.1)


def test_weight_decay_constant_and_linear():
    assert weight_decay_at(37, _cfg(weight_decay=0.05)) == 0.05
    cfg = _cfg(weight_decay=0.02, weight_decay_end=0.2, max_steps=11)
    assert weight_decay_at(0, cfg) == pytest.approx(0.02)
    assert weight_decay_at(5, cfg) == pytest.approx(0.11)
    assert weight_decay_at(10, cfg) == pytest.approx(0.2)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        _cfg(precision="int8")
    with pytest.raises(ValueError):
        _cfg(micro_batch_size=0)
    with pytest.raises(ValueError):
        _cfg(resume="maybe")


# --- parameter groups --------------------------------------------------------------------------

def test_no_weight_decay_set_tiny_djepa_is_exact():
    from djepa.core.config import preset
    from djepa.core.model import DJEPA

    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10))
    # Weight decay only on the transformer blocks' matrices (official no-decay set + ndim <= 1).
    decayed = {f"{part}.blocks.{i}.{w}.weight" for part in ("encoder", "predictor") for i in (0, 1)
               for w in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed <= names
    skip = no_weight_decay_names(model)
    assert skip == names - decayed
    for must in ("encoder.token_embed.weight", "encoder.buffer", "condition.class_embed.weight",
                 "condition.null_embed", "predictor.embed.weight", "predictor.mask_token",
                 "predictor.pos_embed", "token_loss.net.input_proj.weight",
                 "prediction_loss.projector.0.weight", "encoder.norm.weight",
                 "encoder.blocks.0.attn.qkv.bias"):
        assert must in skip
    groups = param_groups(model, 0.05)
    by_flag = {g["djepa_decay"]: g for g in groups}
    assert by_flag[True]["weight_decay"] == 0.05 and by_flag[False]["weight_decay"] == 0.0
    ids = {id(p): n for n, p in model.named_parameters()}
    assert {ids[id(p)] for p in by_flag[True]["params"]} == decayed


def test_no_weight_decay_set_toy():
    skip = no_weight_decay_names(ToyDJEPA())
    assert skip == {"encoder.token_embed.weight", "encoder.token_embed.bias",
                    "encoder.blocks.0.bias", "encoder.blocks.2.bias", "encoder.norm.weight",
                    "encoder.norm.bias", "condition.class_embed.weight", "predictor.0.bias",
                    "predictor.2.bias", "token_loss.0.weight", "token_loss.0.bias",
                    "token_loss.2.weight", "token_loss.2.bias", "prediction_loss.weight",
                    "prediction_loss.bias"}


# --- data order --------------------------------------------------------------------------------

def test_two_ranks_see_the_same_samples_as_one_rank_with_double_batch():
    n, b = 37, 3
    one = ShardedOrder(n, 2 * b, rank=0, world_size=1, seed=5)
    two = [ShardedOrder(n, b, rank=r, world_size=2, seed=5) for r in range(2)]
    assert one.batches_per_epoch == two[0].batches_per_epoch == 6
    for epoch in range(3):
        ones = one.batches(epoch)
        twos = [o.batches(epoch) for o in two]
        for k in range(one.batches_per_epoch):
            assert sorted(ones[k]) == sorted(twos[0][k] + twos[1][k])
            assert not set(twos[0][k]) & set(twos[1][k])
    assert one.rank_indices(0) != one.rank_indices(1)          # reshuffled per epoch
    assert sorted(one.rank_indices(1)) == list(range(37))       # a permutation
    both = two[0].rank_indices(2) + two[1].rank_indices(2)
    assert len(both) == len(set(both)) == 36                    # drop_last truncation to 2·18


def test_loader_resumes_exactly_from_its_position():
    data = toy_dataset(n=10)
    order = ShardedOrder(10, 3, rank=0, world_size=1, seed=1)   # 3 batches / epoch
    full = ResumableLoader(data, order)
    ref = [next(full)[1].tolist() for _ in range(8)]
    part = ResumableLoader(data, order)
    head = [next(part)[1].tolist() for _ in range(4)]
    assert part.position == (1, 1)
    rest = ResumableLoader(data, order, epoch=1, batch_index=1)
    tail = [next(rest)[1].tolist() for _ in range(4)]
    assert head + tail == ref


# --- EMA ---------------------------------------------------------------------------------------

def test_ema_matches_analytic_recurrence_on_a_parameter_history():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.8)
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    history = [{n: p.detach().double().clone() for n, p in model.named_parameters()}]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        ema.update(model)
        history.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
    for name, p in ema.module.named_parameters():
        e = history[0][name]
        for h in history[1:]:
            e = 0.8 * e + 0.2 * h[name]
        torch.testing.assert_close(p.double(), e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean)  # copied


def test_ema_warmup_state_dict_and_fp32_copy():
    model = nn.Linear(2, 2).to(torch.bfloat16)
    ema = EMA(model, decay=0.9, warmup=4)
    assert ema.module.weight.dtype == torch.float32
    assert [ema.decay_at(k) for k in (0, 2, 4, 9)] == pytest.approx([0.0, 0.45, 0.9, 0.9])
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert ema.update(model) == 0.0                      # first update copies the model
    torch.testing.assert_close(ema.module.weight, torch.full((2, 2), 2.0))
    other = EMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.9
    torch.testing.assert_close(other.module.weight, ema.module.weight)
    assert EMA(model, warmup=lambda k: 0.25).decay_at(7) == 0.25


# --- checkpoints -------------------------------------------------------------------------------

def _fake_ckpt(root, step, payload=b"x" * 1000):
    d = root / ckpt.tag_for_step(step)
    (d / "rng").mkdir(parents=True)
    (d / "model.pt").write_bytes(payload)
    (d / "rng" / "rank_00000.pt").write_bytes(b"rng")
    ckpt.write_manifest(d)
    return d


def test_manifest_rejects_truncated_corrupt_and_incomplete(tmp_path):
    d = _fake_ckpt(tmp_path, 4)
    ckpt.verify(d)
    with open(d / "model.pt", "r+b") as f:
        f.truncate(500)
    with pytest.raises(ckpt.CheckpointError, match=r"model\.pt: size 500 bytes, manifest says 1000"):
        ckpt.verify(d)
    d2 = _fake_ckpt(tmp_path, 6)
    (d2 / "model.pt").write_bytes(b"y" * 1000)          # same size, different content
    with pytest.raises(ckpt.CheckpointError, match=r"model\.pt: sha256"):
        ckpt.verify(d2)
    (d2 / "rng" / "rank_00000.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"rank_00000\.pt: file listed"):
        ckpt.verify(d2, checksums=False)
    d3 = tmp_path / ckpt.tag_for_step(8)
    d3.mkdir()
    (d3 / "model.pt").write_bytes(b"z")
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.verify(d3)
    assert json.loads((d / "manifest.json").read_text())["files"]["model.pt"]["size"] == 1000


def test_candidate_order_latest_pointer_and_prune(tmp_path):
    for s in (2, 4, 6, 8):
        _fake_ckpt(tmp_path, s)
    assert ckpt.candidate_tags(tmp_path) == ["step_00000008", "step_00000006", "step_00000004",
                                             "step_00000002"]
    ckpt.write_latest(tmp_path, "step_00000006")       # step 8 never confirmed: not offered
    assert ckpt.candidate_tags(tmp_path) == ["step_00000006", "step_00000004", "step_00000002"]
    assert not list(tmp_path.glob("*.tmp.*"))
    # keep_last=2 counts the one just written and the newest older one; step 8 (newer,
    # unconfirmed: not written by this run) is never deleted
    removed = ckpt.prune(tmp_path, keep_last=2, protect="step_00000006")
    assert removed == ["step_00000002"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step_00000004",
                                                                        "step_00000006",
                                                                        "step_00000008"]


# --- sample grid -------------------------------------------------------------------------------

def test_grid_and_png_round_trip(tmp_path):
    imgs = torch.rand(5, 3, 4, 6)
    grid = make_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (3, 2 * 5 + 1, 3 * 7 + 1)
    torch.testing.assert_close(grid[:, 1 + 5:1 + 5 + 4, 1 + 7:1 + 7 + 6], imgs[4])  # row 1, col 1
    write_png(tmp_path / "g.png", grid)
    raw = (tmp_path / "g.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    idat = raw[raw.index(b"IDAT") + 4: raw.index(b"IEND") - 8]
    rows = zlib.decompress(idat)
    h, w = grid.shape[1:]
    assert len(rows) == h * (1 + 3 * w)
    px = rows[(1 + 5) * (1 + 3 * w) + 1 + 3 * (1 + 7)]    # first channel of image 4's first pixel
    assert px == int(round(float(imgs[4, 0, 0, 0]) * 255))
