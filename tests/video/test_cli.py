"""video-train / video-sample / video-eval end to end (tiny, a few steps) and their one-line errors;
a UCF101-layout run on the real clip through both tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from djepa.video import evaluate as eval_cli
from djepa.video import sample as sample_cli
from djepa.video import train as train_cli
from djepa.video.media import read_mp4

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--log-every", "1", "--warmup-steps", "0",
        "--no-progress-bar", "--no-tensorboard"]
FAST = ["--ar-steps", "4", "--denoise-steps", "3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("vrun")
    assert train_cli.main(TINY + ["--max-steps", "2", "--checkpoint-every", "2", "--output-dir", str(out)]) == 0
    return out


def _err(capsys):
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("video-")]
    assert len(lines) == 1, lines
    return lines[0]


def test_train_run_folder(trained):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["grid"] == [4, 3, 3] and cfg["model"]["loss"]["kind"] == "flow"
    assert cfg["model"]["pos_embed"] == "rope" and cfg["data"]["padding"] == "zeros"
    tok = json.loads((trained / "pretrained" / "tokenizer.json").read_text())
    assert tok["kind"] == "video-pixel" and tok["class_names"][12] == "3-right" and tok["fps"] == 8.0


def test_sample_class_by_name_writes_mp4s_same_seed_same_bytes(trained, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert sample_cli.main(["--checkpoint", str(trained), "--class", "3-right", "--num-samples", "3",
                                "--batch-size", "2", "--output-dir", str(out), "--seed", "5"] + FAST) == 0
    printed = capsys.readouterr().out
    assert "class 12 = 3-right" in printed and str(a / "class012_0000.mp4") in printed and str(a / "strip.png") in printed
    files = sorted(p.name for p in a.glob("*.mp4"))
    assert files == ["class012_0000.mp4", "class012_0001.mp4", "class012_0002.mp4"]
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes()
        frames = read_mp4(a / f)
        assert frames.shape[1:] == (144, 144, 3) and 1 <= len(frames) <= 8  # 12×12 ×11 = 132, padded to 144
    summary = json.loads((a / "summary.json").read_text())
    assert summary["codec"] == ["libx264"] and len(summary["frames_kept"]) == 3


@pytest.mark.parametrize("args, msg", [
    (["--class", "20"], "class index 20 is out of range: valid 0..19"),
    (["--class", "7-sideways"], "unknown class name '7-sideways'"),
    (["--prefix-frames", "2"], "--prefix and --prefix-frames go together"),
])
def test_sample_errors(trained, tmp_path, capsys, args, msg):
    assert sample_cli.main(["--checkpoint", str(trained), "--output-dir", str(tmp_path)] + args) == 2
    assert msg in _err(capsys)


def test_prefix_errors_and_continuation(trained, tmp_path, capsys, clips):
    assert sample_cli.main(["--checkpoint", str(trained), "--prefix", str(clips.ucf), "--prefix-frames", "2",
                            "--output-dir", str(tmp_path)]) == 2
    assert "has 240×320 frames; the model's are 12×12" in _err(capsys)
    assert sample_cli.main(["--checkpoint", str(trained), "--prefix", str(clips.ucf), "--prefix-frames", "3",
                            "--output-dir", str(tmp_path)]) == 2
    assert "multiple of 2" in _err(capsys)
    # a real 12×12 prefix clip: the written mp4 of the continuation
    from djepa.video.datasets import MovingDigits
    from djepa.video.media import to_uint8_frames, write_mp4

    clip = MovingDigits("test", size=12)[3][0]
    write_mp4(tmp_path / "p.mp4", to_uint8_frames(clip), min_side=12, multiple=2)  # native 12×12
    assert sample_cli.main(["--checkpoint", str(trained), "--prefix", str(tmp_path / "p.mp4"), "--prefix-frames", "4",
                            "--output-dir", str(tmp_path / "c"), "--pad-threshold", "0"] + FAST) == 0
    out = read_mp4(tmp_path / "c" / "class000_0000.mp4")[:, ::11, ::11, 0][:, :12, :12]  # ×11, then padding
    ref = read_mp4(tmp_path / "p.mp4")[:4, :, :, 0]
    assert abs(out[:4].astype(int) - ref.astype(int)).mean() < 4  # the kept frames come back (two codecs)


def test_checkpoint_errors(tmp_path, capsys):
    assert sample_cli.main(["--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in _err(capsys)
    other = tmp_path / "img"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "model.safetensors").write_bytes(b"")
    (other / "tokenizer.json").write_text(json.dumps({"kind": "pixel"}))
    assert sample_cli.main(["--checkpoint", str(other)]) == 2
    assert "is a 'pixel' run, not a video run" in _err(capsys)


def test_train_errors(tmp_path, capsys):
    assert train_cli.main(["--dataset", "ucf101", "--data-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in _err(capsys)
    assert train_cli.main(["--patch", "3", "4", "4", "--output-dir", str(tmp_path / "o")]) == 2
    assert "frames 8 is not a multiple of 3 (use 6 or 9)" in _err(capsys)


def test_eval_accuracy_fid_and_fvd_protocol(trained, tmp_path, capsys):
    torch.manual_seed(0)

    class TinyI3D(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(3, 4, kernel_size=(2, 16, 16), stride=(2, 16, 16))

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3, 4))

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(TinyI3D()).save(str(tmp_path / "i3d.pt"))
    out = tmp_path / "ev"
    rc = eval_cli.main(["--checkpoint", str(trained), "--num-videos", "20", "--output-dir", str(out), "--no-fid",
                        "--i3d", str(tmp_path / "i3d.pt"), "--fvd-frames", "8", "--fvd-size", "32"] + FAST)
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["reference_classifier_held_out"]["class_accuracy"] > 0.9  # real held-out clips
    assert res["trim_rule_on_real_test_clips"] == 1.0
    assert 0 <= res["generated"]["class_accuracy"] <= 1 and res["generated"]["count"] == 20
    p = res["fvd"]["protocol"]
    assert p["num_frames"] == 8 and p["stride"] == 1 and p["resize"] == 32 and p["seed"] == 0
    assert p["num_real"] == p["num_fake"] == 20 and len(p["detector_sha256"]) == 64 and res["fvd"]["value"] >= 0
    assert eval_cli.main(["--checkpoint", str(trained), "--i3d", str(tmp_path / "i3d.pt"), "--output-dir", str(out)]) == 2
    assert "takes 16 frames, the model's clips have 8; pass --fvd-frames 8" in _err(capsys)


@pytest.fixture(scope="module")
def ucf_root(tmp_path_factory, clips):
    root = tmp_path_factory.mktemp("ucf")
    (root / "UCF-101" / "ApplyEyeMakeup").mkdir(parents=True)
    (root / "UCF-101" / "ApplyEyeMakeup" / clips.ucf.name).symlink_to(clips.ucf)
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n")
    (lists / "trainlist01.txt").write_text(f"ApplyEyeMakeup/{clips.ucf.name} 1\n")
    return root


def test_ucf101_layout_pixels_and_vae(ucf_root, tmp_path, capsys):
    from diffusers import AutoencoderKLCogVideoX

    common = ["--dataset", "ucf101", "--data-dir", str(ucf_root / "UCF-101"), "--split-dir",
              str(ucf_root / "ucfTrainTestlist"), "--frame-size", "16", "16", "--batch-size", "1"]
    run = tmp_path / "pix"
    assert train_cli.main(TINY[2:] + common + ["--preset", "tiny", "--frames", "16", "--patch", "4", "8", "8",
                                               "--max-steps", "2", "--output-dir", str(run)]) == 0
    tok = json.loads((run / "tokenizer.json").read_text())
    assert tok["class_names"] == ["ApplyEyeMakeup", "ApplyLipstick"] and tok["grid"] == [4, 2, 2]
    assert sample_cli.main(["--checkpoint", str(run), "--class", "ApplyEyeMakeup", "--num-samples", "1",
                            "--output-dir", str(tmp_path / "s1")] + FAST) == 0
    assert read_mp4(tmp_path / "s1" / "class000_0000.mp4").shape[1:] == (128, 128, 3)
    torch.manual_seed(0)
    AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                           norm_num_groups=4).save_pretrained(tmp_path / "vae")  # 8× space, 4× time
    run2 = tmp_path / "lat"
    assert train_cli.main(TINY[2:] + common + ["--preset", "tiny", "--frames", "17", "--vae", str(tmp_path / "vae"),
                                               "--patch", "1", "1", "1", "--max-steps", "2", "--output-dir", str(run2)]) == 0
    assert len(list((run2 / "latents").glob("*.safetensors"))) == 1
    assert json.loads((run2 / "tokenizer.json").read_text())["grid"] == [5, 2, 2]
    assert sample_cli.main(["--checkpoint", str(run2), "--class", "0", "--num-samples", "1",
                            "--output-dir", str(tmp_path / "s2"), "--pad-threshold", "0"] + FAST) == 0
    assert len(read_mp4(tmp_path / "s2" / "class000_0000.mp4")) == 17
