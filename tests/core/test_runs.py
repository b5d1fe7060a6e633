"""djepa.core.runs.load_run (issue 11, item 8a): one loader for run folders, exports and
checkpoints, for any modality. The folders are laid out with the core's own writers
(save_pretrained, write_manifest), a 1-D tokenizer stands in for audio."""

from __future__ import annotations

import json
import shutil
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file

from djepa.core.config import config_to_dict, preset
from djepa.core.model import DJEPA
from djepa.core.runs import load_run
from djepa.core.tokenizer import register_tokenizer
from djepa.core.train import checkpoint as ckpt


@register_tokenizer
class HopTokenizer:
    kind: ClassVar[str] = "test-runs-hop"

    def __init__(self, length: int, hop: int) -> None:
        self.length, self.hop = length, hop

    grid = property(lambda self: (self.length // self.hop,))
    token_dim = property(lambda self: self.hop)
    value_range = property(lambda self: (-1.0, 1.0))

    def encode(self, data):
        return data.reshape(data.shape[0], -1, self.hop)

    def decode(self, tokens):
        return tokens.reshape(tokens.shape[0], -1)

    def to_config(self):
        return dict(kind=self.kind, length=self.length, hop=self.hop)

    @classmethod
    def from_config(cls, config):
        return cls(int(config["length"]), int(config["hop"]))


@pytest.fixture()
def run(tmp_path):
    """RUN/{config.json, tokenizer.json, pretrained/, checkpoints/step_00000005/} like the engine
    writes them; the checkpoint's EMA differs from the export."""
    torch.manual_seed(0)
    cfg = preset("tiny", token_dim=4, grid=(16,), num_classes=3)
    model = DJEPA(cfg)
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model": config_to_dict(cfg), "train": {"max_steps": 5}}))
    (root / "tokenizer.json").write_text(json.dumps(dict(HopTokenizer(64, 4).to_config(), class_names=["a", "b", "c"])))
    model.save_pretrained(root / "pretrained")
    step = root / "checkpoints" / "step_00000005"
    step.mkdir(parents=True)
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file({k: v.contiguous() for k, v in ema.items()}, str(step / "ema.safetensors"))
    (step / "mp_rank_00_model_states.pt").write_bytes(b"deepspeed state, never read")
    ckpt.write_manifest(step)
    return root, model, ema


def test_run_folder_export_and_checkpoint_load_with_the_recorded_tokenizer(run):
    root, model, ema = run
    for path in (root, root / "pretrained"):
        loaded = load_run(path)
        assert loaded.run_dir == root and loaded.step is None and loaded.run_config["train"] == {"max_steps": 5}
        assert type(loaded.tokenizer) is HopTokenizer and loaded.tokenizer.to_config() == HopTokenizer(64, 4).to_config()
        assert loaded.tokenizer_config["class_names"] == ["a", "b", "c"]
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[k], v), k
        assert not loaded.model.training
    loaded = load_run(root / "checkpoints" / "step_00000005")
    assert loaded.step == 5 and loaded.run_dir == root and loaded.weights.name == "ema.safetensors"
    for k, v in ema.items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    # a bare export (no run folder around it) reads its own tokenizer.json
    bare = root.parent / "bare"
    shutil.copytree(root / "pretrained", bare)
    shutil.copy(root / "tokenizer.json", bare / "tokenizer.json")
    loaded = load_run(bare)
    assert loaded.run_dir is None and loaded.run_config == {} and loaded.tokenizer.grid == (16,)


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_a_checkpoint_is_verified_against_its_manifest_before_loading(run):
    root, _, _ = run
    step = root / "checkpoints" / "step_00000005"
    data = (step / "ema.safetensors").read_bytes()
    (step / "ema.safetensors").write_bytes(data[:-10])
    with pytest.raises(ckpt.CheckpointError) as e:
        load_run(step)
    assert "ema.safetensors: size" in _one_line(e)
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    (step / "ema.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ckpt.CheckpointError, match="sha256 does not match"):
        load_run(step)
    (step / "ema.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="ema.safetensors: missing"):
        load_run(step)
    (step / "ema.safetensors").write_bytes(data)
    (step / "mp_rank_00_model_states.pt").unlink()  # DeepSpeed state is not needed to sample
    assert load_run(step).step == 5
    (step / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no manifest.json"):
        load_run(step)


def test_wrong_or_missing_files_are_refused_with_one_line(run, tmp_path):
    root, _, _ = run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no exported model"):
        load_run(tmp_path / "empty")
    tok = root / "tokenizer.json"
    record = tok.read_text()
    tok.unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_run(root)
    assert "no tokenizer.json" in _one_line(e)
    weights_only = load_run(root, tokenizer=False)  # the weights alone need no tokenizer record
    assert weights_only.tokenizer is None and weights_only.tokenizer_config == {}
    tok.write_text("{not json")
    with pytest.raises(ValueError) as e:
        load_run(root)
    assert "tokenizer.json: not valid JSON" in _one_line(e)
    tok.write_text(json.dumps({"kind": "nobody-registered-this", "length": 64}))
    with pytest.raises(ValueError) as e:
        load_run(root)
    assert "unknown tokenizer kind 'nobody-registered-this'" in _one_line(e)
    tok.write_text(json.dumps(HopTokenizer(64, 8).to_config()))  # 8 tokens of 8, model has 16 of 4
    with pytest.raises(ValueError) as e:
        load_run(root)
    assert "does not match the model" in _one_line(e)
    tok.write_text(record)
    (root / "config.json").write_text(json.dumps({"train": {}}))
    with pytest.raises(ValueError, match="has no 'model' section"):
        load_run(root / "checkpoints" / "step_00000005")
