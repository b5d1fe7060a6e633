"""t2i-train / t2i-sample / t2i-eval end to end (tiny, a few steps) and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from djepa.multimodal import t2i_eval, t2i_sample, t2i_train

TINY = ["--preset", "tiny", "--batch-size", "8", "--num-scenes", "64", "--sample-every", "0",
        "--log-every", "1", "--warmup-steps", "0", "--no-progress-bar"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [ln for ln in err if ln.startswith(("t2i-train", "t2i-sample", "t2i-eval"))]
    assert lines, err
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t2i_run")
    rc = t2i_train.main(TINY + ["--max-steps", "2", "--checkpoint-every", "1", "--output-dir", str(out)])
    assert rc == 0
    return out


def test_train_writes_run_folder_with_text_encoder_record(trained):
    from djepa.core.model import DJEPA

    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["condition"] == "sequence" and cfg["model"]["pos_embed"] == "rope"
    assert cfg["model"]["loss"]["kind"] == "flow"
    assert (cfg["model"]["condition_dim"], cfg["model"]["condition_input_dim"]) == (128, 384)  # --text-dim 128
    assert (cfg["model"]["mask_ratio_min"], cfg["model"]["mask_ratio_std"], cfg["model"]["rope_theta"]) == (0.1, 0.5, 100.0)
    assert cfg["train"]["ema_decay"] == 0.99
    assert cfg["model"]["grid"] == [6, 6] and cfg["model"]["token_dim"] == 48
    tok = json.loads((trained / "pretrained" / "tokenizer.json").read_text())
    assert tok["modality"] == "text-to-image" and tok["text_encoder"]["dim"] == 384
    assert DJEPA.from_pretrained(trained / "pretrained").config.label_drop_prob == 0.1
    # the same command resumes: nothing left to do at max_steps
    assert t2i_train.main(TINY + ["--max-steps", "2", "--checkpoint-every", "1", "--output-dir", str(trained)]) == 0


def test_sample_prompt_writes_pngs_grid_manifest(trained, tmp_path, capsys):
    out = tmp_path / "s"
    rc = t2i_sample.main(["a red circle above a blue square", "--checkpoint", str(trained), "--num-samples", "2",
                          "--ar-steps", "3", "--denoise-steps", "2", "--output-dir", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out / "images" / "00001.png") in printed and str(out / "grid.png") in printed
    assert Image.open(out / "images" / "00000.png").size == (24, 24)
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in recs] == ["a red circle above a blue square"] * 2
    assert [r["seed"] for r in recs] == [0, 1]
    # refused without --overwrite
    assert t2i_sample.main(["x", "--checkpoint", str(trained), "--output-dir", str(out)]) == 2
    assert "--overwrite" in _error_line(capsys)


def test_batch_size_does_not_change_the_images(trained, tmp_path):
    args = ["--checkpoint", str(trained), "--eval-split", "both", "--num-prompts", "2", "--ar-steps", "3",
            "--denoise-steps", "2", "--cfg", "2"]
    assert t2i_sample.main(args + ["--batch-size", "4", "--output-dir", str(tmp_path / "a")]) == 0
    assert t2i_sample.main(args + ["--batch-size", "1", "--output-dir", str(tmp_path / "b")]) == 0
    for k in range(4):
        a = torch.from_numpy(np.asarray(Image.open(tmp_path / "a" / "images" / f"{k:05d}.png"), dtype=np.int16))
        b = torch.from_numpy(np.asarray(Image.open(tmp_path / "b" / "images" / f"{k:05d}.png"), dtype=np.int16))
        assert (a - b).abs().max() <= 1


def test_eval_split_samples_are_judged_by_t2i_eval(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    assert t2i_sample.main(["--checkpoint", str(trained), "--eval-split", "both", "--num-prompts", "3",
                            "--ar-steps", "2", "--denoise-steps", "2", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    assert t2i_eval.main(["--samples", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seen" in printed and "unseen" in printed and "object+colour" in printed
    res = json.loads((out / "eval.json").read_text())
    assert res["groups"]["seen"]["n"] == 3 and res["groups"]["unseen"]["n"] == 3


def test_eval_on_ground_truth_folder(tmp_path, capsys):
    """t2i-eval reads the manifest layout; real renders score 100 %."""
    import random

    from djepa.multimodal import shapes

    (tmp_path / "images").mkdir()
    lines = []
    rng = random.Random(0)
    for k, (p, cap) in enumerate(shapes.eval_prompts("seen", 10) + shapes.eval_prompts("unseen", 10)):
        img = shapes.render_scene(p, rng)
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(tmp_path / "images" / f"{k:05d}.png")
        lines.append(json.dumps({"file": f"images/{k:05d}.png", "prompt": cap}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    assert t2i_eval.main(["--samples", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["groups"]["seen"]["correct"] == 1.0 and res["groups"]["unseen"]["correct"] == 1.0
    assert res["groups"]["seen"]["n"] == 10  # split from is_seen when the manifest has none


def test_empty_prompt_is_said_and_allowed(trained, tmp_path, capsys):
    rc = t2i_sample.main(["", "--checkpoint", str(trained), "--ar-steps", "2", "--denoise-steps", "2",
                          "--output-dir", str(tmp_path / "e")])
    assert rc == 0
    assert "unconditionally" in capsys.readouterr().err


def test_long_prompt_warns_with_the_limit(trained, tmp_path, capsys):
    long = " ".join(["a red circle above a blue square"] * 20)
    rc = t2i_sample.main([long, "--checkpoint", str(trained), "--ar-steps", "2", "--denoise-steps", "2",
                          "--output-dir", str(tmp_path / "l")])
    assert rc == 0
    assert "limit of 64 tokens" in capsys.readouterr().err


def test_checkpoint_of_another_modality_is_one_line(tmp_path, capsys):
    from djepa.core.config import preset
    from djepa.core.model import DJEPA
    from djepa.image.tokenizer import PixelTokenizer

    exp = tmp_path / "img"
    DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10)).save_pretrained(exp)
    (exp / "tokenizer.json").write_text(json.dumps(PixelTokenizer(1, 8, 2).to_config()))
    assert t2i_sample.main(["a red circle", "--checkpoint", str(exp), "--output-dir", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert "class-conditional image checkpoint, not a text-to-image one" in line


@pytest.mark.parametrize("argv, needle", [
    (["--checkpoint", "/nonexistent/run", "x"], "does not exist"),
    (["--file", "/nonexistent/prompts.txt"], "not found"),
    (["a", "--file", "p.txt"], "exactly one of"),
    ([], "exactly one of"),
])
def test_sample_errors_are_one_line(argv, needle, tmp_path, capsys):
    assert t2i_sample.main(argv + ["--output-dir", str(tmp_path / "o")]) == 2
    assert needle in _error_line(capsys)


def test_train_errors_are_one_line(tmp_path, capsys):
    assert t2i_train.main(TINY + ["--text-encoder", str(tmp_path / "none"), "--output-dir", str(tmp_path / "r")]) == 2
    assert "text encoder folder" in _error_line(capsys)
    assert t2i_train.main(TINY + ["--pos-embed", "learned", "--output-dir", str(tmp_path / "r2")]) == 2
    assert "rope" in _error_line(capsys)
    assert t2i_train.main(TINY + ["--dataset", "coco", "--output-dir", str(tmp_path / "r3")]) == 2
    assert "--data-dir" in _error_line(capsys)
    assert t2i_eval.main(["--samples", str(tmp_path)]) == 2
    assert "manifest.jsonl" in _error_line(capsys)


def test_prompt_file_with_a_blank_line(trained, tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("two green triangles\n\na blue square below a red circle\n")
    out = tmp_path / "f"
    assert t2i_sample.main(["--file", str(f), "--checkpoint", str(trained), "--ar-steps", "2",
                            "--denoise-steps", "2", "--output-dir", str(out)]) == 0
    assert "prompt 2 is empty" in capsys.readouterr().err
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in recs] == ["two green triangles", "", "a blue square below a red circle"]
    assert (out / "grid.png").is_file()


@pytest.mark.parametrize("text_dim", [0, 32])
def test_text_stream_width_trains_previews_and_samples(text_dim, tmp_path, capsys):
    """--text-dim 0: the text states enter the joint blocks at the encoder's 384 channels;
    --text-dim 32: projected first (core condition_input_dim). Both preview and sample, with an
    empty prompt (the null text) in the same batch as real ones."""
    run = tmp_path / "r"
    assert t2i_train.main(TINY + ["--max-steps", "1", "--checkpoint-every", "1", "--sample-every", "1",
                                  "--sample-ar-steps", "2", "--text-dim", str(text_dim),
                                  "--output-dir", str(run)]) == 0
    model = json.loads((run / "config.json").read_text())["model"]
    assert (model["condition_dim"], model["condition_input_dim"]) == ((384, 0) if not text_dim else (32, 384))
    assert (run / "samples" / "step_00000001.png").is_file()
    f = tmp_path / "p.txt"
    f.write_text("two green triangles\n\n")
    out = tmp_path / "s"
    assert t2i_sample.main(["--file", str(f), "--checkpoint", str(run), "--ar-steps", "2", "--denoise-steps", "2",
                            "--cfg", "2", "--output-dir", str(out)]) == 0
    assert len(list((out / "images").glob("*.png"))) == 2
