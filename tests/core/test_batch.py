"""Token batches with padding, positions and maskable sets through model and sampler (issue 11):
padding invariance, batched = alone, ragged masking, 3-D RoPE at the official presets."""

from __future__ import annotations

import pytest
import torch

from djepa.core.batch import TokenBatch
from djepa.core.config import SamplerConfig, preset
from djepa.core.masking import FixedMasking, TruncNormalMasking
from djepa.core.model import DJEPA
from djepa.core.rng import row_generators
from djepa.core.sampler import generate


def seq_model(seed=0, **kw) -> DJEPA:
    """A tiny 1-D model on a 12-token line (RoPE), float64."""
    torch.manual_seed(seed)
    cfg = dict(token_dim=3, grid=(12,), num_classes=4, pos_embed="rope", attn_dropout=0.0, proj_dropout=0.0,
               loss=dict(mlp_width=32, mlp_depth=1, diffusion_batch_mul=2))
    cfg.update(kw)
    model = DJEPA(preset("tiny", **cfg)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # make every parameter (zero-init AdaLN too) matter
    return model


# ----------------------------------------------------------------------------- TokenBatch
def test_token_batch_constructors_and_validation():
    t = torch.randn(2, 6, 3)
    g = TokenBatch.from_grid(t, (2, 3))
    assert g.padding is None and torch.equal(g.positions[1], torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]))
    assert g.maskable_mask.all()
    s = TokenBatch.from_lengths(t, [6, 4])
    assert s.padding.tolist()[1] == [False] * 4 + [True] * 2
    assert torch.equal(s.lengths(), torch.tensor([6, 4]))
    assert not s.maskable_mask[1, 4:].any()
    with pytest.raises(ValueError, match="padding position is marked maskable"):
        TokenBatch(t, s.positions, s.padding, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="for grid"):
        TokenBatch.from_grid(t, (4, 4))
    with pytest.raises(ValueError, match="lengths"):
        TokenBatch.from_lengths(t, [7, 1])


def test_trunc_normal_masking_is_ragged_never_masks_padding_and_matches_the_first_release():
    from djepa.core.masking import mask_from_orders, num_masked_tokens, random_orders, sample_mask_ratio

    strat = TruncNormalMasking()
    t = torch.randn(3, 10, 2)
    batch = TokenBatch.from_lengths(t, [10, 6, 0])
    for seed in range(20):
        mask = strat(batch, torch.Generator().manual_seed(seed))
        assert not (mask & batch.padding).any()
        counts = mask.sum(1).tolist()
        assert counts[2] == 0 and 1 <= counts[1] <= 6 and 7 <= counts[0] <= 10
    # full grid: exactly the first release's draws (ratio, then rand(B, N) orders)
    full = TokenBatch.from_grid(t, (10,))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    r = sample_mask_ratio(g2)
    old = mask_from_orders(random_orders(3, 10, generator=g2), num_masked_tokens(10, r))
    assert torch.equal(strat(full, g1), old)


# ----------------------------------------------------------------------------- padding invariance
def _padded(batch_tokens: torch.Tensor, length: int, total: int) -> TokenBatch:
    b, n, d = batch_tokens.shape
    t = torch.cat([batch_tokens, torch.randn(b, total - n, d, dtype=batch_tokens.dtype) * 50], dim=1)
    return TokenBatch.from_lengths(t, [length] * b)


def test_padding_invariance_of_features_and_loss_terms():
    model = seq_model()
    ema = seq_model()
    model.train()
    x = torch.randn(1, 9, 3, dtype=torch.float64)
    mask = torch.zeros(1, 9, dtype=torch.bool)
    mask[0, [1, 4, 5, 8]] = True
    short = TokenBatch.from_lengths(x, [9])
    long = _padded(x, 9, 12)  # 3 padding tokens with huge values
    out = []
    for batch, m in ((short, mask), (long, torch.cat([mask, torch.ones(1, 3, dtype=torch.bool)], 1))):
        model.masking = FixedMasking(m)  # padding marked masked here: the model must ignore it
        out.append(model(batch, torch.tensor([2]), target_model=ema, generator=torch.Generator().manual_seed(5)))
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    # target features and predicted features agree on the real tokens
    torch.testing.assert_close(ema.encode_target(short, torch.tensor([2])),
                               ema.encode_target(long, torch.tensor([2]))[:, :9], atol=1e-12, rtol=1e-12)


def test_features_over_all_tokens_never_attend_to_padding():
    # visible_idx=None ("φ sees every token"): the padding mask must reach the context encoder too
    model = seq_model()
    model.eval()
    x = torch.randn(1, 9, 3, dtype=torch.float64)
    long = _padded(x, 9, 12)
    state = model.condition_state(torch.tensor([1]), 1)
    alone = model.features(x, state, None, positions=torch.arange(9)[None, :, None])
    padded = model.features(long.tokens, state, None, positions=long.positions, padding=long.padding)
    torch.testing.assert_close(padded[:, :9], alone, atol=1e-12, rtol=1e-12)


def test_a_sequence_condition_needs_rope():
    with pytest.raises(ValueError, match="needs pos_embed='rope'"):
        preset("tiny", token_dim=3, grid=(12,), condition="sequence", joint_depth=1)


def test_a_batch_with_rows_of_different_length_equals_each_row_alone_in_the_loss():
    model = seq_model()
    model.eval()  # no condition dropout
    xs = [torch.randn(1, n, 3, dtype=torch.float64) for n in (12, 7)]
    masks = [torch.rand(1, n, generator=torch.Generator().manual_seed(n)) < 0.6 for n in (12, 7)]
    masks[1][0, 0] = True
    feats = []
    for x, m in zip(xs, masks):
        vis = (~m[0]).nonzero().squeeze(-1)[None]
        feats.append(model.features(x, model.condition_state(torch.tensor([1]), 1), vis,
                                    positions=torch.arange(x.shape[1])[None, :, None]))
    t = torch.zeros(2, 12, 3, dtype=torch.float64)
    t[0], t[1, :7] = xs[0][0], xs[1][0]
    batch = TokenBatch.from_lengths(t, [12, 7])
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0], mask[1, :7] = masks[0][0], masks[1][0]
    from djepa.core.model import visible_index

    vis, vpad = visible_index(batch.valid & ~mask)
    z = model.features(batch.tokens, model.condition_state(torch.tensor([1, 1]), 2), vis, positions=batch.positions,
                       visible_padding=vpad, padding=batch.padding)
    torch.testing.assert_close(z[0], feats[0][0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(z[1, :7], feats[1][0], atol=1e-12, rtol=1e-12)


def test_nothing_masked_gives_finite_zero_losses():
    model = seq_model()
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    batch = TokenBatch(x, torch.arange(12)[None, :, None].expand(2, 12, 1), None,
                       torch.zeros(2, 12, dtype=torch.bool))  # nothing maskable (e.g. all prompt)
    out = model(batch, torch.tensor([0, 1]), target_model=seq_model())
    assert all(float(v.detach()) == 0.0 for v in out)
    out.loss.backward()  # a gradient path exists


# ----------------------------------------------------------------------------- sampler
def test_batched_sampling_with_ragged_lengths_and_known_counts_equals_each_row_alone():
    model = seq_model().eval()
    cfg = SamplerConfig(num_ar_steps=5, num_denoise_steps=4, cfg_scale=2.5, temperature=0.9)
    lengths, known_counts, seeds = [12, 7, 9], [0, 3, 5], [11, 22, 33]
    g = torch.Generator().manual_seed(0)
    rows = []
    for n, k in zip(lengths, known_counts):
        t = torch.randn(1, n, 3, generator=g, dtype=torch.float64)
        maskable = torch.ones(1, n, dtype=torch.bool)
        maskable[0, torch.randperm(n, generator=g)[:k]] = False
        rows.append((t, maskable))
    alone = [generate(model, torch.tensor([c]), cfg, generators=row_generators([s]),
                      batch=TokenBatch.from_lengths(t, [t.shape[1]], maskable=m))
             for c, s, (t, m) in zip((0, 1, 3), seeds, rows)]
    t = torch.zeros(3, 12, 3, dtype=torch.float64)
    maskable = torch.zeros(3, 12, dtype=torch.bool)
    for i, (ti, mi) in enumerate(rows):
        t[i, :ti.shape[1]], maskable[i, :ti.shape[1]] = ti[0], mi[0]
    batched = generate(model, torch.tensor([0, 1, 3]), cfg, generators=row_generators(seeds),
                       batch=TokenBatch.from_lengths(t, lengths, maskable=maskable))
    for i, a in enumerate(alone):
        n = lengths[i]
        torch.testing.assert_close(batched[i, :n].double(), a[0].double(), atol=1e-6, rtol=1e-6)
        assert torch.equal(batched[i, n:], torch.zeros(12 - n, 3))  # padding untouched
        known = ~rows[i][1][0]
        assert torch.equal(batched[i, :n][known], rows[i][0][0][known].float())  # float32 output
    # a different batch composition (rows reordered, one dropped) leaves each row's sample alone
    two = generate(model, torch.tensor([3, 0]), cfg, generators=row_generators([seeds[2], seeds[0]]),
                   batch=TokenBatch.from_lengths(t[[2, 0]], [9, 12], maskable=maskable[[2, 0]]))
    torch.testing.assert_close(two[0, :9], batched[2, :9], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(two[1], batched[0], atol=1e-6, rtol=1e-6)


def test_per_row_seeds_make_grid_samples_independent_of_the_batch_size():
    torch.manual_seed(0)
    model = DJEPA(preset("tiny", token_dim=3, grid=(3, 3), num_classes=5)).eval()
    cfg = SamplerConfig(num_ar_steps=3, num_denoise_steps=3, cfg_scale=3.0)
    labels = torch.tensor([4, 1, 2, 0])
    full = generate(model, labels, cfg, generators=row_generators([7, 8, 9, 10]))
    for i in range(4):
        one = generate(model, labels[i:i + 1], cfg, generators=row_generators([7 + i]))
        torch.testing.assert_close(one[0], full[i], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        generate(model, labels, cfg, generator=torch.Generator(), generators=row_generators([1, 2, 3, 4]))
    with pytest.raises(ValueError, match="inconsistent batch sizes"):
        generate(model, labels, cfg, generators=row_generators([1]))


@pytest.mark.parametrize("name", ["B", "L", "H"])
def test_official_presets_build_with_3d_rope_on_a_10_15_20_grid(name):
    cfg = preset(name, grid=(10, 15, 20), pos_embed="rope")
    with torch.device("meta"):
        model = DJEPA(cfg)
    head = cfg.encoder_dim // cfg.encoder_heads
    assert model.encoder.rope.rope.split == {64: (20, 22, 22), 80: (26, 26, 28)}[head]
    assert sum(model.encoder.rope.rope.split) == head
    split = (16, 24, 24) if head == 64 else (16, 32, 32)
    with torch.device("meta"):
        model2 = DJEPA(preset(name, grid=(10, 15, 20), pos_embed="rope", rope_split=split))
    assert model2.predictor.rope.rope.split == split
    # parameter count does not depend on the grid with RoPE (no tables)
    assert sum(p.numel() for p in model2.parameters()) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError):
        preset(name, grid=(10, 15, 20), pos_embed="rope", rope_split=(16, 24, 22))
