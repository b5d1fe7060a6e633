"""fp32 LayerNorm and RMSNorm (djepa.core.norms)."""

import pytest
import torch

from djepa.core import cpu_speed, ops
from djepa.core.cpu_speed import SpeedSettings
from djepa.core.norms import LayerNorm, RMSNorm

FAST_LN = SpeedSettings(dropout_masks="torch", layer_norm=True, malloc="system")


def _ln_ref(x, w, b, eps=1e-6):
    x = x.double()
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y if w is None else y * w.double() + b.double()


def test_layernorm_reference_and_defaults():
    g = torch.Generator().manual_seed(0)
    ln = LayerNorm(16)
    assert ln.eps == 1e-6
    with torch.no_grad():
        ln.weight.copy_(torch.randn(16, generator=g))
        ln.bias.copy_(torch.randn(16, generator=g))
    x = torch.randn(3, 5, 16, generator=g) * 4 + 2
    torch.testing.assert_close(ln(x).double(), _ln_ref(x, ln.weight, ln.bias), atol=1e-5, rtol=1e-5)
    plain = LayerNorm(16, elementwise_affine=False)
    assert plain.weight is None and len(list(plain.parameters())) == 0
    torch.testing.assert_close(plain(x).double(), _ln_ref(x, None, None), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_cls", [LayerNorm, RMSNorm])
def test_norms_compute_in_fp32_and_return_input_dtype(norm_cls):
    g = torch.Generator().manual_seed(1)
    norm = norm_cls(32)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(32, generator=g))
    x = (torch.randn(4, 32, generator=g) * 3 + 100).to(torch.bfloat16)  # large mean: bf16-hostile
    y = norm(x)
    assert y.dtype == torch.bfloat16
    # Equals the fp32 computation rounded once to bf16.
    assert torch.equal(y, norm(x.float()).to(torch.bfloat16))
    # Under CPU bf16 autocast an fp32 input stays fp32 and gives the same numbers.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ya = norm(x.float())
    assert ya.dtype == torch.float32
    torch.testing.assert_close(ya, norm(x.float()), atol=0, rtol=0)
    # bf16 weights (model.to(bf16)) are upcast as well.
    norm16 = norm_cls(32).to(torch.bfloat16)
    assert norm16(x).dtype == torch.bfloat16 and torch.isfinite(norm16(x).float()).all()


def test_rmsnorm_reference():
    g = torch.Generator().manual_seed(2)
    n = RMSNorm(8, eps=1e-6)
    assert torch.equal(n.weight, torch.ones(8))
    with torch.no_grad():
        n.weight.copy_(torch.randn(8, generator=g))
    x = torch.randn(5, 8, generator=g)
    xd = x.double()
    ref = xd / torch.sqrt((xd**2).mean(-1, keepdim=True) + 1e-6) * n.weight.double()
    torch.testing.assert_close(n(x).double(), ref, atol=1e-6, rtol=1e-5)
    # Scale invariance (the defining property): RMSNorm(c·x) = RMSNorm(x) for c > 0.
    torch.testing.assert_close(n(7.0 * x), n(x), atol=1e-5, rtol=1e-5)


def test_layernorm_bf16_cpu_inference_path_matches_the_fp32_upcast():
    # With cpu_speed's LayerNorm kernel installed, a bf16 input on CPU without autograd takes
    # ATen's mixed-dtype kernel (float32 math, one rounding); it must agree with upcast → fp32
    # layer_norm → round to one bf16 rounding step. Without it (library default) the module is
    # exactly that upcast.
    g = torch.Generator().manual_seed(3)
    ln = LayerNorm(256)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(256, generator=g))
        ln.bias.copy_(0.3 * torch.randn(256, generator=g))
        x = (torch.randn(512, 256, generator=g) * 2 + 0.5).to(torch.bfloat16)
        ref = torch.nn.functional.layer_norm(x.float(), (256,), ln.weight, ln.bias, 1e-6).to(torch.bfloat16)
        with cpu_speed.using(SpeedSettings.off()):
            assert "layer_norm_fp32" not in ops.overridden()
            assert torch.equal(ln(x), ref)
        with cpu_speed.using(FAST_LN):
            assert ops.overridden()["layer_norm_fp32"] is cpu_speed.layer_norm.bf16_inference_layer_norm
            fast = ln(x)
    assert fast.dtype == torch.bfloat16
    ulp = torch.finfo(torch.bfloat16).eps * ref.float().abs().clamp_min(2**-8)
    assert ((fast.float() - ref.float()).abs() <= ulp).all()
    assert (fast == ref).float().mean() > 0.99


def test_layernorm_bf16_with_autograd_keeps_fp32_weight_gradients():
    # With autograd the fp32 upcast path is used: ATen's mixed-dtype backward (torch 2.10, CPU)
    # is several % off in the weight/bias gradients at a few thousand rows.
    g = torch.Generator().manual_seed(4)
    ln = LayerNorm(256)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(256, generator=g))
    x = (torch.randn(4096, 256, generator=g) * 2 + 0.5).to(torch.bfloat16).requires_grad_()
    gy = torch.randn(4096, 256, generator=g).to(torch.bfloat16)
    with cpu_speed.using(FAST_LN):  # installed, but not taken under autograd
        ln(x).backward(gy)
    got_w, got_b = ln.weight.grad.clone(), ln.bias.grad.clone()
    ln.weight.grad = ln.bias.grad = None
    xf = x.detach().double()
    yd = torch.nn.functional.layer_norm(xf, (256,), ln.weight.double(), ln.bias.double(), 1e-6)
    xhat = (yd - ln.bias.double()) / ln.weight.double()
    torch.testing.assert_close(got_w.double(), (gy.double() * xhat).sum(0), atol=0.05, rtol=1e-3)
    torch.testing.assert_close(got_b.double(), gy.double().sum(0), atol=0.05, rtol=1e-3)
