"""The text-conditioned D-JEPA as t2i uses it: text padding invariance, batched = single sampling
with prompts of different length, and CFG with an empty prompt (= the unconditional sample)."""

from __future__ import annotations

import pytest
import torch

from djepa.core.condition import SequenceInput
from djepa.core.config import SamplerConfig, preset
from djepa.core.model import DJEPA
from djepa.core.rng import row_generators
from djepa.core.sampler import generate

D_TEXT = 24


def _model(seed=0, stream_dim=D_TEXT):
    """``stream_dim != D_TEXT``: the text states are projected to it first (condition_input_dim)."""
    torch.manual_seed(seed)
    m = DJEPA(preset("tiny", token_dim=12, grid=(4, 4), num_classes=1, condition="sequence",
                     condition_dim=stream_dim, condition_input_dim=0 if stream_dim == D_TEXT else D_TEXT,
                     pos_embed="rope", joint_depth=None, loss=dict(kind="flow")))
    with torch.no_grad():  # a non-trivial null token and denoising MLP (its zero-init output layer
        m.condition.null_embed.normal_()  # would make every velocity 0, samples = noise)
        for p in m.token_loss.parameters():
            p.normal_(0.0, 0.2)
    return m.eval()


class _FakeText:
    """A text 'encoder' with fixed random states per prompt (length = words + 2)."""

    dim = D_TEXT

    def __init__(self):
        self.g = torch.Generator().manual_seed(1)
        self.table = {}

    def encode(self, texts):
        rows = []
        for t in texts:
            if t not in self.table:
                self.table[t] = torch.randn(len(t.split()) + 2, D_TEXT, generator=self.g)
            rows.append(self.table[t])
        L = max(r.shape[0] for r in rows)
        v = torch.zeros(len(rows), L, D_TEXT)
        pad = torch.ones(len(rows), L, dtype=torch.bool)
        for i, r in enumerate(rows):
            v[i, :len(r)] = r
            pad[i, :len(r)] = False
        return SequenceInput(v, pad)


def test_padding_the_text_states_does_not_change_the_output():
    m = _model()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 12, generator=g)
    text = torch.randn(2, 5, D_TEXT, generator=g)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    extra = torch.randn(2, 4, D_TEXT, generator=g) * 10  # garbage at padded positions
    padded = SequenceInput(torch.cat([text, extra], 1), torch.cat([pad, torch.ones(2, 4, dtype=torch.bool)], 1))
    plain = SequenceInput(text, pad)
    idx = torch.arange(16)[None].expand(2, -1)[:, :10].contiguous()
    za = m.features(tokens, m.condition_state(plain, 2), idx)
    zb = m.features(tokens, m.condition_state(padded, 2), idx)
    torch.testing.assert_close(za, zb, atol=1e-5, rtol=1e-5)
    # and it is the text that matters: other text, other features
    other = SequenceInput(torch.randn(2, 5, D_TEXT, generator=g), pad)
    assert (m.features(tokens, m.condition_state(other, 2), idx) - za).abs().max() > 1e-3
    # the training loss too (same draws)
    m.train()
    la = m(tokens, plain, target_model=m, generator=torch.Generator().manual_seed(5)).loss
    lb = m(tokens, padded, target_model=m, generator=torch.Generator().manual_seed(5)).loss
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stream_dim", [D_TEXT, 16])
def test_batched_equals_single_sampling(stream_dim):
    from djepa.multimodal.text_encoder import condition_for

    m = _model(stream_dim=stream_dim)
    text = _FakeText()
    prompts = ["a red circle", "a blue square below a red circle", "", "two green triangles"]  # "" = null row
    cfg = SamplerConfig(num_ar_steps=4, cfg_scale=3.0, num_denoise_steps=5)
    batched = generate(m, condition_for(m, prompts, text), cfg, generators=row_generators([10, 11, 12, 13]))
    for i, p in enumerate(prompts):
        alone = generate(m, condition_for(m, [p], text), cfg, generators=row_generators([10 + i]))
        torch.testing.assert_close(batched[i:i + 1], alone, atol=1e-4, rtol=1e-4)  # float noise; a bug is O(1)
    assert (batched[0] - batched[1]).abs().max() > 1e-3


@pytest.mark.parametrize("stream_dim", [D_TEXT, 16])
def test_cfg_with_an_empty_prompt_is_the_unconditional_sample(stream_dim):
    from djepa.multimodal.text_encoder import condition_for

    m = _model(stream_dim=stream_dim)
    text = _FakeText()
    cfg = SamplerConfig(num_ar_steps=4, cfg_scale=4.0, num_denoise_steps=5)
    empty = generate(m, condition_for(m, [""], text), cfg, generators=row_generators([7]))
    uncond = generate(m, None, cfg, batch_size=1, generators=row_generators([7]))
    torch.testing.assert_close(empty, uncond, atol=1e-4, rtol=1e-4)  # float noise; a bug is O(1)
    # a real prompt at the same cfg and seed differs
    real = generate(m, condition_for(m, ["a red circle"], text), cfg, generators=row_generators([7]))
    assert (real - uncond).abs().max() > 1e-3
