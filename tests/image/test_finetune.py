"""``image-finetune``: φ + linear head on the shared engine (paper App. E.2, Table 10)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from djepa.core.config import preset
from djepa.core.model import DJEPA
from djepa.image import finetune as ft_cli
from djepa.image import train as train_cli
from djepa.image.features import pooled_features
from djepa.image.finetune import EncoderClassifier

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--log-every", "1",
        "--warmup-steps", "0", "--no-progress-bar", "--no-tensorboard"]
FT = ["--batch-size", "8", "--warmup-steps", "1", "--log-every", "1", "--max-train", "64",
      "--max-test", "40", "--no-progress-bar", "--zero-stage", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pre")
    assert train_cli.main(TINY + ["--max-steps", "2", "--output-dir", str(d)]) == 0
    return d


def test_classifier_starts_from_the_probe_features():
    torch.manual_seed(0)
    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10)).eval()
    clf = EncoderClassifier.from_djepa(model, 10).eval()
    x = torch.randn(5, 16, 4)
    with torch.no_grad():
        torch.testing.assert_close(clf.features(x), pooled_features(model, x), rtol=1e-5, atol=1e-5)
        # the null class is a learned copy, not the label: changing a class embedding does nothing
        model.condition.class_embed.weight.add_(1.0)
        torch.testing.assert_close(clf.features(x), EncoderClassifier.from_djepa(model, 10).eval().features(x))
    assert clf.head.weight.abs().max() < 1e-3  # MAE head init (std 2e-5)
    assert clf.logits(x).shape == (5, 10)


def test_layer_wise_lr_decay_scales():
    torch.manual_seed(0)
    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10))  # encoder depth 2
    clf = EncoderClassifier.from_djepa(model, 3, layer_decay=0.5)
    s = clf.param_lr_scales()
    assert s["encoder.token_embed.weight"] == s["encoder.pos_embed"] == s["encoder.buffer"] == s["null"] == 0.125
    assert s["encoder.blocks.0.attn.qkv.weight"] == 0.25 and s["encoder.blocks.1.mlp.fc2.bias"] == 0.5
    assert s["encoder.norm.weight"] == s["head.weight"] == 1.0
    assert set(s) == {n for n, _ in clf.named_parameters()}
    assert set(EncoderClassifier.from_djepa(model, 3).param_lr_scales().values()) == {1.0}


def _ema(out: Path, step: int) -> dict:
    return load_file(str(out / "checkpoints" / f"step_{step:08d}" / "ema.safetensors"))


def test_finetune_resumes_exactly_and_evaluates(pretrained, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--checkpoint", str(pretrained), "--max-steps", "4"] + FT
    assert ft_cli.main(args + ["--output-dir", str(a), "--stop-at-step", "2"]) == 0
    assert "run the same command to continue" in capsys.readouterr().err
    assert not (a / "result.json").exists()
    assert ft_cli.main(args + ["--output-dir", str(a)]) == 0  # resumes at step 2
    res_a = json.loads((a / "result.json").read_text())
    assert res_a["resumed_from"] == "step_00000002" and res_a["step"] == 4 and res_a["num_test"] == 40
    assert "test top-1" in capsys.readouterr().out
    assert ft_cli.main(args + ["--output-dir", str(b)]) == 0  # straight through
    res_b = json.loads((b / "result.json").read_text())
    ea, eb = _ema(a, 4), _ema(b, 4)
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    assert res_a["top1"] == res_b["top1"]
    # the weights moved from the pre-trained encoder (it trained), the head most of all
    pre = load_file(str(pretrained / "pretrained" / "model.safetensors"))
    assert not torch.equal(ea["encoder.blocks.0.attn.qkv.weight"], pre["encoder.blocks.0.attn.qkv.weight"])
    assert list((a / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard on by default
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["classifier"]["from_scratch"] is False and cfg["data"]["dataset"] == "digits"


def test_from_scratch_is_the_same_network_with_other_weights(pretrained, tmp_path):
    """--from-scratch builds D-JEPA's own init under --seed: with the pre-training's seed that is
    the pre-training's starting point (a controlled baseline), with another seed other weights."""
    from djepa.core.runs import load_run

    out = tmp_path / "s"
    args = ["--checkpoint", str(pretrained), "--max-steps", "1", "--from-scratch", "--output-dir", str(out)] + FT
    assert ft_cli.main(args + ["--seed", "1"]) == 0
    scratch = load_file(str(out / "checkpoints" / "step_00000001" / "ema.safetensors"))
    pre = load_file(str(pretrained / "pretrained" / "model.safetensors"))
    config = load_run(pretrained, tokenizer=False).model.config
    torch.manual_seed(1)
    init = DJEPA(config).state_dict()
    for k in ("encoder.token_embed.weight", "encoder.blocks.1.mlp.fc1.weight"):
        assert scratch[k].shape == pre[k].shape
        assert (scratch[k] - pre[k]).abs().max() > 1e-2  # not the run's weights
        assert (scratch[k] - init[k]).abs().max() < 5e-3  # D-JEPA's init, one step of lr 5e-4 away
    # a finished folder asked again re-evaluates without training
    assert ft_cli.main(args + ["--seed", "1"]) == 0
    assert json.loads((out / "result.json").read_text())["step"] == 1


def _err(capsys) -> str:
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("image-finetune: error")]
    assert len(err) == 1, err
    return err[0]


def test_finetune_errors_are_one_line(pretrained, tmp_path, capsys):
    base = ["--max-steps", "1", "--output-dir", str(tmp_path / "o")] + FT
    assert ft_cli.main(["--checkpoint", str(tmp_path / "nope")] + base) == 2
    assert "does not exist" in _err(capsys)
    other = tmp_path / "video"
    shutil.copytree(pretrained / "pretrained", other)
    (other / "tokenizer.json").write_text(json.dumps({"kind": "video-vae"}))
    assert ft_cli.main(["--checkpoint", str(other)] + base) == 2
    assert "is not an image run" in _err(capsys)
    assert ft_cli.main(["--checkpoint", str(pretrained), "--layer-decay", "0"] + base) == 2
    assert "layer decay" in _err(capsys)
