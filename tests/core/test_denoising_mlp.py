"""DenoisingMLP (MAR's SimpleMLPAdaLN): parameter counts, init, and an independent forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from djepa.core.denoising_mlp import DenoisingMLP, timestep_embedding


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "args, expected",
    [
        ((16, 768, 1024, 6, 32), 35_749_920),  # D-JEPA-B / MAR-B
        ((16, 1024, 1280, 8, 32), 72_230_432),  # L
        ((16, 1280, 1536, 12, 32), 151_206_944),  # H
    ],
)
def test_parameter_count_matches_mar(args, expected):
    with torch.device("meta"):
        net = DenoisingMLP(*args)
    assert _count(net) == expected


def test_parameter_count_formula_small():
    c, dz, w, d, out = 3, 5, 8, 2, 6
    net = DenoisingMLP(c, dz, w, d, out)
    expected = (
        (c * w + w)  # input_proj
        + (256 * w + w) + (w * w + w)  # timestep MLP
        + (dz * w + w)  # cond_embed
        + d * (2 * w + 2 * (w * w + w) + (w * 3 * w + 3 * w))  # res blocks
        + (w * 2 * w + 2 * w) + (w * out + out)  # final layer
    )
    assert _count(net) == expected


def test_init_zero_output_and_zero_modulation():
    torch.manual_seed(0)
    net = DenoisingMLP(4, 6, 32, 2, 8)
    x, z = torch.randn(5, 4), torch.randn(5, 6)
    out = net(x, torch.tensor([0, 10, 500, 999, 3]), z)
    assert torch.equal(out, torch.zeros(5, 8))
    for block in net.res_blocks:
        assert torch.count_nonzero(block.adaLN_modulation[-1].weight) == 0
        assert torch.count_nonzero(block.adaLN_modulation[-1].bias) == 0
        assert torch.count_nonzero(block.mlp[0].bias) == 0
    assert torch.count_nonzero(net.final_layer.linear.weight) == 0
    # xavier-uniform bound sqrt(6 / (fan_in + fan_out)) on a block linear
    bound = math.sqrt(6.0 / (32 + 32))
    w = net.res_blocks[0].mlp[0].weight
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    # timestep MLP ~ N(0, 0.02)
    std = net.time_embed.mlp[0].weight.std().item()
    assert 0.017 < std < 0.023


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 2.5]), 4)
    # half = 2: freqs = [1, 10000 ** -0.5]; layout [cos, cos, sin, sin]
    f = [1.0, 10000.0**-0.5]
    for i, t in enumerate([0.0, 1.0, 2.5]):
        ref = [math.cos(t * f[0]), math.cos(t * f[1]), math.sin(t * f[0]), math.sin(t * f[1])]
        assert torch.allclose(emb[i], torch.tensor(ref), atol=1e-6)
    # integer and float timesteps embed identically
    assert torch.equal(timestep_embedding(torch.tensor([7, 999]), 256), timestep_embedding(torch.tensor([7.0, 999.0]), 256))


def _reference_forward(net: DenoisingMLP, x, t, z):
    """Independent re-implementation of SimpleMLPAdaLN's forward from the raw weights."""
    def lin(layer, h):
        return h @ layer.weight.T + layer.bias

    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1).to(x.dtype)
    temb = lin(net.time_embed.mlp[2], F.silu(lin(net.time_embed.mlp[0], temb)))
    y = temb + lin(net.cond_embed, z)
    h = lin(net.input_proj, x)
    for b in net.res_blocks:
        mod = lin(b.adaLN_modulation[1], F.silu(y))
        w = h.shape[1]
        shift, scale, gate = mod[:, :w], mod[:, w:2 * w], mod[:, 2 * w:]
        mu = h.mean(-1, keepdim=True)
        var = h.var(-1, unbiased=False, keepdim=True)
        ln = (h - mu) / torch.sqrt(var + 1e-6) * b.in_ln.weight + b.in_ln.bias
        hh = ln * (1 + scale) + shift
        hh = lin(b.mlp[2], F.silu(lin(b.mlp[0], hh)))
        h = h + gate * hh
    mod = lin(net.final_layer.adaLN_modulation[1], F.silu(y))
    w = h.shape[1]
    shift, scale = mod[:, :w], mod[:, w:]
    mu = h.mean(-1, keepdim=True)
    var = h.var(-1, unbiased=False, keepdim=True)
    ln = (h - mu) / torch.sqrt(var + 1e-6)
    return lin(net.final_layer.linear, ln * (1 + scale) + shift)


def test_forward_matches_independent_reference():
    torch.manual_seed(1)
    net = DenoisingMLP(3, 5, 16, 2, 6).double()
    with torch.no_grad():  # make every parameter non-trivial (the init zeroes many)
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x, z = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    t = torch.tensor([0, 1, 5, 100, 500, 999, 250])
    out = net(x, t, z)
    ref = _reference_forward(net, x, t, z)
    assert out.shape == (7, 6)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    # per-token: row i depends only on (x_i, t_i, z_i)
    out_perm = net(x.flip(0), t.flip(0), z.flip(0))
    assert torch.allclose(out_perm.flip(0), out, atol=1e-12)


def test_bad_shapes_raise():
    net = DenoisingMLP(3, 5, 16, 1, 6)
    with pytest.raises(ValueError):
        net(torch.randn(4, 2), torch.zeros(4), torch.randn(4, 5))
    with pytest.raises(ValueError):
        net(torch.randn(4, 3), torch.zeros(4), torch.randn(3, 5))


def _random_net(seed: int = 1) -> DenoisingMLP:
    torch.manual_seed(seed)
    net = DenoisingMLP(3, 5, 16, 2, 6).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return net


@pytest.mark.parametrize("budget", [None, 1, 3 * 7 * 128 * 8])  # all / 1 / 3 steps per chunk
def test_sampling_plan_matches_plain_forward(budget):
    net = _random_net()
    x, z = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    timesteps = torch.tensor([0, 111, 222, 333, 444, 555, 666, 777, 888, 999])
    kw = {} if budget is None else {"memory_budget": budget}
    plan = net.sampling_plan(z, timesteps, **kw)
    # a step holds M × F float64 = 7 × (3·depth + 2)·W × 8 bytes = 7 × 128 × 8
    assert plan.chunk == {None: 10, 1: 1, 3 * 7 * 128 * 8: 3}[budget]
    for tv in reversed(timesteps.tolist()):  # the order a sampler walks them
        t = torch.full((7,), tv)
        assert torch.allclose(net(x, t, z, plan=plan), net(x, t, z), rtol=1e-12, atol=1e-12)
    # rows at different timesteps (also straddling chunks) still get their own modulation
    t = timesteps[torch.tensor([0, 9, 3, 4, 5, 1, 2])]
    assert torch.allclose(net(x, t, z, plan=plan), net(x, t, z), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="another z"):
        net(x, t, z.clone(), plan=plan)


def test_sampling_plan_under_bf16_autocast_matches_the_plain_forward():
    net = _random_net().float()
    x, z = torch.randn(7, 3), torch.randn(7, 5)
    timesteps = torch.tensor([0, 500, 999])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plan = net.sampling_plan(z, timesteps)
        assert all(w.dtype == torch.bfloat16 for pair in plan.linears for w in pair)
        for tv in (999, 500, 0):
            t = torch.full((7,), tv)
            planned, plain = net(x, t, z, plan=plan), net(x, t, z)
            assert planned.dtype == plain.dtype == torch.bfloat16
            # same bf16 weights and op order; only the batched modulation matmul may round
            # differently (it is one matmul over all timesteps instead of one per step)
            assert torch.allclose(planned.float(), plain.float(), rtol=2e-2, atol=2e-2)
