"""Gaussian diffusion math and the DiffusionLoss head (§3.3, Eq. 4, App. B)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from djepa.core.config import LossConfig
from djepa.core.diffusion import (
    GaussianDiffusion,
    betas_for_schedule,
    normal_kl,
    respace_betas,
    respaced,
    space_timesteps,
)
from djepa.core.diffusion_loss import DiffusionLoss
from djepa.core.heads import build_token_loss
from djepa.core.token_loss import TokenLoss

LN2 = math.log(2.0)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared 2-core machine: 1 thread is fastest
    yield
    torch.set_num_threads(n)


def _alphas_cumprod_ref(betas):
    """float64 ᾱ computed with a plain Python loop (independent of torch.cumprod)."""
    out, acc = [], 1.0
    for b in betas.tolist():
        acc *= 1.0 - b
        out.append(acc)
    return torch.tensor(out, dtype=torch.float64)


# ----------------------------------------------------------------------------- schedules
def test_linear_schedule_endpoints_and_alpha_bar_T():
    betas = betas_for_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert betas[-1].item() == pytest.approx(2e-2, abs=1e-15)
    # independent: exp(sum log(1 - β_i)) with β_i = 1e-4 + i (2e-2 − 1e-4) / 999
    ref = math.exp(sum(math.log1p(-(1e-4 + i * (2e-2 - 1e-4) / 999)) for i in range(1000)))
    ab = GaussianDiffusion(betas).alphas_cumprod[-1].item()
    assert ab == pytest.approx(ref, rel=1e-9)
    assert 3.9e-5 < ab < 4.2e-5  # FIDELITY.md: ᾱ_T ≈ 4e-5
    # scaled to T = 100: scale = 10
    b100 = betas_for_schedule("linear", 100)
    assert b100[0].item() == pytest.approx(1e-3) and b100[-1].item() == pytest.approx(0.2)


def test_cosine_schedule_alpha_bar_T():
    betas = betas_for_schedule("cosine", 1000)
    assert betas.max().item() == pytest.approx(0.999)  # only the last beta is clipped
    assert (betas[:-1] < 0.999).all()

    def f(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    # telescoping product up to step 998, then the clipped β = 0.999
    ref = f(999 / 1000) / f(0.0) * (1 - 0.999)
    ab = GaussianDiffusion(betas).alphas_cumprod[-1].item()
    assert ab == pytest.approx(ref, rel=1e-9)
    assert ab == pytest.approx(2.4e-9, rel=0.05)  # FIDELITY.md "A known pitfall"
    # ᾱ at a middle step follows the closed form exactly
    mid = GaussianDiffusion(betas).alphas_cumprod[499].item()
    assert mid == pytest.approx(f(500 / 1000) / f(0.0), rel=1e-9)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError):
        betas_for_schedule("quadratic", 10)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- q and posterior
def test_q_sample_moments_monte_carlo():
    d = GaussianDiffusion(betas_for_schedule("linear", 1000))
    n = 200_000
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[1.5, -0.7]]).expand(n, 2)
    for step in (0, 300, 999):
        t = torch.full((n,), step, dtype=torch.long)
        xt = d.q_sample(x0, t, torch.randn(n, 2, generator=g))
        ab = _alphas_cumprod_ref(d.betas)[step].item()
        mean_ref = math.sqrt(ab) * torch.tensor([1.5, -0.7])
        var_ref = 1 - ab
        tol = 5 * math.sqrt(max(var_ref, 1e-8) / n)
        assert torch.allclose(xt.mean(0), mean_ref.float(), atol=tol + 1e-6)
        assert torch.allclose(xt.var(0), torch.full((2,), var_ref), rtol=0.02, atol=1e-6)


def test_posterior_mean_variance_closed_form():
    betas = betas_for_schedule("cosine", 50)
    d = GaussianDiffusion(betas)
    ab = _alphas_cumprod_ref(betas)
    g = torch.Generator().manual_seed(1)
    x0, xt = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    t = torch.tensor([0, 1, 7, 25, 48, 49])
    mean, var, log_var = d.q_posterior_mean_variance(x0, xt, t)
    for i, s in enumerate(t.tolist()):
        b = betas[s].item()
        ab_t = ab[s].item()
        ab_prev = ab[s - 1].item() if s > 0 else 1.0
        var_ref = (1 - ab_prev) / (1 - ab_t) * b
        c1 = math.sqrt(ab_prev) * b / (1 - ab_t)
        c2 = math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab_t)
        assert torch.allclose(mean[i], (c1 * x0[i] + c2 * xt[i]).float(), atol=1e-5)
        assert var[i, 0].item() == pytest.approx(var_ref, rel=1e-5, abs=1e-12)
        # clipped log-variance: β̃_1 replaces β̃_0 = 0
        b1 = betas[1].item()
        var1 = (1 - ab[0].item()) / (1 - ab[1].item()) * b1
        log_ref = math.log(var1) if s == 0 else math.log(var_ref)
        assert log_var[i, 0].item() == pytest.approx(log_ref, rel=1e-5)


def test_posterior_is_bayes_consistent_monte_carlo():
    """E[x_{t-1} | x_t] from sampling q(x_{t-1}|x0) then q(x_t|x_{t-1}) matches the posterior."""
    betas = betas_for_schedule("linear", 100)
    d = GaussianDiffusion(betas)
    t_step, x0 = 40, 0.8
    n = 400_000
    g = torch.Generator().manual_seed(2)
    ab_prev = d.alphas_cumprod[t_step - 1].item()
    x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * torch.randn(n, generator=g, dtype=torch.float64)
    b = betas[t_step].item()
    x_t = math.sqrt(1 - b) * x_prev + math.sqrt(b) * torch.randn(n, generator=g, dtype=torch.float64)
    # linear regression of x_prev on x_t = posterior mean coefficients; residual var = β̃_t
    cov = ((x_prev - x_prev.mean()) * (x_t - x_t.mean())).mean()
    slope = (cov / x_t.var()).item()
    resid = (x_prev - x_prev.mean() - slope * (x_t - x_t.mean())).var().item()
    mean, var, _ = d.q_posterior_mean_variance(
        torch.full((2, 1), x0), torch.tensor([[0.0], [1.0]]), torch.tensor([t_step, t_step])
    )
    assert slope == pytest.approx((mean[1] - mean[0]).item(), rel=0.02)
    assert resid == pytest.approx(var[0, 0].item(), rel=0.02)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    m1, m2 = torch.randn(10, generator=g), torch.randn(10, generator=g)
    lv1, lv2 = torch.randn(10, generator=g), torch.randn(10, generator=g)
    ref = kl_divergence(Normal(m1, torch.exp(0.5 * lv1)), Normal(m2, torch.exp(0.5 * lv2)))
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, atol=1e-5)
    assert torch.allclose(normal_kl(m1, lv1, m1, lv1), torch.zeros(10), atol=1e-6)


def test_vlb_term_for_known_gaussians():
    """VLB per token = mean_c KL(q ‖ p_θ)/ln2 for t > 0, = −mean_c log N(x0; μ_θ, σ²_θ)/ln2 at t = 0."""
    betas = betas_for_schedule("linear", 100)
    d = GaussianDiffusion(betas)
    ab = _alphas_cumprod_ref(betas)
    g = torch.Generator().manual_seed(4)
    m, c = 5, 3
    x0, xt = torch.randn(m, c, generator=g), torch.randn(m, c, generator=g)
    eps, v = torch.randn(m, c, generator=g), torch.rand(m, c, generator=g) * 2 - 1
    t = torch.tensor([0, 1, 10, 50, 99])
    vb = d.vb_terms_bpd(torch.cat([eps, v], -1), x0, xt, t)
    for i, s in enumerate(t.tolist()):
        b = betas[s].item()
        ab_t, ab_prev = ab[s].item(), (ab[s - 1].item() if s > 0 else 1.0)
        c1 = math.sqrt(ab_prev) * b / (1 - ab_t)
        c2 = math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab_t)
        var1 = (1 - ab[0].item()) / (1 - ab[1].item()) * betas[1].item()
        post_var = (1 - ab_prev) / (1 - ab_t) * b
        min_log = math.log(var1 if s == 0 else post_var)
        frac = (v[i].double() + 1) / 2
        p_logvar = frac * math.log(b) + (1 - frac) * min_log
        x0_hat = (xt[i].double() - math.sqrt(1 - ab_t) * eps[i].double()) / math.sqrt(ab_t)
        p_mean = c1 * x0_hat + c2 * xt[i].double()
        p = Normal(p_mean, torch.exp(0.5 * p_logvar))
        if s == 0:
            ref = -p.log_prob(x0[i].double()).mean() / LN2
        else:
            q = Normal(c1 * x0[i].double() + c2 * xt[i].double(), math.sqrt(post_var))
            ref = kl_divergence(q, p).mean() / LN2
        assert vb[i].item() == pytest.approx(ref.item(), rel=2e-4, abs=2e-4)


def test_training_losses_mse_and_frozen_mean():
    d = GaussianDiffusion(betas_for_schedule("linear", 1000))
    g = torch.Generator().manual_seed(5)
    m, c = 8, 4
    x0, noise = torch.randn(m, c, generator=g), torch.randn(m, c, generator=g)
    t = torch.randint(0, 1000, (m,), generator=g)
    t[0] = 0
    out_param = torch.randn(m, 2 * c, generator=g, requires_grad=True)
    seen = {}

    def model_fn(x, tt):
        seen["x"], seen["t"] = x, tt
        return out_param * 1.0

    losses = d.training_losses(model_fn, x0, t, noise)
    ab = _alphas_cumprod_ref(d.betas)[t].float()[:, None]
    assert torch.allclose(seen["x"], ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)
    assert torch.equal(seen["t"], t)
    assert torch.allclose(losses["mse"], ((noise - out_param[:, :c]) ** 2).mean(-1), atol=1e-6)
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])
    # the VLB term trains the variance channels only (stop-gradient on ε / the mean)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), out_param, retain_graph=True)
    assert torch.count_nonzero(grad_vb[:, :c]) == 0 and torch.count_nonzero(grad_vb[:, c:]) > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), out_param)
    assert torch.count_nonzero(grad_mse[:, c:]) == 0
    # a model without variance channels: vb = 0
    losses_fixed = d.training_losses(lambda x, tt: out_param[:, :c].detach(), x0, t, noise)
    assert torch.equal(losses_fixed["vb"], torch.zeros(m))


# ----------------------------------------------------------------------------- respacing
def test_space_timesteps_adm_spacing():
    kept = space_timesteps(1000, 100)
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999
    assert kept[:4] == [0, 10, 20, 30]  # stride 999/99 ≈ 10.09, rounded
    assert kept == sorted(set(round(i * 999 / 99) for i in range(100)))
    assert space_timesteps(1000, "100") == kept
    assert space_timesteps(10, 10) == list(range(10))
    assert space_timesteps(1000, 1) == [0]  # ADM's behaviour
    with pytest.raises(ValueError):
        space_timesteps(10, 11)


def test_respacing_keeps_alpha_bar():
    betas = betas_for_schedule("cosine", 1000)
    kept = space_timesteps(1000, 25)
    new_betas, tmap = respace_betas(betas, kept)
    ab_orig = _alphas_cumprod_ref(betas)
    ab_new = _alphas_cumprod_ref(new_betas)
    # float64 round-off of 1 − (1 − ᾱ_k/ᾱ_{k−1}) at ᾱ ≈ 2e-9 limits this to ~1e-10 relative
    assert torch.allclose(ab_new, ab_orig[kept], rtol=1e-9, atol=0)
    assert tmap.tolist() == kept
    d = respaced(betas, kept)
    assert d.num_timesteps == 25
    assert torch.allclose(d.alphas_cumprod, ab_orig[kept], rtol=1e-9, atol=0)


def test_respaced_model_sees_original_timesteps():
    betas = betas_for_schedule("linear", 1000)
    kept = space_timesteps(1000, 5)
    d = respaced(betas, kept)
    calls = []

    def model_fn(x, t):
        calls.append(t.tolist())
        return torch.zeros(x.shape[0], 2 * x.shape[1])

    d.p_sample_loop(model_fn, (3, 2), generator=torch.Generator().manual_seed(0))
    assert calls == [[k] * 3 for k in reversed(kept)]


# ----------------------------------------------------------------------------- reverse step
def test_p_sample_temperature_scales_noise_only():
    d = GaussianDiffusion(betas_for_schedule("linear", 100))
    n, c = 100_000, 2
    xt = torch.randn(n, c, generator=torch.Generator().manual_seed(6))
    v = 0.3

    def model_fn(x, t):  # known ε = 0.5·x, v = 0.3
        return torch.cat([0.5 * x, torch.full_like(x, v)], -1)

    t = torch.full((n,), 50, dtype=torch.long)
    for tau in (1.0, 0.5):
        out = d.p_sample(model_fn, xt, t, temperature=tau, generator=torch.Generator().manual_seed(7))
        resid = out["sample"] - out["mean"]
        ref_var = tau**2 * math.exp(out["log_variance"][0, 0].item())
        assert resid.var().item() == pytest.approx(ref_var, rel=0.02)
        # the mean does not depend on τ and equals the posterior mean of x̂0 from ε
        ab = d.alphas_cumprod[50].item()
        x0_hat = (xt - math.sqrt(1 - ab) * 0.5 * xt) / math.sqrt(ab)
        mean_ref, _, _ = d.q_posterior_mean_variance(x0_hat, xt, t)
        assert torch.allclose(out["mean"], mean_ref, atol=1e-4)
    # same noise, τ: residuals scale exactly by τ
    a = d.p_sample(model_fn, xt[:10], t[:10], temperature=1.0, generator=torch.Generator().manual_seed(8))
    b = d.p_sample(model_fn, xt[:10], t[:10], temperature=0.25, generator=torch.Generator().manual_seed(8))
    assert torch.allclose(b["sample"] - b["mean"], 0.25 * (a["sample"] - a["mean"]), atol=1e-6)
    # no noise at the last step (t = 0)
    t0 = torch.zeros(10, dtype=torch.long)
    last = d.p_sample(model_fn, xt[:10], t0, temperature=1.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(last["sample"], last["mean"])


def test_p_mean_variance_clip_range():
    d = GaussianDiffusion(betas_for_schedule("cosine", 1000))
    xt = torch.tensor([[3.0, -3.0, 0.1]])
    t = torch.tensor([999])
    out_eps = torch.zeros(1, 3)  # x̂0 = x_t / √ᾱ ≈ ±6e4: the pitfall of FIDELITY.md
    free = d.p_mean_variance(out_eps, xt, t)
    assert free["pred_xstart"].abs().max() > 1e4
    clipped = d.p_mean_variance(out_eps, xt, t, clip_range=(-1.0, 1.0))
    assert clipped["pred_xstart"].abs().max() <= 1.0
    mean_ref, _, _ = d.q_posterior_mean_variance(clipped["pred_xstart"], xt, t)
    assert torch.allclose(clipped["mean"], mean_ref)
    assert torch.equal(clipped["eps"], out_eps)


# ----------------------------------------------------------------------------- DiffusionLoss
def _tiny_head(**kw):
    cfg = LossConfig(kind="diffusion", mlp_width=32, mlp_depth=1, **kw)
    return DiffusionLoss(cfg, token_dim=3, z_dim=5)


def test_head_structure_and_factory():
    head = _tiny_head()
    assert isinstance(head, TokenLoss)
    assert head.net.out_channels == 6 and head.diffusion.num_timesteps == 1000
    assert _tiny_head(learn_sigma=False).net.out_channels == 3
    assert isinstance(build_token_loss(LossConfig(mlp_width=16, mlp_depth=1), 3, 5), DiffusionLoss)
    with pytest.raises(ValueError):
        build_token_loss(LossConfig(kind="bogus"), 3, 5)  # type: ignore[arg-type]


def test_masked_mean_equals_gathered_rows():
    torch.manual_seed(0)
    head = _tiny_head()
    with torch.no_grad():
        for p in head.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m = 12
    target, z = torch.randn(m, 3), torch.randn(m, 5)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    loss = head(target, z, mask, generator=torch.Generator().manual_seed(3))
    per = head.per_token_losses(target, z, generator=torch.Generator().manual_seed(3))["loss"]
    assert loss.item() == pytest.approx(per[mask].mean().item(), rel=1e-6)
    loss_f = head(target, z, mask.float(), generator=torch.Generator().manual_seed(3))
    assert loss_f.item() == pytest.approx(loss.item(), rel=1e-6)
    # unmasked rows do not matter
    target2 = target.clone()
    target2[~mask] = 100.0
    loss2 = head(target2, z, mask, generator=torch.Generator().manual_seed(3))
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_all_false_mask_is_finite_zero_with_gradient_path():
    head = _tiny_head()
    z = torch.randn(4, 5, requires_grad=True)
    loss = head(torch.randn(4, 3), z, torch.zeros(4, dtype=torch.bool))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert z.grad is not None and torch.count_nonzero(z.grad) == 0


def test_bf16_autocast_forward_backward_finite():
    torch.manual_seed(0)
    head = _tiny_head()
    target, z = torch.randn(16, 3), torch.randn(16, 5, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = head(target, z, torch.ones(16, dtype=torch.bool))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)
    assert torch.isfinite(z.grad).all()


class _Spy:
    def __init__(self, module):
        self.sizes = []
        module.register_forward_pre_hook(lambda mod, args: self.sizes.append(args[0].shape[0]))


def test_cfg_scale_one_is_identical_and_not_doubled():
    torch.manual_seed(0)
    head = _tiny_head()
    with torch.no_grad():
        for p in head.net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    spy = _Spy(head.net)
    z, z_u = torch.randn(6, 5), torch.randn(6, 5)
    a = head.sample(z, num_steps=8, generator=torch.Generator().manual_seed(1))
    assert set(spy.sizes) == {6}
    spy.sizes.clear()
    b = head.sample(z, z_uncond=z_u, cfg_scale=1.0, num_steps=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and set(spy.sizes) == {6}
    spy.sizes.clear()
    c = head.sample(z, z_uncond=z_u, cfg_scale=3.0, num_steps=8, generator=torch.Generator().manual_seed(1))
    assert set(spy.sizes) == {12} and len(spy.sizes) == 8
    assert not torch.allclose(a, c)


class _FakeNet(torch.nn.Module):
    """ε depends on z; the variance channel is a known function of z."""

    def forward(self, x, t, z):
        eps = 0.5 * x + z[:, :3]
        v = torch.tanh(z[:, 3:4]).expand(-1, 3)
        return torch.cat([eps, v], -1)


def test_cfg_guided_eps_formula_and_conditional_variance():
    head = _tiny_head()
    head.net = _FakeNet()
    g = torch.Generator().manual_seed(2)
    z, z_u = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    x, t = torch.randn(4, 3, generator=g), torch.full((4,), 500)
    s = 2.5
    out = head.guided_model_fn(z, z_u, s)(x, t)
    eps_c, eps_u = 0.5 * x + z[:, :3], 0.5 * x + z_u[:, :3]
    assert torch.allclose(out[:, :3], eps_u + s * (eps_c - eps_u), atol=1e-6)
    assert torch.allclose(out[:, 3:], torch.tanh(z[:, 3:4]).expand(-1, 3))


def test_sample_x_T_not_scaled_by_temperature():
    """The last step adds no noise and every step's mean is deterministic: with a zero network
    and τ → small, the sample is a fixed linear map of x_T (x_T itself is not scaled by τ)."""
    head = _tiny_head(learn_sigma=False)  # zero-init net: ε = 0
    z = torch.zeros(5, 5)
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    a = head.sample(z, num_steps=4, temperature=1e-12, noise=noise, generator=torch.Generator().manual_seed(1))
    b = head.sample(z, num_steps=4, temperature=1e-12, noise=2 * noise, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(b, 2 * a, atol=1e-6)
    assert a.abs().min() > 1.0  # x_T was used unscaled (scaling it by τ = 1e-12 gives ~1e-10)


def test_learns_conditional_gaussian_mixture(one_thread):
    torch.manual_seed(0)
    means = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    head = DiffusionLoss(LossConfig(kind="diffusion", mlp_width=64, mlp_depth=2), token_dim=2, z_dim=4)
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    hist = []
    for _ in range(400):
        k = torch.randint(0, 4, (256,), generator=g)
        x = means[k] + 0.1 * torch.randn(256, 2, generator=g)
        loss = head(x, torch.nn.functional.one_hot(k, 4).float(), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(loss.item())
    assert sum(hist[-50:]) / 50 < 0.5 * sum(hist[:50]) / 50
    z = torch.nn.functional.one_hot(torch.arange(4).repeat_interleave(200), 4).float()
    samples = head.sample(z, num_steps=50, generator=torch.Generator().manual_seed(1)).reshape(4, 200, 2)
    assert torch.isfinite(samples).all()
    assert (samples.mean(1) - means).abs().max() < 0.15
    std = samples.std(1)
    assert (std > 0.1 / 2.5).all() and (std < 0.1 * 2.5).all()
