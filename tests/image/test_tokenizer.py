"""djepa.image.tokenizer: PixelTokenizer patchify / unpatchify and the Tokenizer protocol."""

from __future__ import annotations

import pytest
import torch

from djepa.image.tokenizer import PixelTokenizer, Tokenizer, fraction_outside


@pytest.mark.parametrize(
    "c,size,p", [(1, 8, 1), (1, 8, 2), (1, 16, 4), (3, 16, 4), (1, 28, 4), (3, 12, 3), (3, 32, 16)]
)
def test_round_trip_exact(c, size, p):
    g = torch.Generator().manual_seed(c * 100 + size + p)
    x = torch.rand(3, c, size, size, generator=g)
    tok = PixelTokenizer(c, size, p)
    t = tok.encode(x)
    n = (size // p) ** 2
    assert t.shape == (3, n, c * p * p) and tok.token_dim == c * p * p and tok.num_tokens == n
    assert tok.grid == (size // p, size // p)
    assert (tok.decode(t) - x).abs().max() < 1e-6
    assert (tok.decode(t, clamp=False) - x).abs().max() < 1e-6
    # the values are 2x - 1, only rearranged
    assert torch.allclose(t.flatten().sort().values,
                          (2 * x - 1).flatten().sort().values, atol=1e-6)


def test_token_order_matches_hand_built_patches():
    c, h, w, p = 3, 8, 12, 4
    x = torch.arange(2 * c * h * w, dtype=torch.float64).reshape(2, c, h, w) / (2 * c * h * w)
    tok = PixelTokenizer(c, (h, w), p)
    t = tok.encode(x)
    assert tok.grid == (2, 3) and t.shape == (2, 6, 48) and t.dtype == torch.float64
    for b in range(2):
        for r in range(2):
            for col in range(3):
                patch = x[b, :, r * p:(r + 1) * p, col * p:(col + 1) * p]  # [C, p, p]
                expected = 2 * patch.reshape(-1) - 1  # (channel, row, column) order
                assert torch.equal(t[b, r * 3 + col], expected)
    # token 1 is the patch right of token 0 (row-major), token 3 the one below it
    assert float(t[0, 1, 0]) == 2 * float(x[0, 0, 0, 4]) - 1
    assert float(t[0, 3, 0]) == 2 * float(x[0, 0, 4, 0]) - 1


def test_value_range_and_clamp():
    tok = PixelTokenizer(1, 4, 2)
    assert tok.value_range == (-1.0, 1.0)
    zeros, ones = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    assert torch.equal(tok.encode(zeros), -torch.ones(1, 4, 4))
    assert torch.equal(tok.encode(ones), torch.ones(1, 4, 4))
    t = torch.linspace(-1.5, 1.5, 16).reshape(1, 4, 4)
    raw = tok.decode(t, clamp=False)
    assert torch.allclose(tok.encode(raw), t, atol=1e-6)  # exact inverse also out of range
    assert float(raw.min()) == pytest.approx(-0.25) and float(raw.max()) == pytest.approx(1.25)
    clamped = tok.decode(t)
    assert float(clamped.min()) == 0.0 and float(clamped.max()) == 1.0
    assert torch.equal(clamped, raw.clamp(0, 1))
    # 16 evenly spaced values in [-1.5, 1.5]: step 0.2; |v| > 1 for 3 on each side
    assert fraction_outside(t, tok.value_range) == pytest.approx(6 / 16)
    assert fraction_outside(t, None) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="does not divide"):
        PixelTokenizer(1, 28, 3)
    with pytest.raises(ValueError, match="does not divide"):
        PixelTokenizer(3, (16, 10), 4)
    with pytest.raises(ValueError, match="positive"):
        PixelTokenizer(0, 8, 2)
    tok = PixelTokenizer(1, 8, 2)
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        tok.encode(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, 16, 4\]"):
        tok.decode(torch.zeros(2, 15, 4))


def test_protocol():
    tok = PixelTokenizer(1, 8, 2)
    assert isinstance(tok, Tokenizer)
    assert not isinstance(object(), Tokenizer)


def test_pixel_tokenizer_json_round_trip_through_the_core_registry():
    import json

    from djepa.core.tokenizer import tokenizer_from_config

    for tok in (PixelTokenizer(3, 12, 3), PixelTokenizer(1, (8, 12), 4)):
        record = json.loads(json.dumps(tok.to_config()))
        again = tokenizer_from_config(record)
        assert type(again) is PixelTokenizer
        assert (again.channels, again.image_size, again.patch_size) == (tok.channels, tok.image_size, tok.patch_size)
        x = torch.rand(2, tok.channels, *tok.image_size, generator=torch.Generator().manual_seed(0))
        assert torch.equal(again.encode(x), tok.encode(x))
    # the record image-train wrote before the protocol existed (tokenizer.json) still loads
    old = {"kind": "pixel", "channels": 1, "image_size": 8, "patch_size": 2, "value_range": [-1.0, 1.0],
           "class_names": ["0", "1"]}
    assert PixelTokenizer(1, 8, 2).to_config() == {k: v for k, v in old.items() if k != "class_names"}
    assert tokenizer_from_config(old).grid == (4, 4)
    with pytest.raises(ValueError, match="does not divide"):
        tokenizer_from_config(dict(old, patch_size=3))


def test_non_finite_tokens_count_as_out_of_range():
    t = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 0.5, 2.0, -0.5, 0.25])
    assert fraction_outside(t, (-1.0, 1.0)) == pytest.approx(4 / 8)   # nan, ±inf, 2.0
    assert fraction_outside(t, None) == pytest.approx(3 / 8)
    assert fraction_outside(torch.full((4,), float("nan")), (-1.0, 1.0)) == 1.0


@pytest.mark.parametrize("flag", ["temperature", "cfg"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_sampler_flags_refuse_non_finite_values(flag, value):
    from djepa.core.cli import UserError
    from djepa.image.sampler_flags import SamplerFlags

    with pytest.raises(UserError, match="must be finite"):
        SamplerFlags(**{flag: value}).sampler_config(16)
    assert SamplerFlags(**{flag: 0.97 if flag == "temperature" else 4.0}).sampler_config(16)
