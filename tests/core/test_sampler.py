"""Algorithm 1 (paper §3.5): schedule, CFG, reproducibility, known tokens."""

from __future__ import annotations

import math

import pytest
import torch

from djepa.core.config import SamplerConfig, preset
from djepa.core.model import DJEPA
from djepa.core.sampler import ar_schedule, cfg_at, generate

GRID = (4, 4)
N = 16


def tiny_model(kind: str = "diffusion", seed: int = 0) -> DJEPA:
    torch.manual_seed(seed)
    return DJEPA(preset("tiny", token_dim=3, grid=GRID, num_classes=5, loss=dict(kind=kind))).eval()


@pytest.mark.parametrize("n,k", [(1, 1), (16, 1), (16, 2), (16, 8), (16, 16), (16, 64), (256, 64),
                                 (256, 256), (7, 100), (49, 3)])
def test_schedule_reveals_every_token_once(n, k):
    steps = ar_schedule(n, k)
    assert len(steps) == k
    assert sum(s.num_revealed for s in steps) == n
    assert all(s.num_revealed >= 0 for s in steps)


def test_schedule_follows_cosine_formula():
    # Independent reference: MaskGIT/MAR cosine schedule, mask_len = floor(N cos(pi/2 (k+1)/K)).
    n, k = 256, 64
    remaining, expected = n, []
    for step in range(k):
        target = int(n * math.cos(math.pi / 2 * (step + 1) / k))
        keep_masked = max(1, min(remaining - 1, target))
        take = remaining if step == k - 1 else remaining - keep_masked
        expected.append(take)
        remaining -= take
    got = [s.num_revealed for s in ar_schedule(n, k)]
    assert got == expected
    assert got[0] == n - int(n * math.cos(math.pi / 2 / k))  # 256 - 255 = 1 token first
    assert got[0] < got[k // 2]  # cosine: few tokens early, many later


def test_schedule_k_equals_n_is_one_token_per_step_and_k_one_is_all():
    assert [s.num_revealed for s in ar_schedule(16, 1)] == [16]
    counts = [s.num_revealed for s in ar_schedule(16, 16)]
    assert sum(counts) == 16 and max(counts) <= 4


class Recorder:
    """Wraps a token loss' sample() to record its batch sizes and cfg scales."""

    def __init__(self, model: DJEPA):
        self.calls: list[dict] = []
        self.feature_batches: list[int] = []
        orig_sample, orig_features = model.token_loss.sample, model.features

        def sample(z, **kw):
            self.calls.append(dict(rows=z.shape[0], **{k: kw[k] for k in ("cfg_scale", "z_uncond")}))
            return orig_sample(z, **kw)

        def features(tokens, cond, vis, query_idx=None):
            self.feature_batches.append(tokens.shape[0])
            return orig_features(tokens, cond, vis, query_idx)

        model.token_loss.sample = sample
        model.features = features


def reference_algorithm_1(model, labels, k, steps, temperature, seed):
    """Algorithm 1 written plainly (official loop structure, no CFG): random order, cosine
    schedule, φ on the revealed tokens, γ everywhere, denoise the chosen ones."""
    g = torch.Generator().manual_seed(seed)
    b = labels.shape[0]
    orders = torch.rand(b, N, generator=g).argsort(1)
    tokens = torch.zeros(b, N, 3)
    cond = model.condition.class_embed(labels)
    revealed = 0
    for step in range(k):
        mask_len = max(1, min(N - revealed - 1, int(N * math.cos(math.pi / 2 * (step + 1) / k))))
        take = N - revealed if step == k - 1 else N - revealed - mask_len
        if take <= 0:
            continue
        visible = orders[:, :revealed].sort(1).values
        z = model.predictor(model.encoder(tokens, cond, visible), visible)
        chosen = orders[:, revealed:revealed + take]
        zc = torch.stack([z[i, chosen[i]] for i in range(b)]).reshape(-1, z.shape[-1])
        x = model.token_loss.sample(zc, temperature=temperature, num_steps=steps, generator=g)
        for i in range(b):
            tokens[i, chosen[i]] = x.reshape(b, take, 3)[i]
        revealed += take
    return tokens


def test_cfg_one_equals_plain_algorithm_1_and_does_not_double_batch():
    model = tiny_model()
    labels = torch.tensor([0, 3])
    rec = Recorder(model)
    cfg = SamplerConfig(num_ar_steps=4, num_denoise_steps=5, cfg_scale=1.0, temperature=0.9)
    a = generate(model, labels, cfg, generator=torch.Generator().manual_seed(1))
    assert set(rec.feature_batches) == {2}
    assert all(c["z_uncond"] is None and c["cfg_scale"] == 1.0 for c in rec.calls)
    ref = reference_algorithm_1(tiny_model(), labels, k=4, steps=5, temperature=0.9, seed=1)
    assert torch.equal(a, ref)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_last_predictor_block_runs_on_the_revealed_rows_only(cfg_scale):
    # Per AR step the last block of γ (MLP) and the final norm see only the tokens revealed
    # at that step (twice with cfg), not all N positions.
    model = tiny_model()
    rows_seen = []
    model.predictor.blocks[-1].mlp.register_forward_hook(lambda m, i, o: rows_seen.append(o.shape[:2]))
    norm_rows = []
    model.predictor.norm.register_forward_hook(lambda m, i, o: norm_rows.append(o.shape[:2]))
    cfg = SamplerConfig(num_ar_steps=6, num_denoise_steps=3, cfg_scale=cfg_scale)
    generate(model, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(0))
    doubled = 2 if cfg_scale != 1.0 else 1
    expected = [(2 * doubled, s.num_revealed) for s in ar_schedule(N, 6) if s.num_revealed]
    assert rows_seen == expected and norm_rows == expected
    assert sum(r for _, r in rows_seen) == N


def test_cfg_unconditional_half_uses_the_null_class():
    model = tiny_model()
    seen = {}
    orig = model.token_loss.sample

    def sample(z, **kw):
        seen.setdefault("z", z)
        seen.setdefault("z_uncond", kw["z_uncond"])
        return orig(z, **kw)

    model.token_loss.sample = sample
    labels = torch.tensor([1, 4])
    g = torch.Generator().manual_seed(5)
    generate(model, labels, SamplerConfig(num_ar_steps=2, num_denoise_steps=2, cfg_scale=2.0), generator=g)
    orders = torch.rand(2, N, generator=torch.Generator().manual_seed(5)).argsort(1)
    first = orders[:, :5]  # K = 2 on 16 tokens reveals 16 - floor(16 cos(pi/4)) = 5 tokens first
    empty = torch.zeros(2, 0, dtype=torch.long)
    tokens = torch.zeros(2, N, 3)
    z_c = model.features(tokens, model.condition(labels), empty)
    z_u = model.features(tokens, model.condition.null(2), empty)
    pick = lambda z: torch.stack([z[i, first[i]] for i in range(2)]).reshape(-1, z.shape[-1])
    assert torch.allclose(seen["z"], pick(z_c), atol=1e-6)
    assert torch.allclose(seen["z_uncond"], pick(z_u), atol=1e-6)
    assert not torch.allclose(seen["z"], seen["z_uncond"])


def test_sampler_settings_reach_the_denoiser():
    model = tiny_model("flow")
    got = []
    model.token_loss.sample = lambda z, **kw: got.append(kw) or torch.zeros(z.shape[0], 3)
    generate(model, torch.tensor([0]), SamplerConfig(num_ar_steps=2, num_denoise_steps=7, temperature=0.8,
                                                      flow_solver="heun", flow_time_shift=2.5),
             clip_range=(-1.0, 1.0))
    assert {(k["num_steps"], k["temperature"], k["solver"], k["time_shift"], k["clip_range"]) for k in got} == {
        (7, 0.8, "heun", 2.5, (-1.0, 1.0))}
    got.clear()  # flow_time_shift=None defers to the model's own LossConfig.flow_time_shift
    generate(model, torch.tensor([0]), SamplerConfig(num_ar_steps=1))
    assert "time_shift" not in got[0]


def test_linear_cfg_value_at_each_step_and_doubled_batch():
    model = tiny_model()
    rec = Recorder(model)
    k = 5
    generate(model, torch.tensor([1, 2]), SamplerConfig(num_ar_steps=k, num_denoise_steps=3, cfg_scale=3.0),
             generator=torch.Generator().manual_seed(0))
    assert set(rec.feature_batches) == {4}
    expected = []
    remaining = N
    for step in range(k):
        mask_len = max(1, min(remaining - 1, int(N * math.cos(math.pi / 2 * (step + 1) / k))))
        expected.append(1 + 2.0 * (N - mask_len) / N)
        remaining -= remaining if step == k - 1 else remaining - mask_len
    got = [c["cfg_scale"] for c in rec.calls]
    assert got == pytest.approx(expected)
    assert got[-1] == pytest.approx(1 + 2.0 * (N - 1) / N)  # official: mask_len clamps to 1
    assert cfg_at(4.0, "constant", 3, 16) == 4.0


def test_same_seed_same_samples_different_seed_different():
    model = tiny_model()
    cfg = SamplerConfig(num_ar_steps=3, num_denoise_steps=4, cfg_scale=2.0)
    labels = torch.tensor([0, 1, 4])
    a = generate(model, labels, cfg, generator=torch.Generator().manual_seed(7))
    b = generate(model, labels, cfg, generator=torch.Generator().manual_seed(7))
    c = generate(model, labels, cfg, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_each_token_filled_exactly_once_in_order_of_schedule():
    model = tiny_model()
    step_ids = iter(range(1, 1000))

    def fake_sample(z, **kw):  # returns the AR step's id in every channel
        return torch.full((z.shape[0], 3), float(next(step_ids)))

    model.token_loss.sample = fake_sample
    k = 6
    out = generate(model, torch.tensor([0, 1]), SamplerConfig(num_ar_steps=k),
                   generator=torch.Generator().manual_seed(3))
    schedule = [s.num_revealed for s in ar_schedule(N, k)]
    for row in out:
        values = row[:, 0]
        assert (values > 0).all()  # every token was written
        # tokens written at the j-th call: exactly schedule[j] of them in each sample
        counts = [int((values == j + 1).sum()) for j in range(k)]
        assert counts == schedule


def test_known_tokens_never_change_and_unknown_are_filled():
    model = tiny_model()
    known = torch.randn(2, N, 3)
    known_mask = torch.zeros(2, N, dtype=torch.bool)
    known_mask[:, :6] = True  # left part of a 4x4 grid
    known_mask[1] = known_mask[1][torch.randperm(N)]
    out = generate(model, torch.tensor([2, 3]), SamplerConfig(num_ar_steps=4, num_denoise_steps=4),
                   generator=torch.Generator().manual_seed(0), known_tokens=known, known_mask=known_mask)
    assert torch.equal(out[known_mask], known[known_mask])
    assert (out[~known_mask].abs().sum(-1) > 0).all()


def test_known_mask_with_unequal_rows_is_accepted_and_kept():
    """Issue 11 lifts the first release's refusal of unequal known counts per row: each row
    runs its own schedule over its own unknown tokens."""
    model = tiny_model()
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[0, 0] = True
    mask[1, 3:9] = True
    known = torch.randn(2, N, 3)
    out = generate(model, torch.tensor([0, 0]), SamplerConfig(num_ar_steps=2, num_denoise_steps=2),
                   known_tokens=known, known_mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[mask], known[mask])
    assert (out[~mask].abs().sum(-1) > 0).all()


def test_out_of_range_class_id_is_a_clear_error():
    with pytest.raises(ValueError, match="class id 5 is out of range"):
        generate(tiny_model(), torch.tensor([5]), SamplerConfig(num_ar_steps=2))


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_generate_works_for_both_heads_and_k_greater_than_n(kind):
    model = tiny_model(kind)
    calls = []
    out = generate(model, None, SamplerConfig(num_ar_steps=40, num_denoise_steps=3, flow_solver="heun"),
                   batch_size=2, generator=torch.Generator().manual_seed(0),
                   callback=lambda k, total, toks: calls.append((k, total)))
    assert out.shape == (2, N, 3) and torch.isfinite(out).all()
    assert calls == [(k, 40) for k in range(40)]  # callback once per AR step, K > N works
