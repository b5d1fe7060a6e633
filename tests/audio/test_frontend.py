"""Front end (issue 14): LJSpeech reader, text normaliser (table of cases), phonemes, mel
features against an independent implementation of HiFi-GAN's formula on a real clip, F0."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from djepa.audio.features import FeatureCache, compute_f0, f0_to_coarse, mel_spectrogram
from djepa.audio.ljspeech import LJSpeech, load_wav, read_metadata, split_of
from djepa.audio.phonemes import PhonemeVocab, phonemize
from djepa.audio.text import normalize_text

CASES = [
    ("He paid $5.50 for 3 books.", "He paid five dollars, fifty cents for three books."),
    ("It costs $1.", "It costs one dollar."),
    ("Only 5 cents: $0.05", "Only five cents: five cents"),
    ("£3 and €20", "three pounds and twenty euros"),
    ("$2 million", "two million dollars"),
    ("the 21st and 2nd of them", "the twenty-first and second of them"),
    ("On March 3, 1901 it rained.", "On March third, nineteen oh one it rained."),
    ("In 1984 and 2000 and 2007.", "In nineteen eighty-four and two thousand and two thousand and seven."),
    ("1,000 men", "one thousand men"),
    ("pi is 3.14", "pi is three point one four"),
    ("50% of them", "fifty percent of them"),
    ("Mr. and Mrs. Smith met Dr. Jones", "mister and missus Smith met doctor Jones"),
    ("cats vs. dogs, etc.", "cats versus dogs, et cetera"),
    ("No. 7 Gen. Lee", "number seven general Lee"),
    ("Caf\u00e9 na\u00efve \u201cquotes\u201d", 'Cafe naive "quotes"'),
    ("\U0001F600 \U0001F680", ""),
    ("  spaces   here ", "spaces here"),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_normaliser_table(raw, expected):
    assert normalize_text(raw) == expected


def _reference_mel(wav: np.ndarray) -> np.ndarray:
    """HiFi-GAN's mel written independently in numpy: reflect pad 384, frames of 1024 every
    256 (no centring), periodic Hann, rfft, sqrt(|S|²+1e-9), Slaney mel basis, log clamp 1e-5."""
    import librosa

    y = np.pad(wav.astype(np.float64), (384, 384), mode="reflect")
    n = (len(y) - 1024) // 256 + 1
    frames = np.stack([y[i * 256:i * 256 + 1024] for i in range(n)])
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
    spec = np.fft.rfft(frames * win, axis=1)
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9).T
    basis = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000).astype(np.float64)
    return np.log(np.maximum(basis @ mag, 1e-5))


def test_mel_matches_reference_on_real_clip(lj_dir):
    wav = load_wav(lj_dir / "wavs" / "LJ001-0002.wav")
    mel = mel_spectrogram(wav).numpy()
    ref = _reference_mel(wav)
    assert mel.shape == ref.shape == (80, (len(wav) - 256) // 256 + 1)
    np.testing.assert_allclose(mel, ref, atol=2e-3)
    assert np.abs(mel - ref).mean() < 1e-4
    batched = mel_spectrogram(torch.from_numpy(np.stack([wav, wav])))
    torch.testing.assert_close(batched[1], torch.from_numpy(mel))


def test_f0_of_a_tone_and_silence():
    sr = 22050
    t = np.arange(sr) / sr
    tone = np.concatenate([0.5 * np.sin(2 * np.pi * 200.0 * t), np.zeros(sr // 2)]).astype(np.float32)
    mel = mel_spectrogram(tone)
    f0 = compute_f0(tone, mel.shape[1])
    frames = mel.shape[1]
    assert f0.shape == (frames,)
    voiced = f0[10:70]
    assert (voiced > 0).all() and np.abs(voiced - 200.0).max() < 2.0
    assert (f0[-20:] == 0).all()
    coarse = f0_to_coarse(torch.tensor([0.0, 50.0, 200.0, 1100.0, 5000.0]))
    assert coarse.tolist()[0] == 1 and coarse.tolist()[1] == 1 and coarse.tolist()[3] == 255
    assert coarse.tolist()[4] == 255 and 1 < coarse.tolist()[2] < 255


def test_reader_split_and_bad_files(lj_dir, tmp_path):
    rows = read_metadata(lj_dir / "metadata.csv")
    assert len(rows) == 80 and rows[0].id == "LJ001-0001" and rows[0].text.startswith("Printing, in the only")
    root = tmp_path / "lj"
    (root / "wavs").mkdir(parents=True)
    keep = rows[:4]
    for u in keep:
        shutil.copy(u.wav, root / "wavs" / u.wav.name)
    wav = load_wav(keep[0].wav)
    sf.write(root / "wavs" / "ST-0001.wav", np.stack([wav, wav], 1), 22050)             # stereo
    sf.write(root / "wavs" / "SR-0001.wav", wav[::2], 11025)                              # other rate
    sf.write(root / "wavs" / "U8-0001.wav", wav, 22050, subtype="PCM_U8")                 # 8-bit
    (root / "wavs" / "TR-0001.wav").write_bytes((keep[0].wav).read_bytes()[:30])           # truncated
    (root / "wavs" / "ZERO-0001.wav").write_bytes(b"")                                     # 0 length
    lines = [f"{u.id}|{u.raw}|{u.text}" for u in keep]
    lines += ["ST-0001|a|a", "SR-0001|b|b", "U8-0001|c|c", "TR-0001|d|d", "ZERO-0001|e|e", "BAD-ROW", "X||"]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="missing columns"):
        ds = LJSpeech(root, split="all")
    assert len(ds) == 9
    np.testing.assert_allclose(load_wav(root / "wavs" / "ST-0001.wav"), wav, atol=1e-6)
    sr = load_wav(root / "wavs" / "SR-0001.wav")
    assert abs(len(sr) - len(wav)) <= 2
    assert np.abs(load_wav(root / "wavs" / "U8-0001.wav") - wav).max() < 0.02
    for bad in ("TR-0001", "ZERO-0001"):
        with pytest.raises(ValueError, match=bad):
            load_wav(root / "wavs" / f"{bad}.wav")
    # split by ID hash: deterministic, independent of the row order, ~ the requested fraction
    ids = [u.id for u in rows]
    val = {i for i in ids if split_of(i, 0.25) == "val"}
    assert val == {i for i in reversed(ids) if split_of(i, 0.25) == "val"} and 5 <= len(val) <= 40
    assert {u.id for u in LJSpeech(lj_dir, "val", 0.25)} == val
    assert {u.id for u in LJSpeech(lj_dir, "train", 0.25)} == set(ids) - val


def test_feature_cache_roundtrip(lj_dir, tmp_path):
    cache = FeatureCache(tmp_path / "c")
    wav = lj_dir / "wavs" / "LJ001-0002.wav"
    mel, f0 = cache.get("LJ001-0002", wav)
    assert len(list((tmp_path / "c").glob("*.npz"))) == 1
    mel2, f02 = cache.get("LJ001-0002", wav)
    np.testing.assert_array_equal(mel, mel2)
    np.testing.assert_array_equal(f0, f02)
    assert mel.shape[1] == f0.shape[0] and (f0 > 0).mean() > 0.3


def test_phonemes_and_vocab_reports_unknown():
    ph = phonemize(["printing, in the only sense", "hello world!"])
    assert ph[0].startswith("pɹˈɪntɪŋ,") and ph[1] == "həlˈoʊ wˈɜːld!"
    vocab = PhonemeVocab.build(ph[:1])
    ids = vocab.encode(ph[0])
    assert len(ids) == len(ph[0]) and min(ids) >= 1 and max(ids) < vocab.size
    with pytest.warns(UserWarning, match="not in the model's vocabulary"):
        out = vocab.encode("həlˈoʊ")
    assert len(out) < len("həlˈoʊ")
