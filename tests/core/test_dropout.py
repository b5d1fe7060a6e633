"""djepa.core.cpu_speed.dropout: the CPU dropout mask from NumPy PCG64, seeded from torch's
generator, plugged into the model's dropout and attention by ``cpu_speed.install``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from djepa.core import cpu_speed
from djepa.core.attention import attention_kernel
from djepa.core.cpu_speed import SpeedSettings
from djepa.core.cpu_speed import dropout as D
from djepa.core.dropout import Dropout


@pytest.fixture
def numpy_rng():
    with cpu_speed.using(SpeedSettings(dropout_masks="numpy", malloc="system")):
        yield


def test_keep_mask_is_bernoulli_and_reproducible(numpy_rng):
    p, n = 0.1, 1_000_000
    torch.manual_seed(0)
    keep = D.dropout_keep((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    k = keep.double()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(k.mean().item() - (1 - p)) < 5 * sigma
    # no structure along either axis (columns / parity keep the same rate)
    assert (k.mean(0) - (1 - p)).abs().max() < 6 * math.sqrt(p * (1 - p) / 1000)
    assert abs(k[:, ::2].mean().item() - k[:, 1::2].mean().item()) < 10 * sigma
    torch.manual_seed(0)
    assert torch.equal(D.dropout_keep((1000, 1000), p), keep)  # torch's seed decides
    assert not torch.equal(D.dropout_keep((1000, 1000), p), keep)  # the next draw differs
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.dropout_keep((3,), 1.0)


def test_dropout_values_gradient_and_identity_cases(numpy_rng):
    drop = Dropout(0.25)
    assert isinstance(drop, torch.nn.Dropout) and drop.state_dict() == {}
    x = torch.randn(64, 32, requires_grad=True)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    keep = D.dropout_keep(x.shape, 0.25)
    torch.testing.assert_close(y, torch.where(keep, x / 0.75, 0.0), atol=0, rtol=1e-6)
    y.sum().backward()
    torch.testing.assert_close(x.grad, keep.float() / 0.75, atol=0, rtol=1e-6)
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(D.numpy_dropout(x, 1.0), torch.zeros_like(x))  # as F.dropout, not an error
    # other devices keep torch's own dropout (here: the meta device, shape only)
    m = D.numpy_dropout(torch.empty(4, 5, device="meta"), 0.5)
    assert m.device.type == "meta" and m.shape == (4, 5)


def test_bf16_dropout_is_unbiased(numpy_rng):
    # torch's CPU kernel rounds the scale 1/0.9 to bf16 (1.109375): every kept value shrinks by
    # 0.16 %. Scaling x in float and rounding once per element leaves only zero-mean rounding.
    torch.manual_seed(0)
    x = (1 + torch.rand(2_000_000)).bfloat16()
    y = D.numpy_dropout(x, 0.1)
    kept = y != 0
    ratio = (y[kept].double() / x[kept].double()).mean().item()
    assert abs(ratio - 1 / 0.9) < 2e-4, ratio
    torch_ratio = (F.dropout(x, 0.1)[kept].double() / x[kept].double())  # for contrast
    assert abs(torch_ratio[torch_ratio > 0].mean().item() - 1 / 0.9) > 1e-3


def test_torch_masks_and_library_default_give_torchs_own_dropout(monkeypatch):
    x = torch.randn(128, 16)
    q, k, v = (torch.randn(2, 2, 6, 4) for _ in range(3))
    # the old environment variable is not read anywhere any more
    monkeypatch.setenv("DJEPA_CPU_DROPOUT_RNG", "numpy")
    for settings in (SpeedSettings(dropout_masks="torch", malloc="system"), SpeedSettings.off()):
        with cpu_speed.using(settings):
            assert cpu_speed.dropout_mask_source() == "torch"
            torch.manual_seed(5)
            a = Dropout(0.1).train()(x)
            torch.manual_seed(5)
            assert torch.equal(a, F.dropout(x, 0.1, True))
            torch.manual_seed(5)
            att = attention_kernel(q, k, v, None, dropout_p=0.3)
            torch.manual_seed(5)
            assert torch.equal(att, F.scaled_dot_product_attention(q, k, v, dropout_p=0.3))
    with pytest.raises(ValueError, match="numpy"):
        SpeedSettings(dropout_masks="mkl")
    with pytest.raises(ValueError, match="cpu-speed"):
        SpeedSettings.from_flag("fast")


def _attention_reference(q, k, v, pad, keep, p):
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1])
    if pad is not None:
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    return (s.softmax(-1) * keep.double() / (1 - p)) @ v.double()


def test_attention_dropout_uses_the_mask_on_the_probabilities(numpy_rng):
    # training attention with dropout on CPU: softmax(q kᵀ/√d) with padded keys removed, the
    # probabilities times the dropout mask, then v — in float64 with the same mask.
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    torch.manual_seed(11)
    out = attention_kernel(q, k, v, pad, dropout_p=0.2)
    torch.manual_seed(11)
    keep = D.dropout_keep((2, 3, 5, 5), 0.2)
    torch.testing.assert_close(out.double(), _attention_reference(q, k, v, pad, keep, 0.2), atol=1e-5, rtol=1e-5)
    # float64 stays float64
    torch.manual_seed(11)
    out64 = attention_kernel(q.double(), k.double(), v.double(), pad, dropout_p=0.2)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, _attention_reference(q, k, v, pad, keep, 0.2), atol=1e-12, rtol=1e-12)
    # without dropout the same function is plain attention (SDPA), mask unused
    ref0 = _attention_reference(q, k, v, pad, torch.ones(2, 3, 5, 5, dtype=torch.bool), 0.0)
    torch.testing.assert_close(attention_kernel(q, k, v, pad).double(), ref0, atol=1e-5, rtol=1e-5)


def test_attention_dropout_path_keeps_float32_scores_under_bf16_autocast(numpy_rng):
    # logits of size ~10: rounding the scores to bf16 moves the output by ~0.18 here; with
    # float32 scores only the bf16 probabilities/v remain (~0.04).
    torch.manual_seed(0)
    q, k, v = ((torch.randn(2, 3, 16, 8) * 3).bfloat16() for _ in range(3))
    torch.manual_seed(11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_kernel(q, k, v, None, dropout_p=0.2)
    assert out.dtype == torch.bfloat16
    torch.manual_seed(11)
    keep = D.dropout_keep((2, 3, 16, 16), 0.2)
    assert (out.double() - _attention_reference(q, k, v, None, keep, 0.2)).abs().max() < 0.08
    # and the rows of dropped-out probabilities stay unbiased: v = 1 gives mean 1
    ones = torch.ones(4, 4, 64, 8, dtype=torch.bfloat16)
    qq = torch.randn(4, 4, 64, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows = attention_kernel(qq, qq, ones, None, dropout_p=0.1)
    assert abs(rows.double().mean().item() - 1.0) < 0.01


def test_checkpoint_rng_state_records_the_mask_source_and_warns_on_change(numpy_rng, recwarn):
    from djepa.core.train.checkpoint import rng_state, set_rng_state

    torch.manual_seed(7)
    state = rng_state()
    assert state["cpu_dropout"].startswith("numpy (numpy ")
    a = D.dropout_keep((1000,), 0.5)
    set_rng_state(state)  # same source: silent, and the next mask repeats
    assert not [w for w in recwarn if "dropout" in str(w.message)]
    assert torch.equal(D.dropout_keep((1000,), 0.5), a)
    state["cpu_dropout"] = "torch (numpy 0.0)"
    with pytest.warns(UserWarning, match="not bit-identical"):
        set_rng_state(state)
