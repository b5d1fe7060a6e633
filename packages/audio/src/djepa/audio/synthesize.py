"""``tts``: speech from text with a trained TTS D-JEPA and the HiFi-GAN V1 vocoder.

``tts "text" --checkpoint RUN --output out.wav`` or ``tts --file lines.txt --output-dir OUT``
(one wav per line, ``OUT/0000.wav`` …; batched, and each line's audio equals what it gets alone:
per-line generators seeded ``seed + line``, padding-invariant model). Text is normalised
(numbers, currency, dates, abbreviations), split into sentences (long sentences further at
commas / spaces, at most ``--max-chars`` each), synthesised as a batch and joined with a 0.15 s
cross-fade. Prints the real-time factor (seconds of compute per second of audio) of the acoustic
model, the vocoder and the total. Bad input (empty text, only punctuation or emoji, a checkpoint
of another modality) → one line on stderr, exit 2.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from djepa.core.cli import UserError, parse, run_main

__all__ = ["TTSFlags", "text_to_ids", "split_sentences", "synthesize_texts", "run", "main"]


@dataclass(frozen=True)
class TTSFlags:
    """Synthesise speech with a tts-train run."""

    text: str | None = None
    """The text to speak (positional: tts "Hello there.")."""
    checkpoint: str = "runs/tts"
    """A tts-train run folder (its pretrained/), a pretrained folder, or RUN/checkpoints/step_N."""
    output: str = "out.wav"
    """Output wav (22,050 Hz, 16-bit) for a single text."""
    file: str | None = None
    """A text file: one utterance per non-empty line → OUTPUT_DIR/NNNN.wav."""
    output_dir: str = "tts-out"
    """Folder of the --file outputs."""
    steps: int = 16
    """AR steps of Algorithm 1 per sentence."""
    cfg: float = 2.0
    """Classifier-free guidance scale (1 = off). 2 by our measurement (docs/results/tts.md: 20
    held-out sentences of the default run, WER 35.2 % at 1, 29.6 % at 2, 31.2 % at 3); the
    paper gives no TTS value. Training drops the condition of 10 % of rows, so any scale works."""
    temperature: float = 1.0
    """Temperature τ (scales the flow sampler's initial noise)."""
    denoise_steps: int = 25
    """Flow ODE steps of the denoising MLP."""
    seed: int = 0
    """Seed; line i of --file (and sentence j) uses its own generator."""
    speed: float = 1.0
    """Speaking rate: durations are divided by it (1.2 = 20 % faster)."""
    vocoder: str = "hifigan"
    """hifigan (official LJSpeech V1 weights) or griffin-lim (no weights)."""
    max_chars: int = 200
    """Longest chunk of text synthesised at once (sentences are split further at commas)."""
    batch_size: int = 8
    """Chunks per acoustic-model batch."""
    device: str = "cpu"
    """Torch device."""


def text_to_ids(text: str, tts_cfg, *, what: str = "") -> list[int]:
    """Normalised, phonemised and encoded ``text`` (unknown symbols are reported).

    Raises:
        UserError: nothing speakable (empty, only punctuation or emoji).
    """
    from djepa.audio.phonemes import PhonemeVocab, phonemize
    from djepa.audio.text import normalize_text

    norm = normalize_text(text)
    if not re.search(r"[A-Za-z]", norm):
        raise UserError(f"nothing to speak in {text[:40]!r}{what}: the text has no letters or numbers "
                        f"after normalisation")
    ids = PhonemeVocab(tts_cfg.symbols).encode(phonemize([norm])[0], what=what or norm)
    if not ids:
        raise UserError(f"no known phoneme in {text[:40]!r}")
    return ids


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Sentences (split after . ! ? ; :) of at most ``max_chars`` characters; a longer one is
    split at commas, then at spaces. Pieces without letters or digits are dropped."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;:])\s+|\n+", text) if p.strip()]
    out: list[str] = []
    for p in parts:
        while len(p) > max_chars:
            cut = p.rfind(", ", 0, max_chars)
            cut = cut + 1 if cut > max_chars // 3 else p.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            out.append(p)
    return [p for p in out if re.search(r"[A-Za-z0-9]", p)]


@torch.no_grad()
def synthesize_texts(model, vocoder, texts: list[str], flags: TTSFlags, *, progress: bool = False,
                     seeds: list[int] | None = None) -> tuple[list[torch.Tensor], dict[str, float]]:
    """One waveform per text (sentences batched, cross-faded) and timings
    ``{"acoustic_s", "vocoder_s", "audio_s"}``.

    Chunk ``j`` of text ``i`` uses the generator seeded ``seeds[i] · 1000 + j`` (seeds default
    ``flags.seed + i``), so a text's audio does not depend on the other texts or the batch size.
    """
    from djepa.core.config import SamplerConfig
    from djepa.core.rng import row_generators

    from djepa.audio.media import crossfade_join

    sampler = SamplerConfig(num_ar_steps=flags.steps, cfg_scale=flags.cfg, temperature=flags.temperature,
                            num_denoise_steps=flags.denoise_steps)
    seeds = seeds if seeds is not None else [flags.seed + i for i in range(len(texts))]
    chunks: list[tuple[int, int, list[int]]] = []
    for i, t in enumerate(texts):
        sents = split_sentences(t, flags.max_chars)
        if not sents:
            raise UserError(f"nothing to speak in {t[:40]!r}: only punctuation, symbols or emoji")
        for j, s in enumerate(sents):
            chunks.append((i, j, text_to_ids(s, model.tts)))
    device = next(model.parameters()).device
    mels: dict[tuple[int, int], torch.Tensor] = {}
    t_ac = t_voc = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(chunks), desc="tts", unit="sentence", file=sys.stderr)
    order = sorted(range(len(chunks)), key=lambda k: len(chunks[k][2]))  # similar lengths together
    wavs: dict[tuple[int, int], torch.Tensor] = {}
    for s in range(0, len(order), flags.batch_size):
        sel = [chunks[k] for k in order[s:s + flags.batch_size]]
        lmax = max(len(c[2]) for c in sel)
        ids = torch.zeros(len(sel), lmax, dtype=torch.long)
        for r, (_, _, x) in enumerate(sel):
            ids[r, :len(x)] = torch.tensor(x)
        gens = row_generators([seeds[i] * 1000 + j for i, j, _ in sel], device)
        t0 = time.perf_counter()
        out = model.synthesize(ids.to(device), sampler, generators=gens, speed=flags.speed)
        t_ac += time.perf_counter() - t0
        t0 = time.perf_counter()
        for (i, j, _), mel in zip(sel, out):
            wavs[(i, j)] = vocoder(mel[None])[0]  # one by one: HiFi-GAN has no padding mask
        t_voc += time.perf_counter() - t0
        if bar is not None:
            bar.update(len(sel))
    if bar is not None:
        bar.close()
    result = []
    for i in range(len(texts)):
        pieces = [wavs[(i, j)] for (ii, j, _) in chunks if ii == i]
        result.append(crossfade_join(pieces))
    audio = sum(w.shape[0] for w in result) / 22050.0
    return result, {"acoustic_s": t_ac, "vocoder_s": t_voc, "audio_s": audio}


def _rtf_line(t: dict[str, float]) -> str:
    a = max(t["audio_s"], 1e-9)
    return (f"real-time factor: acoustic {t['acoustic_s'] / a:.3f}, vocoder {t['vocoder_s'] / a:.3f}, "
            f"total {(t['acoustic_s'] + t['vocoder_s']) / a:.3f} ({t['audio_s']:.1f} s of audio)")


def run(flags: TTSFlags) -> int:
    from djepa.audio.checkpoint import load_tts
    from djepa.audio.media import write_wav
    from djepa.audio.vocoder import Vocoder

    if (flags.text is None) == (flags.file is None):
        raise UserError("give the text to speak (tts \"Hello.\") or --file lines.txt, not both")
    if flags.speed <= 0 or flags.steps < 1:
        raise UserError("--speed must be > 0 and --steps >= 1")
    if flags.file is not None:
        p = Path(flags.file)
        if not p.is_file():
            raise UserError(f"--file {p} not found")
        texts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise UserError(f"--file {p} has no non-empty line")
    else:
        if not flags.text.strip():
            raise UserError("the text is empty")
        texts = [flags.text]
    try:
        model, _ = load_tts(flags.checkpoint, flags.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    vocoder = Vocoder(flags.vocoder, flags.device)
    wavs, timing = synthesize_texts(model, vocoder, texts, flags,
                                    progress=sum(len(t) for t in texts) > 2000 or len(texts) > 1)
    if flags.file is None:
        path = write_wav(flags.output, wavs[0])
        print(f"tts: wrote {path} ({wavs[0].shape[0] / 22050:.2f} s)")
    else:
        out = Path(flags.output_dir)
        for i, w in enumerate(wavs):
            write_wav(out / f"{i:04d}.wav", w)
        print(f"tts: wrote {len(wavs)} wavs to {out}")
    print(_rtf_line(timing))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``tts``: the first non-flag argument is the text."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--text", argv[0]] + argv[1:]
    return run_main("tts", lambda: run(parse(TTSFlags, argv, prog="tts")))


if __name__ == "__main__":
    raise SystemExit(main())
