"""The token-aligned condition (``DJEPAConfig.aligned_dim``, ``SequenceInput.aligned``; added for
text-to-speech, issue 14): a per-token additive condition in φ and γ, null = zeros, dropped with
the same rows as the sequence, padding-invariant, batched = single in the sampler."""

from __future__ import annotations

import pytest
import torch

from djepa.core.batch import TokenBatch
from djepa.core.condition import ConditionState, SequenceInput
from djepa.core.config import SamplerConfig, preset
from djepa.core.masking import FixedMasking
from djepa.core.model import DJEPA
from djepa.core.rng import row_generators
from djepa.core.sampler import generate

DC, DA, N = 6, 5, 10


def model(seed=0, aligned_dim=DA) -> DJEPA:
    torch.manual_seed(seed)
    m = DJEPA(preset("tiny", token_dim=3, grid=(N,), condition="sequence", condition_dim=DC,
                     pos_embed="rope", joint_depth=None, aligned_dim=aligned_dim, loss=dict(kind="flow", mlp_width=32, mlp_depth=1)))
    m = m.double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_config_checks_and_no_parameters_by_default():
    with pytest.raises(ValueError, match="aligned_dim"):
        preset("tiny", aligned_dim=4)  # class condition
    plain = model(aligned_dim=0)
    assert plain.encoder.aligned_embed is None and plain.predictor.aligned_embed is None
    m = model()
    assert m.encoder.aligned_embed.weight.shape == (64, DA)
    assert m.predictor.aligned_embed.weight.shape == (64, DA)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, N, 3, generator=g, dtype=torch.float64)
    seq = SequenceInput(torch.randn(2, 4, DC, generator=g, dtype=torch.float64),
                        aligned=torch.randn(2, N, DA, generator=g, dtype=torch.float64))
    with pytest.raises(ValueError, match="aligned_dim=0"):
        plain.features(x, plain.condition_state(seq, 2), None)


def test_aligned_changes_features_and_null_is_zeros():
    m = model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, N, 3, generator=g, dtype=torch.float64)
    vals = torch.randn(2, 4, DC, generator=g, dtype=torch.float64)
    a = torch.randn(2, N, DA, generator=g, dtype=torch.float64)
    vis = torch.tensor([[0, 3, 5], [1, 2, 9]])
    z_a = m.features(x, m.condition_state(SequenceInput(vals, aligned=a), 2), vis)
    z_0 = m.features(x, m.condition_state(SequenceInput(vals, aligned=torch.zeros_like(a)), 2), vis)
    z_none = m.features(x, m.condition_state(SequenceInput(vals), 2), vis)
    torch.testing.assert_close(z_0, z_none, rtol=0, atol=1e-12)  # None = zeros
    assert (z_a - z_0).abs().max() > 1e-3
    # a change of the aligned vector at a masked (not visible) position reaches γ's output there
    a2 = a.clone()
    a2[0, 7] += 1.0
    z_b = m.features(x, m.condition_state(SequenceInput(vals, aligned=a2), 2), vis)
    assert (z_b[0, 7] - z_a[0, 7]).abs().max() > 1e-4
    torch.testing.assert_close(z_b[1], z_a[1], rtol=0, atol=1e-12)


def test_dropout_zeroes_the_same_rows_and_cfg_cat():
    m = model()
    m.condition.drop_prob = 0.5
    g = torch.Generator().manual_seed(2)
    vals = torch.randn(8, 4, DC, generator=g, dtype=torch.float64)
    a = torch.randn(8, N, DA, generator=g, dtype=torch.float64) + 3.0
    st = m.condition.state(SequenceInput(vals, aligned=a), 8, drop=True, generator=torch.Generator().manual_seed(3))
    dropped = (st.sequence[:, 0] == m.condition.null_embed[0, 0]).all(-1) & st.sequence_padding[:, 1:].all(-1)
    assert 0 < int(dropped.sum()) < 8
    assert bool((st.aligned[dropped] == 0).all()) and bool((st.aligned[~dropped] == a[~dropped]).all())
    both = st.cat(m.null_state(8))
    assert both.aligned.shape == (16, N, DA) and bool((both.aligned[8:] == 0).all())


def test_training_loss_padding_invariant():
    """A row padded to a longer length (aligned padding filled with junk) gives the same loss."""
    m = model().train()
    m.masking = FixedMasking(torch.tensor([[False, True, True, False, True, True]]))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 6, 3, generator=g, dtype=torch.float64)
    vals = torch.randn(1, 3, DC, generator=g, dtype=torch.float64)
    a = torch.randn(1, 6, DA, generator=g, dtype=torch.float64)
    alone = m(TokenBatch.from_lengths(x, [6]), SequenceInput(vals, aligned=a), target_model=m,
              generator=torch.Generator().manual_seed(5))
    xp = torch.cat([x, 50 * torch.randn(1, 3, 3, generator=g, dtype=torch.float64)], 1)
    ap = torch.cat([a, 50 * torch.randn(1, 3, DA, generator=g, dtype=torch.float64)], 1)
    m.masking = FixedMasking(torch.tensor([[False, True, True, False, True, True, False, False, False]]))
    padded = m(TokenBatch.from_lengths(xp, [6]), SequenceInput(vals, aligned=ap), target_model=m,
               generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(padded.loss, alone.loss, rtol=1e-9, atol=1e-12)


def test_sampler_batched_equals_single_with_aligned():
    m = model()
    g = torch.Generator().manual_seed(6)
    lens, lc = [7, 4], [3, 2]
    vals = torch.randn(2, 3, DC, generator=g, dtype=torch.float64)
    pad = torch.tensor([[False] * 3, [False, False, True]])
    a = torch.randn(2, 7, DA, generator=g, dtype=torch.float64)
    cfg = SamplerConfig(num_ar_steps=3, cfg_scale=2.0, num_denoise_steps=4)
    tmpl = TokenBatch.from_lengths(torch.zeros(2, 7, 3, dtype=torch.float64), lens)
    both = generate(m, SequenceInput(vals, pad, a), cfg, batch=tmpl, generators=row_generators([10, 11]))
    for i in range(2):
        one_t = TokenBatch.from_lengths(torch.zeros(1, lens[i], 3, dtype=torch.float64), [lens[i]])
        one = generate(m, SequenceInput(vals[i:i + 1, :lc[i]], None, a[i:i + 1, :lens[i]]), cfg,
                       batch=one_t, generators=row_generators([10 + i]))
        torch.testing.assert_close(both[i, :lens[i]], one[0], rtol=1e-6, atol=1e-8)
    # the sampler hands the aligned condition to the model (not dropped on the way)
    other = generate(m, SequenceInput(vals, pad, a + 1.0), cfg, batch=tmpl, generators=row_generators([10, 11]))
    assert (other - both)[0, :lens[0]].abs().max() > 1e-3
