"""Prediction (JEPA) loss L_p (§3.2, Eq. 2): projector u_θ + smooth-L1 over masked tokens."""

from __future__ import annotations

import math

import pytest
import torch

from djepa.core.prediction_loss import PredictionLoss


def _constant_projector(loss: PredictionLoss, value: torch.Tensor) -> None:
    """Make u_θ(z) = value for every z (last Linear: weight 0, bias = value)."""
    with torch.no_grad():
        loss.projector[-1].weight.zero_()
        loss.projector[-1].bias.copy_(value)


def _smooth_l1_ref(d: float, beta: float) -> float:
    return 0.5 * d * d / beta if abs(d) < beta else abs(d) - 0.5 * beta


def test_parameter_count_768():
    with torch.device("meta"):
        loss = PredictionLoss(768, 768)
    assert sum(p.numel() for p in loss.parameters()) == 4_728_576
    assert loss.beta == 2.0


def test_structure():
    loss = PredictionLoss(8, 5)
    lin1, ln, act, lin2 = loss.projector
    assert (lin1.in_features, lin1.out_features) == (8, 32)
    assert ln.normalized_shape == (32,) and ln.eps == 1e-6
    assert isinstance(act, torch.nn.GELU)
    assert (lin2.in_features, lin2.out_features) == (32, 5)
    assert torch.count_nonzero(lin1.bias) == 0 and torch.count_nonzero(lin2.bias) == 0


def test_zero_when_projection_equals_target():
    loss = PredictionLoss(6, 4)
    b = torch.tensor([0.5, -1.0, 2.0, 3.0])
    _constant_projector(loss, b)
    z = torch.randn(2, 5, 6)
    target = b.expand(2, 5, 4).clone()
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert loss(z, target, mask).item() == 0.0


def test_smooth_l1_hand_formula_over_masked_tokens():
    beta = 2.0
    loss = PredictionLoss(3, 2, beta=beta)
    _constant_projector(loss, torch.zeros(2))
    # differences d = 0 − target, covering |d| < β and |d| ≥ β
    target = torch.tensor([[[0.5, -1.0], [3.0, -0.1], [10.0, 10.0]], [[-2.5, 1.9], [0.0, 4.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    got = loss(torch.randn(2, 3, 3), target, mask)
    per_token = []
    for b in range(2):
        for n in range(3):
            if mask[b, n]:
                per_token.append(sum(_smooth_l1_ref(-float(v), beta) for v in target[b, n]) / 2)
    assert got.item() == pytest.approx(sum(per_token) / len(per_token), rel=1e-6)
    # β = 0.5 changes the formula accordingly
    loss05 = PredictionLoss(3, 2, beta=0.5)
    _constant_projector(loss05, torch.zeros(2))
    t1 = torch.tensor([[[0.3, 1.0]]])
    ref = (_smooth_l1_ref(-0.3, 0.5) + _smooth_l1_ref(-1.0, 0.5)) / 2
    assert loss05(torch.randn(1, 1, 3), t1, torch.ones(1, 1, dtype=torch.bool)).item() == pytest.approx(ref)


def test_masked_mean_equals_gathered_rows_and_polarity():
    torch.manual_seed(0)
    loss = PredictionLoss(4, 3)
    z, target = torch.randn(2, 6, 4), torch.randn(2, 6, 3)
    mask = torch.rand(2, 6) > 0.5
    mask[0, 0] = True
    got = loss(z, target, mask)
    ref = torch.nn.functional.smooth_l1_loss(loss.projector(z[mask]), target[mask], beta=2.0, reduction="none").mean(-1).mean()
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    # True = masked = counted: changing unmasked targets changes nothing
    target2 = target.clone()
    target2[~mask] = 50.0
    assert loss(z, target2, mask).item() == pytest.approx(got.item(), rel=1e-6)


def test_no_gradient_reaches_target_and_z_gets_one():
    loss = PredictionLoss(4, 3)
    z = torch.randn(2, 5, 4, requires_grad=True)
    target = torch.randn(2, 5, 3, requires_grad=True)
    out = loss(z, target, torch.ones(2, 5, dtype=torch.bool))
    out.backward()
    assert target.grad is None
    assert z.grad is not None and torch.count_nonzero(z.grad) > 0


def test_nothing_masked_is_finite_zero():
    loss = PredictionLoss(4, 3)
    z = torch.randn(2, 5, 4, requires_grad=True)
    out = loss(z, torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool))
    assert torch.isfinite(out) and out.item() == 0.0
    out.backward()
    assert torch.count_nonzero(z.grad) == 0


def test_bf16_autocast_reduction_in_fp32():
    loss = PredictionLoss(4, 3)
    z = torch.randn(2, 5, 4, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = loss(z, torch.randn(2, 5, 3), torch.ones(2, 5, dtype=torch.bool))
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(z.grad).all()


def test_shape_errors():
    loss = PredictionLoss(4, 3)
    with pytest.raises(ValueError):
        loss(torch.randn(2, 5, 4), torch.randn(2, 5, 2), None)
    with pytest.raises(ValueError):
        loss(torch.randn(2, 5, 4), torch.randn(2, 5, 3), torch.ones(2, 4, dtype=torch.bool))


def test_projector_runs_the_official_order_linear_gelu_layernorm_linear():
    """Official constructor: timm ``Mlp(norm_layer=...)`` = fc1 → act → norm → fc2. Reference
    written out by hand with the module's weights in float64; the old order stays behind
    ``order="norm_first"``."""
    torch.manual_seed(0)
    loss = PredictionLoss(6, 5)
    with torch.no_grad():
        for p in loss.parameters():
            p.copy_(torch.randn_like(p))
    lin1, ln, _, lin2 = loss.projector
    z = torch.randn(4, 6, dtype=torch.float64)
    w = {n: p.detach().double() for n, p in loss.projector.named_parameters()}

    def layernorm(h):
        mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-6) * w["1.weight"] + w["1.bias"]

    gelu = lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # noqa: E731
    h = z @ w["0.weight"].T + w["0.bias"]
    official = layernorm(gelu(h)) @ w["3.weight"].T + w["3.bias"]
    norm_first = gelu(layernorm(h)) @ w["3.weight"].T + w["3.bias"]
    torch.testing.assert_close(loss.projector.double()(z), official)
    assert (official - norm_first).abs().max() > 1e-2  # the two orders really differ here
    old = PredictionLoss(6, 5, order="norm_first")
    old.load_state_dict(loss.state_dict())  # same parameter names: old checkpoints still load
    torch.testing.assert_close(old.projector.double()(z), norm_first)
    with pytest.raises(ValueError, match="projector order"):
        PredictionLoss(6, 5, order="bogus")
