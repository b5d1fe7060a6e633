"""djepa.core.cpu_speed.compile: the backbone compiled for sampling gives the eager numbers."""

from __future__ import annotations

import pytest
import torch

from djepa.core.cpu_speed.compile import compile_backbone_for_sampling, is_compiled_for_sampling
from djepa.core.config import SamplerConfig, preset
from djepa.core.model import DJEPA
from djepa.core.sampler import generate


def _model(**kw) -> DJEPA:
    torch.manual_seed(0)
    m = DJEPA(preset("tiny", token_dim=3, grid=(4, 4), num_classes=5, **kw)).eval()
    with torch.no_grad():  # non-trivial denoising MLP (its AdaLN / final layer start at zero)
        for p in m.token_loss.parameters():
            if p.ndim >= 2 and float(p.abs().max()) == 0.0:
                p.normal_(std=0.05)
    return m


def _block_cache_entries(model) -> int:
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return len(_debug_get_cache_entry_list(type(model.encoder.blocks[0]).forward.__code__))


def test_compiled_backbone_matches_eager_features_and_samples_fp32_and_bf16():
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
    n_blocks = len(eager.encoder.blocks) + len(eager.predictor.blocks)
    assert _block_cache_entries(compiled) >= n_blocks  # every block really compiled

    cfg = SamplerConfig(num_ar_steps=4, num_denoise_steps=5, cfg_scale=2.0)
    a = generate(eager, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(1))
    b = generate(compiled, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(b, a, atol=1e-3, rtol=1e-3)
    # bf16 autocast, as image-sample --compile runs by default: same tokens to bf16 precision
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a16 = generate(eager, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(1))
        b16 = generate(compiled, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(1))
    assert (b16 - a16).abs().max() < 0.05 * a16.abs().max()


def test_more_blocks_than_dynamos_default_limit_all_compile():
    # 6 + 6 blocks share Block.forward's code; with frozen weights each is its own cache entry
    # (plus dynamic variants): the default limit of 8 would leave blocks 9–12 eager.
    import torch._dynamo.config as dynamo_config

    torch._dynamo.reset()
    model = _model(encoder_depth=6, predictor_depth=6)
    compile_backbone_for_sampling(model, backend="eager")
    cfg = SamplerConfig(num_ar_steps=7, num_denoise_steps=2)  # varying revealed rows per step
    with dynamo_config.patch(fail_on_recompile_limit_hit=True):
        generate(model, torch.tensor([0, 3]), cfg, generator=torch.Generator().manual_seed(0))
    assert _block_cache_entries(model) >= 12


def test_compile_rejects_models_without_a_backbone():
    with pytest.raises(TypeError, match="encoder/predictor"):
        compile_backbone_for_sampling(torch.nn.Linear(2, 2))
