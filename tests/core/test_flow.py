"""Flow matching loss L_v (App. F, Eq. 7) and its ODE sampler."""

from __future__ import annotations


import pytest
import torch

from djepa.core.config import LossConfig
from djepa.core.flow import TIME_SCALE, FlowMatchingLoss, shift_time, time_grid
from djepa.core.heads import build_token_loss
from djepa.core.token_loss import TokenLoss

MU, SIGMA = torch.tensor([1.5, -0.5]), torch.tensor([0.3, 2.0])


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ExactGaussianVelocity(torch.nn.Module):
    """Exact v(x, t) = E[x − ε | x_t] for data N(μ, σ²) on x_t = t·x + (1 − t)·ε.

    x_t ~ N(tμ, t²σ² + (1 − t)²), so E[x − ε | x_t] = μ + (tσ² − (1 − t)) / Var_t · (x_t − tμ).
    Receives the MLP's timestep 1000·t.
    """

    def __init__(self, mu, sigma):
        super().__init__()
        self.mu, self.sigma = mu, sigma
        self.batch_sizes = []

    def forward(self, x, t_model, z):
        self.batch_sizes.append(x.shape[0])
        t = (t_model / TIME_SCALE)[:, None].double()
        var = t**2 * self.sigma**2 + (1 - t) ** 2
        v = self.mu + (t * self.sigma**2 - (1 - t)) / var * (x.double() - t * self.mu)
        return v.float()


def _head(**kw):
    return FlowMatchingLoss(LossConfig(kind="flow", mlp_width=32, mlp_depth=1, **kw), token_dim=2, z_dim=3)


def test_shift_time_values():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_time(t, 1.0), t)
    for s in (0.3, 3.0):
        ts = shift_time(t, s)
        assert ts[0].item() == 0.0 and ts[-1].item() == 1.0
        assert (ts[1:] > ts[:-1]).all()
    assert shift_time(0.5, 3.0) == pytest.approx(0.25)  # 0.5 / (0.5 + 3 − 1.5)
    assert shift_time(0.25, 2.0) == pytest.approx(0.25 / (0.25 + 2 - 0.5))
    g = time_grid(4, 3.0)
    assert g.shape == (5,) and g[2].item() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        shift_time(0.5, 0.0)


def test_loss_value_and_interpolation():
    head = _head()
    seen = {}

    class Fake(torch.nn.Module):
        def forward(self, x, t, z):
            seen["x"], seen["t"] = x, t
            return torch.full_like(x, 0.7)

    head.net = Fake()
    g = torch.Generator().manual_seed(0)
    x, eps, z = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g), torch.randn(5, 3)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    per = head.per_token_losses(x, z, t=t, noise=eps)
    assert torch.allclose(seen["x"], t[:, None] * x + (1 - t[:, None]) * eps)
    assert torch.allclose(seen["t"], 1000 * t)
    assert torch.allclose(per, ((0.7 - (x - eps)) ** 2).mean(-1), atol=1e-6)


def test_masked_mean_and_empty_mask():
    torch.manual_seed(0)
    head = _head()
    with torch.no_grad():
        for p in head.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, z = torch.randn(10, 2), torch.randn(10, 3, requires_grad=True)
    mask = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
    loss = head(x, z, mask, generator=torch.Generator().manual_seed(1))
    per = head.per_token_losses(x, z, generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(per[mask].mean().item(), rel=1e-6)
    empty = head(x, z, torch.zeros(10, dtype=torch.bool))
    assert torch.isfinite(empty) and empty.item() == 0.0
    empty.backward()
    assert z.grad is not None


def test_exact_field_euler_many_steps_hits_target(one_thread):
    head = _head()
    head.net = ExactGaussianVelocity(MU, SIGMA)
    z = torch.zeros(4000, 3)
    eps = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    s = head.sample(z, num_steps=200, solver="euler", noise=eps)
    # the flow of a Gaussian path is the affine transport ε ↦ μ + σ·ε
    err = (s - (MU + SIGMA * eps)).abs()
    assert err.mean().item() < 0.02 and err.max().item() < 0.1  # first order: O(1/200)·|ε|
    assert torch.allclose(s.mean(0), MU, atol=0.1)
    assert torch.allclose(s.std(0), SIGMA, rtol=0.05)


def test_exact_field_heun_beats_euler_and_time_shift_keeps_endpoint():
    head = _head()
    head.net = ExactGaussianVelocity(MU, SIGMA)
    z = torch.zeros(2000, 3)
    eps = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    exact = MU + SIGMA * eps  # the flow of a Gaussian path is the monotone (affine) transport
    heun = head.sample(z, num_steps=10, solver="heun", noise=eps)
    euler = head.sample(z, num_steps=10, solver="euler", noise=eps)
    err_heun = (heun - exact).abs().max().item()
    err_euler = (euler - exact).abs().max().item()
    assert err_heun < 0.05
    assert err_heun < 0.5 * err_euler
    assert torch.allclose(heun.mean(0), MU, atol=0.1) and torch.allclose(heun.std(0), SIGMA, rtol=0.05)
    # any time shift integrates the same ODE: with many steps the endpoint does not move
    shifted = head.sample(z, num_steps=400, solver="heun", time_shift=3.0, noise=eps)
    assert (shifted - exact).abs().max().item() < 0.01


def test_temperature_scales_initial_noise():
    head = _head()
    head.net = ExactGaussianVelocity(MU, SIGMA)
    z = torch.zeros(100, 3)
    eps = torch.randn(100, 2, generator=torch.Generator().manual_seed(2))
    out = head.sample(z, num_steps=400, solver="heun", temperature=0.5, noise=eps)
    assert torch.allclose(out, MU + SIGMA * 0.5 * eps, atol=0.01)


def test_clip_range_keeps_samples_in_range():
    head = _head()
    head.net = ExactGaussianVelocity(torch.tensor([3.0, 0.0]), torch.tensor([1.0, 5.0]))
    z = torch.zeros(500, 3)
    out = head.sample(z, num_steps=10, solver="euler", clip_range=(-1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert out.min() >= -1.0 - 1e-5 and out.max() <= 1.0 + 1e-5
    free = head.sample(z, num_steps=10, solver="euler", generator=torch.Generator().manual_seed(0))
    assert free.abs().max() > 2.0


class _CondNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x, t, z):
        self.batch_sizes.append(x.shape[0])
        return 0.3 * x + z[:, :2] * (t[:, None] / 1000.0)


def test_cfg_formula_and_no_doubling_at_scale_one():
    head = _head()
    net = _CondNet()
    head.net = net
    g = torch.Generator().manual_seed(3)
    z, z_u = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    x, t = torch.randn(4, 2, generator=g), torch.full((4,), 0.4)
    s = 3.0
    v = head.guided_velocity_fn(z, z_u, s)(x, t)
    v_c, v_u = 0.3 * x + z[:, :2] * 0.4, 0.3 * x + z_u[:, :2] * 0.4
    assert torch.allclose(v, v_u + s * (v_c - v_u), atol=1e-6)
    assert net.batch_sizes == [8]
    net.batch_sizes.clear()
    a = head.sample(z, num_steps=5, generator=torch.Generator().manual_seed(4))
    b = head.sample(z, z_uncond=z_u, cfg_scale=1.0, num_steps=5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and set(net.batch_sizes) == {4}
    net.batch_sizes.clear()
    c = head.sample(z, z_uncond=z_u, cfg_scale=2.0, num_steps=5, solver="heun", generator=torch.Generator().manual_seed(4))
    assert set(net.batch_sizes) == {8} and len(net.batch_sizes) == 10
    assert not torch.allclose(a, c)


def test_factory_and_bf16_autocast():
    head = build_token_loss(LossConfig(kind="flow", mlp_width=32, mlp_depth=1), 2, 3)
    assert isinstance(head, FlowMatchingLoss) and isinstance(head, TokenLoss)
    assert head.net.out_channels == 2
    x, z = torch.randn(16, 2), torch.randn(16, 3, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = head(x, z, torch.ones(16, dtype=torch.bool))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        s = head.sample(z.detach(), num_steps=3)
    assert s.dtype == torch.float32 and torch.isfinite(s).all()


def test_learns_conditional_gaussian_mixture(one_thread):
    torch.manual_seed(0)
    means = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    head = FlowMatchingLoss(LossConfig(kind="flow", mlp_width=64, mlp_depth=2), token_dim=2, z_dim=4)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    hist = []
    for _ in range(300):
        k = torch.randint(0, 4, (256,), generator=g)
        x = means[k] + 0.1 * torch.randn(256, 2, generator=g)
        loss = head(x, torch.nn.functional.one_hot(k, 4).float(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(loss.item())
    assert sum(hist[-50:]) / 50 < 0.5 * sum(hist[:50]) / 50
    z = torch.nn.functional.one_hot(torch.arange(4).repeat_interleave(200), 4).float()
    samples = head.sample(z, num_steps=20, solver="heun", generator=torch.Generator().manual_seed(1))
    samples = samples.reshape(4, 200, 2)
    assert (samples.mean(1) - means).abs().max() < 0.15
    std = samples.std(1)
    assert (std > 0.1 / 2.5).all() and (std < 0.1 * 2.5).all()
