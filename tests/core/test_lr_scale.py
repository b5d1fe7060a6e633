"""Per-parameter learning-rate scales (``param_lr_scales``, used by layer-wise lr decay in
fine-tuning): the groups they make, and that the engine applies ``scale · lr``."""

from __future__ import annotations

import math

import pytest
import torch

from djepa.core.train import TrainConfig, param_groups, train
from djepa.core.train.selftest import ToyDJEPA, toy_dataset


class ScaledToy(ToyDJEPA):
    """The toy with encoder weights at lr scale 0, predictor at 0.5, the rest 1."""

    def param_lr_scales(self) -> dict[str, float]:
        out = {}
        for n, _ in self.named_parameters():
            if n.startswith("encoder."):
                out[n] = 0.0
            elif n.startswith("predictor."):
                out[n] = 0.5
        return out


def test_groups_split_by_decay_and_scale():
    torch.manual_seed(0)
    model = ScaledToy()
    groups = param_groups(model, 0.05)
    ids = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for g in groups:
        names = {ids[id(p)] for p in g["params"]}
        seen += names
        want = {0.0 if n.startswith("encoder.") else 0.5 if n.startswith("predictor.") else 1.0 for n in names}
        assert want == {g["lr_scale"]}
        assert g["weight_decay"] == (0.05 if g["djepa_decay"] else 0.0)
    assert sorted(seen) == sorted(n for n, _ in model.named_parameters())  # each once
    # the plain model: two groups, no lr_scale key (unchanged behaviour)
    assert all("lr_scale" not in g for g in param_groups(ToyDJEPA(), 0.05))


def test_bad_scales_are_refused():
    class Bad(ToyDJEPA):
        def param_lr_scales(self):
            return {"nope.weight": 1.0}

    with pytest.raises(ValueError, match="unknown parameters"):
        param_groups(Bad(), 0.0)

    class Neg(ToyDJEPA):
        def param_lr_scales(self):
            return {"predictor.0.weight": -1.0}

    with pytest.raises(ValueError, match="finite and >= 0"):
        param_groups(Neg(), 0.0)


def test_engine_applies_scale_times_lr(tmp_path):
    torch.manual_seed(0)
    model = ScaledToy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=2, micro_batch_size=8, zero_stage=0,
                      precision="fp32", lr=1e-2, weight_decay=0.1, ema_decay=0.0, grad_clip=0.0,
                      tensorboard=False, progress_bar=False, checkpoint_every=1000, log_every=100)
    res = train(model, toy_dataset(8), cfg)
    after = dict(res.ema.module.named_parameters())  # ema_decay 0: the live weights
    for n, p in before.items():
        moved = (after[n].detach() - p).abs().max().item()
        if n.startswith("encoder."):
            assert moved == 0.0, n  # lr scale 0 (weight decay is lr-scaled too in AdamW)
        else:
            assert moved > 0.0, n
    # AdamW's first steps move each weight by about lr · scale (|m / sqrt(v)| ≈ 1): the
    # predictor (0.5) moves about half as far as the token-loss head (1.0)
    pred = max((after[n] - before[n]).abs().max().item() for n in before if n.startswith("predictor."))
    head = max((after[n] - before[n]).abs().max().item() for n in before if n.startswith("token_loss."))
    assert math.isclose(pred / head, 0.5, rel_tol=0.15), (pred, head)
