"""CLIs (issue 14): tts-train on real clips (tiny, 2 steps, resume), tts writes a 22,050 Hz wav,
--file batched = one by one, long text chunked, bad input → one line and exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from djepa.audio.synthesize import split_sentences


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A tiny, untrained TTS model export (real phoneme vocabulary)."""
    from djepa.audio.model import TTSConfig, TTSModel
    from djepa.audio.phonemes import PhonemeVocab, phonemize
    from djepa.core.config import preset

    ph = phonemize(["the quick brown fox jumps over the lazy dog, and printing differs from most arts."])
    H = 32
    d = preset("tiny", token_dim=320, grid=(256,), condition="sequence", condition_dim=H, aligned_dim=H,
               pos_embed="rope", joint_depth=1, loss=dict(kind="flow", mlp_width=64, mlp_depth=1))
    torch.manual_seed(0)
    m = TTSModel(TTSConfig(djepa=d, symbols=PhonemeVocab.build(ph + [" ,.!?;:'"]).symbols, frames_per_token=4,
                           hidden=H, mel_mean=tuple([-6.0] * 80), mel_std=tuple([2.0] * 80)))
    out = tmp_path_factory.mktemp("tts") / "pretrained"
    m.save_pretrained(out)
    return out


def _tts(*args):
    from djepa.audio.synthesize import main

    return main(list(args))


def test_tts_writes_wav_and_rtf(tiny_export, tmp_path, capsys):
    out = tmp_path / "a.wav"
    assert _tts("The fox, 2 dogs.", "--checkpoint", str(tiny_export), "--output", str(out), "--steps", "2",
                "--denoise-steps", "2", "--vocoder", "griffin-lim") == 0
    wav, sr = sf.read(out)
    assert sr == 22050 and wav.ndim == 1 and len(wav) > 256
    text = capsys.readouterr().out
    assert "real-time factor: acoustic" in text and "vocoder" in text and "total" in text


def test_file_batched_equals_one_by_one(tiny_export, tmp_path):
    lines = ["The quick fox.", "Printing differs from most arts. And the dog jumps!", "Over the lazy dog."]
    f = tmp_path / "lines.txt"
    f.write_text("\n".join(lines) + "\n")
    common = ["--checkpoint", str(tiny_export), "--steps", "2", "--denoise-steps", "2", "--vocoder", "griffin-lim"]
    assert _tts("--file", str(f), "--output-dir", str(tmp_path / "batch"), "--batch-size", "8", *common) == 0
    for i, line in enumerate(lines):
        g = tmp_path / f"one{i}.txt"
        g.write_text(line + "\n")
        assert _tts("--file", str(g), "--output-dir", str(tmp_path / f"one{i}"), "--seed", str(i), *common) == 0
        a, _ = sf.read(tmp_path / "batch" / f"{i:04d}.wav")
        b, _ = sf.read(tmp_path / f"one{i}" / "0000.wav")
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-4)


def test_long_text_is_chunked():
    text = ("Printing, in the only sense with which we are at present concerned, differs from most if not "
            "from all the arts and crafts represented in the Exhibition. ") * 70
    assert len(text) > 10_000
    parts = split_sentences(text, 200)
    assert all(len(p) <= 200 for p in parts) and len(parts) >= 70
    assert " ".join(parts).split() == text.split()
    assert split_sentences("!!! ... \U0001F600") == []


@pytest.mark.parametrize("args,msg", [
    (["   "], "empty"),
    (["!!! ..."], "nothing to speak"),
    (["\U0001F600\U0001F680"], "nothing to speak"),
])
def test_bad_text_one_line_exit_2(tiny_export, tmp_path, capsys, args, msg):
    rc = _tts(*args, "--checkpoint", str(tiny_export), "--output", str(tmp_path / "x.wav"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()


def test_checkpoint_of_another_modality(tmp_path, capsys):
    from djepa.core.config import preset
    from djepa.core.model import DJEPA

    DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=3)).save_pretrained(tmp_path / "img")
    rc = _tts("Hello.", "--checkpoint", str(tmp_path / "img"), "--output", str(tmp_path / "x.wav"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not a text-to-speech model" in err and len(err.splitlines()) == 1


def test_tts_train_real_clips_resume(lj_dir, tmp_path):
    """tts-train on 6 real LJSpeech clips: 2 steps, then the same command resumes to 3; tts on the
    run folder writes speech."""
    from djepa.audio.ljspeech import read_metadata

    root = tmp_path / "lj"
    (root / "wavs").mkdir(parents=True)
    rows = [u for u in read_metadata(lj_dir / "metadata.csv") if u.id in
            {"LJ001-0002", "LJ001-0008", "LJ001-0013", "LJ001-0019", "LJ001-0024", "LJ001-0027"}]
    for u in rows:
        shutil.copy(u.wav, root / "wavs")
    (root / "metadata.csv").write_text("".join(f"{u.id}|{u.raw}|{u.text}\n" for u in rows))
    run = tmp_path / "run"
    (tmp_path / "none.txt").write_text("")
    base = [sys.executable, "-m", "djepa.audio.train", "--data-dir", str(root), "--holdout", str(tmp_path / "none.txt"),
            "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(run), "--preset", "tiny",
            "--hidden", "32", "--mlp-width", "64", "--batch-size", "3", "--checkpoint-every", "2",
            "--sample-every", "2", "--sample-ar-steps", "2", "--no-progress-bar", "--log-every", "1"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    r = subprocess.run(base + ["--max-steps", "3", "--stop-at-step", "2"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "checkpoints").is_dir() and (run / "samples" / "step_00000002.wav").is_file()
    assert (run / "samples" / "step_00000002.png").is_file()
    r = subprocess.run(base + ["--max-steps", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resum" in (r.stdout + r.stderr).lower()
    assert (run / "pretrained" / "model.safetensors").is_file()
    assert _tts("In being modern.", "--checkpoint", str(run), "--output", str(tmp_path / "o.wav"), "--steps", "2",
                "--denoise-steps", "2", "--vocoder", "griffin-lim") == 0
    assert sf.info(str(tmp_path / "o.wav")).samplerate == 22050


def test_tts_train_masking_and_rope_flags_reach_the_backbone():
    """The CPU defaults (mask ratio min 0.1, std 0.5; RoPE base 10000; MLP width 512) reach the
    backbone; ``None`` restores the core's paper values (§3.1: 0.7 / 0.25); flags set them; an
    invalid ratio is refused."""
    from djepa.audio.train import TTSTrainConfig, build_tts_config
    from djepa.core.cli import parse
    from djepa.core.config import DJEPAConfig

    stats = ([0.0] * 80, [1.0] * 80, 5.3, 0.3)
    d = build_tts_config(parse(TTSTrainConfig, []), ("a", "b"), stats).djepa
    assert (d.mask_ratio_min, d.mask_ratio_std, d.rope_theta, d.loss.mlp_width) == (0.1, 0.5, 10000.0, 512)
    paper = DJEPAConfig.__dataclass_fields__
    d = build_tts_config(parse(TTSTrainConfig, ["--mask-ratio-min", "None", "--mask-ratio-std", "None"]),
                         ("a", "b"), stats).djepa
    assert (d.mask_ratio_min, d.mask_ratio_std) == (
        paper["mask_ratio_min"].default, paper["mask_ratio_std"].default) == (0.7, 0.25)
    cfg = parse(TTSTrainConfig, ["--mask-ratio-min", "0.2", "--mask-ratio-std", "0.3", "--rope-theta", "100"])
    d = build_tts_config(cfg, ("a", "b"), stats).djepa
    assert (d.mask_ratio_min, d.mask_ratio_std, d.rope_theta) == (0.2, 0.3, 100.0)
    with pytest.raises(ValueError, match="mask_ratio_min"):
        build_tts_config(parse(TTSTrainConfig, ["--mask-ratio-min", "0"]), ("a", "b"), stats)


def test_tts_eval_scores_real_clips_with_ceilings_and_oracle(lj_dir, tmp_path, capsys):
    """tts-eval on two real LJSpeech clips with an untrained tiny model: the ground truth is
    transcribed nearly perfectly, the HiFi-GAN resynthesis is closer to the reference (MCD) than
    the model's noise, and --oracle pitch (MAS durations + reference F0) makes the generated clip
    exactly as long as the reference's mel frames."""
    import json

    from djepa.audio.evaluate import main as eval_main
    from djepa.audio.ljspeech import read_metadata
    from djepa.audio.model import TTSConfig, TTSModel
    from djepa.audio.phonemes import PhonemeVocab, phonemize
    from djepa.audio.text import normalize_text
    from djepa.core.config import preset

    ids = ["LJ001-0002", "LJ001-0004"]
    texts = {u.id: u.text for u in read_metadata(lj_dir / "metadata.csv") if u.id in ids}
    H = 32
    d = preset("tiny", token_dim=320, grid=(256,), condition="sequence", condition_dim=H, aligned_dim=H,
               pos_embed="rope", joint_depth=1, loss=dict(kind="flow", mlp_width=64, mlp_depth=1))
    torch.manual_seed(0)
    vocab = PhonemeVocab.build(phonemize([normalize_text(texts[i]) for i in ids]))
    m = TTSModel(TTSConfig(djepa=d, symbols=vocab.symbols, frames_per_token=4, hidden=H,
                           mel_mean=tuple([-6.0] * 80), mel_std=tuple([2.0] * 80)))
    m.save_pretrained(tmp_path / "pretrained")
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    common = ["--checkpoint", str(tmp_path / "pretrained"), "--data-dir", str(lj_dir), "--ids", str(tmp_path / "ids.txt"),
              "--steps", "2", "--denoise-steps", "2"]
    assert eval_main(common + ["--oracle", "pitch", "--output", str(tmp_path / "oracle.json")]) == 0
    r = json.loads((tmp_path / "oracle.json").read_text())
    s = r["summary"]
    assert r["oracle"] == "pitch" and r["num_utterances"] == 2
    assert s["ground_truth"]["wer"] <= 0.15, s["ground_truth"]
    assert s["resynthesis"]["mcd_db"] < s["generated"]["mcd_db"]
    for u in r["utterances"]:
        assert abs(u["generated"]["seconds"] - u["ground_truth"]["seconds"]) < 256 / 22050
    assert (tmp_path / "oracle.png").is_file()
    assert eval_main(common[:4] + ["--ids", str(tmp_path / "missing.txt")]) == 2
    assert "not found" in capsys.readouterr().err.strip().splitlines()[-1]
