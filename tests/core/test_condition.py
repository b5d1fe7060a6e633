"""Conditions (issue 11): none / class / sequence through SD3-style joint blocks in φ and γ;
padding of the condition sequence, its null for CFG and dropout; activation checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

from djepa.core.batch import TokenBatch
from djepa.core.blocks import Block, JointBlock
from djepa.core.condition import ConditionState, SequenceInput
from djepa.core.config import SamplerConfig, preset
from djepa.core.masking import FixedMasking
from djepa.core.model import DJEPA
from djepa.core.rng import row_generators
from djepa.core.sampler import generate

DC = 6


def seq_cond_model(seed=0, joint_depth=None, **kw) -> DJEPA:
    torch.manual_seed(seed)
    cfg = dict(token_dim=3, grid=(10,), condition="sequence", condition_dim=DC, joint_depth=joint_depth,
               pos_embed="rope", loss=dict(mlp_width=32, mlp_depth=1, diffusion_batch_mul=2))
    cfg.update(kw)
    model = DJEPA(preset("tiny", **cfg)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("input_dim", [0, 5])
def test_null_flagged_rows_get_the_learned_null_and_the_others_are_untouched(input_dim):
    m = seq_cond_model(condition_input_dim=input_dim)
    cond = m.condition
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4, input_dim or DC, generator=g, dtype=torch.float64)
    pad = torch.tensor([[False] * 4, [False, False, True, True], [False] * 4])
    plain = cond.state(SequenceInput(values, pad), 3)
    flagged = cond.state(SequenceInput(values, pad, null=torch.tensor([False, True, False])), 3)
    for i in (0, 2):  # unflagged rows: exactly the plain state
        torch.testing.assert_close(flagged.sequence[i], plain.sequence[i])
        assert torch.equal(flagged.sequence_padding[i], plain.sequence_padding[i])
    torch.testing.assert_close(flagged.sequence[1, 0], cond.null_embed[0, 0])  # the null token, unprojected
    assert flagged.sequence_padding[1].tolist() == [False, True, True, True]
    # the model's features of a flagged row equal those of the null state (padding invariance)
    tokens = torch.randn(1, 10, 3, generator=g, dtype=torch.float64)
    idx = torch.arange(10)[None, :6]
    one = SequenceInput(values[1:2], pad[1:2], null=torch.tensor([True]))
    torch.testing.assert_close(m.features(tokens, m.condition_state(one, 1), idx),
                               m.features(tokens, m.null_state(1), idx))
    with pytest.raises(ValueError, match="null flags"):
        SequenceInput(values, pad, null=torch.tensor([0, 1, 0]))


def test_structure_joint_depth_and_default_unchanged():
    m = seq_cond_model(joint_depth=1)
    assert [type(b) for b in m.encoder.blocks] == [JointBlock, Block]
    assert [type(b) for b in m.predictor.blocks] == [JointBlock, Block]
    assert m.encoder.blocks[0].context_dim == DC
    assert [n for n, _ in m.condition.named_parameters()] == ["null_embed"]
    full = seq_cond_model()
    assert all(isinstance(b, JointBlock) for b in list(full.encoder.blocks) + list(full.predictor.blocks))
    default = DJEPA(preset("tiny", token_dim=3, grid=(4, 4), num_classes=5))
    assert all(type(b) is Block for b in list(default.encoder.blocks) + list(default.predictor.blocks))
    assert {n for n, _ in default.condition.named_parameters()} == {"class_embed.weight", "null_embed"}
    none = DJEPA(preset("tiny", token_dim=3, grid=(4, 4), condition="none"))
    assert len(list(none.condition.parameters())) == 0
    with pytest.raises(ValueError, match="joint_depth"):
        preset("tiny", joint_depth=1)
    with pytest.raises(ValueError, match="joint_depth"):
        preset("tiny", condition="sequence", pos_embed="rope", joint_depth=3)


def test_condition_input_dim_projects_the_values_and_keeps_the_null_in_the_projected_space():
    m = seq_cond_model(condition_input_dim=5)
    cond = m.condition
    assert cond.input_proj.in_features == 5 and cond.input_proj.out_features == DC
    assert tuple(cond.null_embed.shape) == (1, 1, DC)
    assert m.encoder.blocks[0].context_dim == DC
    g = torch.Generator().manual_seed(0)
    values = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    st = cond.state(SequenceInput(values, pad), 2)
    want = values @ cond.input_proj.weight.T + cond.input_proj.bias  # the linear map, by hand
    torch.testing.assert_close(st.sequence, want)
    assert torch.equal(st.sequence_padding, pad)
    # dropped rows get the (unprojected) learned null token, not a projection of it
    with torch.no_grad():
        cond.null_embed.copy_(torch.arange(DC, dtype=torch.float64).view(1, 1, DC))
    cond.drop_prob = 1.0
    st = cond.state(SequenceInput(values, pad), 2, drop=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(st.sequence[:, 0], cond.null_embed[0].expand(2, DC))
    assert st.sequence_padding[:, 1:].all() and not st.sequence_padding[:, 0].any()
    with pytest.raises(ValueError, match="5"):
        cond.state(SequenceInput(torch.zeros(2, 4, DC, dtype=torch.float64), None), 2)
    # default off: no projection parameters (existing checkpoints load unchanged)
    assert "input_proj.weight" not in dict(seq_cond_model().condition.named_parameters())
    with pytest.raises(ValueError, match="condition_input_dim"):
        preset("tiny", condition_input_dim=5)


def _seq(values, real_at, total, g):
    """Place the real condition rows ``values [L, DC]`` at ``real_at`` in a length-``total``
    sequence; the other slots get large random values and padding=True."""
    out = torch.randn(total, DC, generator=g, dtype=torch.float64) * 30
    pad = torch.ones(total, dtype=torch.bool)
    out[real_at], pad[real_at] = values, False
    return out, pad


def test_permuting_the_condition_padding_changes_nothing():
    model = seq_cond_model()
    ema = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(5, DC, generator=g, dtype=torch.float64)
    a, pa = _seq(real, [0, 1, 2, 3, 4], 5, g)  # no padding at all
    b, pb = _seq(real, [0, 2, 3, 5, 7], 8, g)  # padding interleaved, other length
    c, pc = _seq(real, [3, 4, 5, 6, 7], 8, g)  # padding first
    x = torch.randn(1, 10, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(1, 10, generator=g) < 0.5
    model.masking = FixedMasking(mask)
    outs, feats = [], []
    for v, p in ((a, pa), (b, pb), (c, pc)):
        cond = SequenceInput(v[None], p[None])
        model.eval()
        state = model.condition_state(cond, 1)
        vis = (~mask[0]).nonzero().squeeze(-1)[None]
        feats.append(model.features(x, state, vis))
        outs.append(model(x, cond, target_model=ema, generator=torch.Generator().manual_seed(3)))
    for f in feats[1:]:
        torch.testing.assert_close(f, feats[0], atol=1e-12, rtol=1e-12)
    for o in outs[1:]:
        for u, w in zip(o, outs[0]):
            torch.testing.assert_close(u, w, atol=1e-12, rtol=1e-12)
    # the real order does matter (RoPE on the condition stream): a swap changes the features
    d, pd = _seq(real[[1, 0, 2, 3, 4]], [0, 1, 2, 3, 4], 5, g)
    swapped = model.features(x, model.condition_state(SequenceInput(d[None], pd[None]), 1), vis)
    assert (swapped - feats[0]).abs().max() > 1e-6


def test_dropped_condition_equals_the_null_path_and_dropout_uses_the_step_generator():
    model = seq_cond_model(label_drop_prob=1.0)
    g = torch.Generator().manual_seed(1)
    cond = SequenceInput(torch.randn(2, 7, DC, generator=g, dtype=torch.float64),
                         torch.tensor([[False] * 7, [False] * 4 + [True] * 3]))
    x = torch.randn(2, 10, 3, generator=g, dtype=torch.float64)
    vis = torch.tensor([[0, 3, 4, 8], [1, 2, 5, 9]])
    model.eval()
    dropped = model.condition_state(cond, 2, drop=True)
    null = model.null_state(2)
    torch.testing.assert_close(model.features(x, dropped, vis), model.features(x, null, vis), atol=1e-12, rtol=1e-12)
    kept = model.condition_state(cond, 2)
    assert (model.features(x, kept, vis) - model.features(x, null, vis)).abs().max() > 1e-6
    # p = 0.5: which rows drop is decided by the generator passed in
    model.condition.drop_prob = 0.5
    draws = [model.condition_state(cond, 2, drop=True, generator=torch.Generator().manual_seed(s)).sequence_padding
             for s in (4, 4, 5, 6, 7, 8)]
    assert torch.equal(draws[0], draws[1])
    assert any(not torch.equal(draws[0], d) for d in draws[2:])


def test_condition_state_cat_pads_the_shorter_sequence():
    a = ConditionState(sequence=torch.ones(2, 3, 4), sequence_padding=None)
    b = ConditionState(sequence=torch.zeros(2, 1, 4), sequence_padding=None)
    c = a.cat(b)
    assert c.sequence.shape == (4, 3, 4)
    assert c.sequence_padding.tolist() == [[False] * 3] * 2 + [[False, True, True]] * 2


def test_sequence_cfg_sampling_batched_equals_alone():
    model = seq_cond_model().eval()
    cfg = SamplerConfig(num_ar_steps=4, num_denoise_steps=3, cfg_scale=3.0)
    g = torch.Generator().manual_seed(2)
    vals = torch.randn(2, 6, DC, generator=g, dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    tokens = torch.zeros(2, 10, 3, dtype=torch.float64)
    batch = TokenBatch.from_lengths(tokens, [10, 7])
    both = generate(model, SequenceInput(vals, pad), cfg, batch=batch, generators=row_generators([1, 2]))
    one = generate(model, SequenceInput(vals[1:, :3]), cfg, batch=TokenBatch.from_lengths(tokens[1:, :7], [7]),
                   generators=row_generators([2]))
    torch.testing.assert_close(both[1, :7], one[0], atol=1e-6, rtol=1e-6)
    uncond = generate(model, None, cfg, batch=batch, generators=row_generators([1, 2]))
    assert (uncond - both).abs().max() > 1e-3  # the condition is used


@pytest.mark.parametrize("condition", ["class", "sequence"])
def test_activation_checkpointing_gives_the_plain_gradients(condition):
    torch.manual_seed(0)
    kw = dict(token_dim=3, grid=(10,), pos_embed="rope", attn_dropout=0.1, proj_dropout=0.1,
              loss=dict(mlp_width=32, mlp_depth=1))
    if condition == "sequence":
        kw.update(condition="sequence", condition_dim=DC, joint_depth=1)
    plain = DJEPA(preset("tiny", **kw)).double()
    ckpt = DJEPA(preset("tiny", activation_checkpointing=True, **kw)).double()
    ckpt.load_state_dict(plain.state_dict())
    ema = copy.deepcopy(plain)
    x = torch.randn(3, 10, 3, dtype=torch.float64)
    cond = (torch.tensor([0, 1, 2]) if condition == "class"
            else SequenceInput(torch.randn(3, 4, DC, dtype=torch.float64)))
    grads = []
    for m in (plain, ckpt):
        m.train()
        torch.manual_seed(7)  # dropout masks drawn from the global RNG: replayed by checkpoint
        out = m(x, cond, target_model=ema, generator=torch.Generator().manual_seed(9))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-12, rtol=1e-10, msg=n)
