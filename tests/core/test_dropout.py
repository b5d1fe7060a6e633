"""djepa.core.dropout: the CPU dropout mask from NumPy PCG64, seeded from torch's generator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from djepa.core import dropout as D
from djepa.core.attention import attention_kernel


@pytest.fixture
def numpy_rng():
    old = D.cpu_dropout_rng()
    D.set_cpu_dropout_rng("numpy")
    yield
    D.set_cpu_dropout_rng(old)


def test_mask_is_bernoulli_keep_scaled_and_reproducible(numpy_rng):
    p, n = 0.1, 1_000_000
    torch.manual_seed(0)
    m = D.dropout_mask((1000, 1000), p, torch.float32)
    values = torch.unique(m).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    keep = (m > 0).double()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma
    # no structure along either axis (rows / columns / parity keep the same rate)
    assert (keep.mean(0) - (1 - p)).abs().max() < 6 * math.sqrt(p * (1 - p) / 1000)
    assert abs(keep[:, ::2].mean().item() - keep[:, 1::2].mean().item()) < 10 * sigma
    torch.manual_seed(0)
    assert torch.equal(D.dropout_mask((1000, 1000), p, torch.float32), m)  # torch seed decides
    assert not torch.equal(D.dropout_mask((1000, 1000), p, torch.float32), m)  # next draw differs
    assert D.dropout_mask((4, 5), p, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.dropout_mask((3,), 1.0, torch.float32)


def test_dropout_module_train_eval_and_gradient(numpy_rng):
    drop = D.Dropout(0.25)
    assert isinstance(drop, torch.nn.Dropout) and drop.state_dict() == {}
    x = torch.randn(64, 32, requires_grad=True)
    assert drop.eval()(x) is x
    drop.train()
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)
    mask = D.dropout_mask(x.shape, 0.25, x.dtype)
    assert torch.equal(y, x * mask)
    y.sum().backward()
    assert torch.equal(x.grad, mask)  # d(x·mask)/dx
    assert D.Dropout(0.0).train()(x) is x


def test_torch_rng_switch_gives_torchs_own_dropout():
    old = D.cpu_dropout_rng()
    try:
        D.set_cpu_dropout_rng("torch")
        x = torch.randn(128, 16)
        torch.manual_seed(5)
        a = D.Dropout(0.1).train()(x)
        torch.manual_seed(5)
        assert torch.equal(a, F.dropout(x, 0.1, True))
        with pytest.raises(ValueError, match="numpy"):
            D.set_cpu_dropout_rng("mkl")
    finally:
        D.set_cpu_dropout_rng(old)


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
    mask = D.dropout_mask((2, 3, 5, 5), 0.2, torch.float32).double()
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)
    s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    ref = (s.softmax(-1) * mask) @ v.double()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # without dropout the same function is plain attention (SDPA), mask unused
    ref0 = s.softmax(-1) @ v.double()
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
    mask = D.dropout_mask((2, 3, 16, 16), 0.2, torch.float32).double()
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(8)
    ref = (s.softmax(-1) * mask) @ v.double()
    assert (out.double() - ref).abs().max() < 0.08
