"""mm-train / mm-chat / mm-eval end to end with a tiny model (a few steps): run folder, resume,
the REPL driven through stdin, --once, one-line errors."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest

from djepa.multimodal import mm_chat, mm_eval, mm_train

TINY = ["--encoder-dim", "32", "--encoder-depth", "1", "--encoder-heads", "2", "--predictor-dim", "32",
        "--predictor-depth", "1", "--predictor-heads", "2", "--mlp-depth", "1", "--mlp-width", "32",
        "--batch-size", "4", "--num-scenes", "16", "--sample-every", "0", "--log-every", "1",
        "--warmup-steps", "0", "--no-progress-bar", "--no-tensorboard"]
FAST = ["--ar-steps", "2", "--denoise-steps", "2", "--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mm_run")
    assert mm_train.main(TINY + ["--max-steps", "2", "--checkpoint-every", "1", "--output-dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shape_png(tmp_path_factory) -> Path:
    from djepa.core.train.observe import write_png
    from djepa.multimodal import shapes

    p = tmp_path_factory.mktemp("img") / "scene.png"
    write_png(p, shapes.render_scene(shapes.Prompt("count", (("red", "circle"),), 1), random.Random(0)))
    return p


def test_train_run_folder_tokenizer_inside(run_dir):
    from safetensors.torch import load_file

    from djepa.multimodal.mm_model import MMModel
    from djepa.multimodal.mm_tokenizer import MMTokenizer

    cfg = json.loads((run_dir / "config.json").read_text())
    assert set(cfg) >= {"mm", "model", "tokenizer", "data", "train"}
    tok = MMTokenizer.from_file(run_dir / "tokenizer.model")
    assert cfg["tokenizer"]["sha256"] == tok.sha256 == cfg["model"]["tokenizer_sha256"]
    ema = load_file(str(run_dir / "checkpoints" / "step_00000002" / "ema.safetensors"))
    assert bytes(ema["sp_model"].numpy().tobytes()) == tok.model_proto  # the tokenizer is in the checkpoint
    m = MMModel.from_pretrained(run_dir / "pretrained")
    assert m.tokenizer().sha256 == tok.sha256


def test_train_resumes_and_refuses_another_model(run_dir, capsys):
    assert mm_train.main(TINY + ["--max-steps", "3", "--output-dir", str(run_dir)]) == 0
    assert (run_dir / "checkpoints" / "step_00000003").is_dir()
    capsys.readouterr()
    rc = mm_train.main(TINY[:1] + ["48"] + TINY[2:] + ["--max-steps", "4", "--output-dir", str(run_dir)])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("mm-train: error:")


def test_chat_once_draw_saves_png(run_dir, tmp_path, capsys):
    from djepa.multimodal.judge import load_png

    assert mm_chat.main(["--checkpoint", str(run_dir), "--output-dir", str(tmp_path), "--once",
                         "draw a red circle above a blue square", "--draw"] + FAST) == 0
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("[image saved: ")][0]
    path = Path(line[len("[image saved: "):-1])
    assert path.is_file() and tuple(load_png(path).shape) == (3, 24, 24)


def test_chat_once_image_answers_text(run_dir, shape_png, tmp_path, capsys):
    assert mm_chat.main(["--checkpoint", str(run_dir), "--output-dir", str(tmp_path), "--once",
                         "what is in this picture?", "--image", str(shape_png)] + FAST) == 0
    assert capsys.readouterr().out.strip()  # some reply (a tiny untrained model: any text)


def test_chat_repl_through_stdin_errors_do_not_stop_it(run_dir, shape_png, tmp_path, capsys, monkeypatch):
    big = tmp_path / "big.png"
    from djepa.core.train.observe import write_png
    import torch

    write_png(big, torch.zeros(3, 32, 32))
    script = "\n".join([f"/image {tmp_path / 'missing.png'}", f"/image {big}", f"/image {shape_png}",
                        "what is in this picture?", "/draw", "a red circle", "/bogus", "/reset",
                        "/draw two blue squares", "/quit", "never read"]) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    assert mm_chat.main(["--checkpoint", str(run_dir), "--output-dir", str(tmp_path / "out")] + FAST) == 0
    cap = capsys.readouterr()
    errs = [ln for ln in cap.err.splitlines() if ln.startswith("mm-chat: error:")]
    assert len(errs) == 3
    assert "not found" in errs[0] and "32×32" in errs[1] and "unknown command /bogus" in errs[2]
    assert "(image attached:" in cap.out and "(conversation reset)" in cap.out
    saved = sorted((tmp_path / "out").glob("image_*.png"))
    # /draw then a message, and /draw TEXT; the 3-step tiny model may also open an image span
    # on its own in a text reply (<|visual_start|> sampled), which the chat then draws too
    assert len(saved) >= 2


def test_chat_errors_one_line(run_dir, tmp_path, capsys):
    assert mm_chat.main(["--checkpoint", str(tmp_path / "nothing"), "--once", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mm-chat: error:")
    assert mm_chat.main(["--checkpoint", str(run_dir), "--once", "hi", "--image", str(tmp_path / "no.png")]) == 2
    assert "not found" in capsys.readouterr().err


def test_eval_writes_json(run_dir, tmp_path, capsys):
    assert mm_eval.main(["--checkpoint", str(run_dir), "--output-dir", str(tmp_path), "--num-prompts", "3",
                         "--batch-size", "2", "--ar-steps", "2", "--denoise-steps", "2"]) == 0
    res = json.loads((tmp_path / "mm_eval.json").read_text())
    for split in ("seen", "unseen"):
        r = res["splits"][split]
        assert r["t2i"]["n"] == 3 and r["i2t"]["n"] == 3 and r["perplexity"]["value"] > 1.0
    assert (tmp_path / "t2i_grid.png").is_file()
    assert capsys.readouterr().out.count("mm-eval ") >= 2
    # image → text renders its pictures in the layout the run was trained on (slots), unless told
    assert json.loads((run_dir / "config.json").read_text())["mm"]["layout"] == "slots" == res["i2t_layout"]
    assert mm_eval.main(["--checkpoint", str(run_dir), "--output-dir", str(tmp_path), "--num-prompts", "2",
                         "--skip-t2i", "--layout", "random", "--splits", "seen"]) == 0
    assert json.loads((tmp_path / "mm_eval.json").read_text())["i2t_layout"] == "random"
