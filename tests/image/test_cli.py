"""image-train / image-sample end to end (tiny, a few steps) and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from djepa.core.model import DJEPA
from djepa.image import sample as sample_cli
from djepa.image import train as train_cli

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--log-every", "1",
        "--warmup-steps", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    rc = train_cli.main(TINY + ["--max-steps", "3", "--checkpoint-every", "2", "--output-dir", str(out)])
    assert rc == 0
    return out


def test_train_writes_checkpoints_config_and_loadable_export(trained):
    assert sorted(p.name for p in (trained / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (trained / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["image"]["dataset"] == "digits" and cfg["model"]["grid"] == [4, 4]
    model = DJEPA.from_pretrained(trained / "pretrained")
    assert model.config.token_dim == 4 and model.config.num_classes == 10  # 8x8 digits, patch 2
    assert list((trained / "tensorboard").glob("events.out.tfevents.*"))


def test_sample_writes_imagefolder_pngs_and_grid(trained, tmp_path, capsys):
    out = tmp_path / "samples"
    rc = sample_cli.main(["--checkpoint", str(trained), "--classes", "0,3,7", "--num-per-class", "2",
                          "--ar-steps", "4", "--denoise-steps", "3", "--output-dir", str(out)])
    assert rc == 0
    pngs = sorted(str(p.relative_to(out)) for p in out.glob("*/*.png"))
    assert pngs == [f"{c}/{i:05d}.png" for c in (0, 3, 7) for i in (0, 1)]
    assert Image.open(out / "3" / "00001.png").size == (8, 8)
    assert (out / "grid.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 6 and summary["fraction_outside_range"] < 0.01  # x0 clipped to [-1, 1]
    assert "s/img" in capsys.readouterr().out
    # a second run into the same folder is refused unless --overwrite (no silent mixing)
    args = ["--checkpoint", str(trained), "--classes", "0", "--num-per-class", "1", "--ar-steps", "2",
            "--denoise-steps", "2", "--output-dir", str(out)]
    assert sample_cli.main(args) == 2
    assert "--overwrite" in _error_line(capsys)
    assert sample_cli.main(args + ["--overwrite"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/*.png")) == ["0/00000.png"]


def test_same_seed_same_pngs(trained, tmp_path):
    args = ["--checkpoint", str(trained / "pretrained"), "--classes", "1", "--num-per-class", "2",
            "--ar-steps", "2", "--denoise-steps", "2"]
    for name in ("a", "b"):
        assert sample_cli.main(args + ["--output-dir", str(tmp_path / name)]) == 0
    a = (tmp_path / "a" / "1" / "00000.png").read_bytes()
    assert a == (tmp_path / "b" / "1" / "00000.png").read_bytes()


def test_same_seed_same_images_at_batch_size_1_7_and_64(trained, tmp_path):
    """Issue 11: each image draws from its own stream (seed + image index), so the batch size
    does not change the images (the first release gave other images at another batch size)."""
    import numpy as np

    args = ["--checkpoint", str(trained / "pretrained"), "--classes", "0,3,7", "--num-per-class", "3",
            "--ar-steps", "3", "--denoise-steps", "3", "--cfg", "2.0", "--seed", "5"]
    pixels = {}
    for bs in (1, 7, 64):
        out = tmp_path / f"bs{bs}"
        assert sample_cli.main(args + ["--batch-size", str(bs), "--output-dir", str(out)]) == 0
        pngs = sorted(out.glob("*/*.png"))
        assert len(pngs) == 9
        pixels[bs] = np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in pngs])
    for bs in (7, 64):
        diff = np.abs(pixels[bs] - pixels[1])
        # equal up to float rounding of batched matmuls (at most one grey level, rarely)
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (bs, diff.max(), (diff == 0).mean())
    # and a different seed gives different images (the comparison is not vacuous)
    assert sample_cli.main(args[:-1] + ["6", "--batch-size", "7", "--output-dir", str(tmp_path / "s6")]) == 0
    other = np.stack([np.asarray(Image.open(p), dtype=np.int16) for p in sorted((tmp_path / "s6").glob("*/*.png"))])
    assert np.abs(other - pixels[1]).max() > 10


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_sample_errors(trained, tmp_path, capsys):
    assert sample_cli.main(["--checkpoint", str(trained), "--classes", "10"]) == 2
    assert "class id 10 is out of range" in _error_line(capsys)
    assert sample_cli.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in _error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sample_cli.main(["--checkpoint", str(empty)]) == 2
    assert "holds no exported model" in _error_line(capsys)
    # tokenizer description that does not fit the weights
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bad / f).write_bytes((trained / "pretrained" / f).read_bytes())
    info = json.loads((trained / "pretrained" / "tokenizer.json").read_text())
    (bad / "tokenizer.json").write_text(json.dumps(dict(info, patch_size=1)))
    assert sample_cli.main(["--checkpoint", str(bad)]) == 2
    assert "does not match the model" in _error_line(capsys)


def test_train_errors(tmp_path, capsys):
    assert train_cli.main(TINY + ["--dataset", "idx", "--output-dir", str(tmp_path / "a")]) == 2
    assert "needs a data directory" in _error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_cli.main(TINY + ["--dataset", "imagefolder", "--data-dir", str(empty), "--image-size", "8",
                                  "--output-dir", str(tmp_path / "b")]) == 2
    assert str(empty) in _error_line(capsys)
    assert train_cli.main(TINY + ["--patch-size", "3", "--output-dir", str(tmp_path / "c")]) == 2
    assert "patch size 3 does not divide image size" in _error_line(capsys)
    with pytest.raises(SystemExit) as e:  # tyro's own message for an unknown choice
        train_cli.main(["--dataset", "cifar"])
    assert e.value.code == 2


def test_config_file_supplies_defaults_and_launcher_args_are_ignored(tmp_path):
    from djepa.core.cli import UserError, parse

    f = tmp_path / "c.yaml"
    f.write_text("max-steps: 7\npatch_size: 4\nlr: null\nprediction_loss_weight: 0\n")
    cfg = parse(train_cli.ImageTrainConfig, ["--config", str(f), "--patch-size", "1", "--local_rank=1"])
    assert cfg.train.max_steps == 7 and cfg.patch_size == 1  # command line wins over the file
    assert cfg.train.lr is None and cfg.model.prediction_loss_weight == 0.0
    g = tmp_path / "s.json"
    g.write_text('{"checkpoint": "runs/x", "cfg": 2.5}')  # a required flag may come from the file
    scfg = parse(sample_cli.ImageSampleConfig, ["--config", str(g), "--local_rank", "0"])
    assert scfg.checkpoint == "runs/x" and scfg.sampler.cfg == 2.5  # nested core SamplerFlags
    f.write_text("max_steps: ten\n")
    with pytest.raises(SystemExit):  # type-checked like a flag
        parse(train_cli.ImageTrainConfig, ["--config", str(f)])
    f.write_text("max_stepz: 3\n")
    with pytest.raises(UserError, match="unknown keys"):
        parse(train_cli.ImageTrainConfig, ["--config", str(f)])


def test_resume_into_a_folder_of_another_run_is_refused(trained, tmp_path, capsys):
    # same folder, different loss weight → different model config: refused, nothing overwritten
    before = (trained / "checkpoints" / "latest").read_text()
    rc = train_cli.main(TINY + ["--max-steps", "4", "--prediction-loss-weight", "0", "--output-dir", str(trained)])
    assert rc == 2
    assert "different 'model' configuration" in _error_line(capsys)
    assert (trained / "checkpoints" / "latest").read_text() == before


def test_a_run_folder_of_the_flat_config_era_resumes(trained, tmp_path):
    # config.json's "image" section was the flat ImageTrainConfig before the core dataclasses were
    # nested (no engine-only keys, resume spelled "auto"); such a folder still resumes.
    import shutil

    run = tmp_path / "old"
    shutil.copytree(trained, run)
    saved = json.loads((run / "config.json").read_text())
    new_keys = ("betas", "eps", "max_nonfinite_steps", "stop_at_step", "tensorboard", "progress_bar",
                "verify_checksums", "deepspeed_log_level")
    assert set(new_keys) <= set(saved["image"]) and saved["image"]["batch_size"] == 8  # flat keys
    saved["image"] = {k: v for k, v in saved["image"].items() if k not in new_keys}
    (run / "config.json").write_text(json.dumps(saved))
    rc = train_cli.main(TINY + ["--max-steps", "4", "--resume", "yes", "--output-dir", str(run)])
    assert rc == 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"


@pytest.mark.skipif(not (SHARED / "fashion-mnist").is_dir(), reason="shared data folder absent")
def test_train_on_real_fashion_mnist_idx(tmp_path):
    out = tmp_path / "fm"
    rc = train_cli.main(TINY + ["--dataset", "idx", "--data-dir", str(SHARED / "fashion-mnist"),
                                "--patch-size", "7", "--max-steps", "1", "--output-dir", str(out)])
    assert rc == 0
    model = DJEPA.from_pretrained(out / "pretrained")
    assert model.config.grid == (4, 4) and model.config.token_dim == 49
    assert torch.isfinite(torch.cat([p.flatten() for p in model.parameters()])).all()


def test_sampling_from_a_checkpoint_step_uses_its_ema_weights(trained, tmp_path, capsys):
    from djepa.image.sample import load_generator

    # the last checkpoint holds the same EMA weights the run exported to pretrained/
    final, _, _ = load_generator(trained / "checkpoints" / "step_00000003")
    export = DJEPA.from_pretrained(trained / "pretrained")
    for (k, a), (_, b) in zip(final.state_dict().items(), export.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # an earlier checkpoint holds earlier (different) EMA weights
    early, tokenizer, _ = load_generator(trained / "checkpoints" / "step_00000002")
    assert tokenizer.grid == (4, 4)
    assert any(not torch.equal(a, b) for a, b in zip(early.state_dict().values(), export.state_dict().values()))
    # a truncated checkpoint is refused with one line naming the file
    import shutil

    broken = tmp_path / "run" / "checkpoints" / "step_00000002"
    shutil.copytree(trained / "checkpoints" / "step_00000002", broken)
    (tmp_path / "run" / "config.json").write_text((trained / "config.json").read_text())
    (tmp_path / "run" / "tokenizer.json").write_text((trained / "tokenizer.json").read_text())
    data = (broken / "ema.safetensors").read_bytes()
    args = ["--checkpoint", str(broken), "--classes", "0", "--num-per-class", "1", "--output-dir", str(tmp_path / "s")]
    (broken / "ema.safetensors").write_bytes(data[: len(data) // 2])
    assert sample_cli.main(args) == 2
    assert "ema.safetensors: size" in _error_line(capsys)
    flipped = bytearray(data)  # same size, one byte changed in the tensor data
    flipped[-5] ^= 0xFF
    (broken / "ema.safetensors").write_bytes(bytes(flipped))
    assert sample_cli.main(args) == 2
    assert "sha256 does not match" in _error_line(capsys)
    (broken / "ema.safetensors").unlink()
    assert sample_cli.main(args) == 2
    assert "ema.safetensors: missing" in _error_line(capsys)
    # the DeepSpeed files are not needed to sample: the EMA file + manifest suffice
    (broken / "ema.safetensors").write_bytes(data)
    for f in broken.iterdir():
        if f.name not in ("ema.safetensors", "manifest.json"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    assert sample_cli.main(args) == 0


def test_a_trained_run_loads_back_through_core_with_its_tokenizer(trained, tmp_path):
    import subprocess
    import sys

    from djepa.core.runs import load_run
    from djepa.image.tokenizer import PixelTokenizer

    # what image-train recorded: pixels, 8x8 digits, patch 2 (written by hand, not by to_config)
    expected = {"kind": "pixel", "channels": 1, "image_size": 8, "patch_size": 2, "value_range": [-1.0, 1.0]}
    export = DJEPA.from_pretrained(trained / "pretrained")
    for path in (trained, trained / "pretrained", trained / "checkpoints" / "step_00000003"):
        run = load_run(path)
        assert isinstance(run.tokenizer, PixelTokenizer) and run.tokenizer.to_config() == expected
        assert run.tokenizer_config["class_names"] == [str(i) for i in range(10)]
        assert run.run_dir == trained and run.run_config["image"]["preset"] == "tiny"
        for (k, a), b in zip(run.model.state_dict().items(), export.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    # a fresh interpreter that imports only djepa.core finds the image tokenizer by its kind
    code = (f"from djepa.core.runs import load_run; r = load_run({str(trained)!r}); "
            "print(type(r.tokenizer).__name__, r.tokenizer.grid, r.step)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "PixelTokenizer (4, 4) None"


def test_sample_and_inpaint_share_the_sampler_flags_and_their_errors(trained, tmp_path, capsys, monkeypatch):
    from dataclasses import fields

    from djepa.core.cli import flag_fields
    from djepa.image import inpaint as inpaint_cli
    from djepa.image.sampler_flags import SamplerFlags

    shared = {f.name for f in fields(SamplerFlags)}
    assert {"ar_steps", "denoise_steps", "cfg", "temperature", "seed", "device", "precision"} <= shared
    for cls in (sample_cli.ImageSampleConfig, inpaint_cli.ImageInpaintConfig):  # nested, no prefix
        assert shared <= set(flag_fields(cls))
    img = tmp_path / "x.png"
    Image.new("L", (8, 8), 40).save(img)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for main, extra in ((sample_cli.main, []), (inpaint_cli.main, ["--image", str(img), "--box", "0,0,4,4"])):
        base = ["--checkpoint", str(trained), "--output-dir", str(tmp_path / "o"), *extra]
        assert main(base + ["--precision", "fp16"]) == 2
        assert "--precision must be bf16 or fp32" in _error_line(capsys)
        assert main(base + ["--device", "cuda"]) == 2
        assert "CUDA is not available" in _error_line(capsys)
        assert main(base + ["--cfg-schedule", "cosine"]) == 2
        assert "cfg_schedule must be 'linear' or 'constant'" in _error_line(capsys)
        assert main(base + ["--ar-steps", "0"]) == 2
        assert "--ar-steps must be >= 1" in _error_line(capsys)


def test_compile_flag_compiles_the_loaded_model_before_sampling(trained, tmp_path, monkeypatch, capsys):
    # The real compile is covered in tests/core/test_compile.py; here only the wiring: the
    # loaded generator is handed to compile_backbone_for_sampling once, before generate runs.
    import djepa.core.cpu_speed.compile as compile_mod
    import djepa.core.sampler as sampler_mod

    events = []
    monkeypatch.setattr(compile_mod, "compile_backbone_for_sampling",
                        lambda m: events.append(("compile", type(m).__name__)) or m)
    real_generate = sampler_mod.generate
    monkeypatch.setattr(sampler_mod, "generate", lambda *a, **k: events.append(("generate",)) or real_generate(*a, **k))
    args = ["--checkpoint", str(trained), "--classes", "0", "--num-per-class", "1", "--denoise-steps", "2",
            "--output-dir", str(tmp_path / "s")]
    assert sample_cli.main(args + ["--compile"]) == 0
    assert events == [("compile", "DJEPA"), ("generate",)]
    events.clear()
    assert sample_cli.main(args + ["--overwrite"]) == 0
    assert events == [("generate",)]
    # image-inpaint shares the flag
    from djepa.image import inpaint as inpaint_cli

    img = tmp_path / "x.png"
    Image.new("L", (8, 8), 40).save(img)
    events.clear()
    assert inpaint_cli.main(["--checkpoint", str(trained), "--image", str(img), "--box", "0,0,4,4",
                             "--denoise-steps", "2", "--output-dir", str(tmp_path / "i"), "--compile"]) == 0
    assert events == [("compile", "DJEPA"), ("generate",)]
