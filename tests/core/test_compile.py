"""djepa.core.compile: the backbone compiled for sampling gives the eager numbers."""

from __future__ import annotations

import pytest
import torch

from djepa.core.compile import compile_backbone_for_sampling, is_compiled_for_sampling
from djepa.core.config import SamplerConfig, preset
from djepa.core.model import DJEPA
from djepa.core.sampler import generate


def _model() -> DJEPA:
    torch.manual_seed(0)
    m = DJEPA(preset("tiny", token_dim=3, grid=(4, 4), num_classes=5)).eval()
    with torch.no_grad():  # non-trivial denoising MLP (its AdaLN / final layer start at zero)
        for p in m.token_loss.parameters():
            if p.ndim >= 2 and float(p.abs().max()) == 0.0:
                p.normal_(std=0.05)
    return m


def test_compiled_backbone_matches_eager_features_and_samples():
    torch._dynamo.reset()
    eager, compiled = _model(), _model()
    compile_backbone_for_sampling(compiled)
    assert is_compiled_for_sampling(compiled) and not is_compiled_for_sampling(eager)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # keys unchanged
    assert compile_backbone_for_sampling(compiled) is compiled  # idempotent

    x = torch.randn(2, 16, 3)
    cond = eager.condition(torch.tensor([1, 4]))
    with torch.no_grad():
        for nv in (3, 9):  # two encoder lengths: one dynamic-shape graph serves both
            vis = torch.stack([torch.randperm(16)[:nv].sort().values for _ in range(2)])
            q = torch.tensor([[0, 5], [7, 2]])
            torch.testing.assert_close(compiled.features(x, cond, vis, q), eager.features(x, cond, vis, q),
                                       atol=1e-4, rtol=1e-4)

    cfg = SamplerConfig(num_ar_steps=4, num_denoise_steps=5, cfg_scale=2.0)
    a = generate(eager, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(1))
    b = generate(compiled, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
    # the compiled blocks really ran (Dynamo captured graphs), the eager model never compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1


def test_compile_rejects_models_without_a_backbone():
    with pytest.raises(TypeError, match="encoder/predictor"):
        compile_backbone_for_sampling(torch.nn.Linear(2, 2))
