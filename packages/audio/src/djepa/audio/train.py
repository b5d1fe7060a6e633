"""``tts-train``: text-to-speech D-JEPA (paper App. G.1) on the shared DeepSpeed engine.

With no flags it trains on the embedded demonstration corpus (public-domain LJSpeech
transcripts spoken by espeak-ng, synthesised once at first run, :mod:`djepa.audio.corpus`);
``--data-dir`` takes a real LJSpeech folder (the real target). The run folder resumes like every
djepa run (same command again), logs to tqdm + TensorBoard and writes a wav + mel PNG preview
every ``--sample-every`` steps.

Run as ``tts-train …``, ``python -m djepa.audio.train …``, or under torchrun / deepspeed.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from djepa.core.cli import flat_dict, is_rank_zero, parse, run_main, UserError, with_cpu_speed
from djepa.core.config import ModelSpec
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.train.checkpoint import one_writer
from djepa.core.train.config import TrainConfig

__all__ = ["TTSTrainConfig", "TTS_TRAIN_DEFAULTS", "build_tts_config", "run", "main", "PREVIEW_TEXT"]

PREVIEW_TEXT = ("Printing, in the only sense with which we are at present concerned, differs from most "
                "if not from all the arts and crafts.")

# CPU default run (the default corpus on two cores; see docs/results/tts.md): fixed lr 1e-3 with
# warm-up (constant after it), EMA 0.99 ramped over 100 steps (0.999 lags far behind in a short run, as in
# docs/results/t2i.md), fp32 (bf16 autocast is slower on most CPUs), dense checkpoints and
# previews. Everything else is the core's default.
TTS_TRAIN_DEFAULTS: dict = dict(
    output_dir="runs/tts", max_steps=2500, micro_batch_size=8, lr=1e-3, warmup_steps=200,
    ema_decay=0.99, ema_warmup_steps=100, checkpoint_every=500, sample_every=1000, log_every=50,
    precision="fp32")


def _default_train() -> TrainConfig:
    return TrainConfig(**TTS_TRAIN_DEFAULTS)


@dataclass(frozen=True)
class TTSTrainConfig:
    """Train a text-to-speech D-JEPA (paper App. G.1)."""

    data_dir: str | None = None
    """LJSpeech folder (metadata.csv + wavs/); None = the embedded espeak-ng demonstration corpus."""
    holdout: str | None = None
    """File of utterance IDs (one a line) never trained on; default: the corpus' heldout.txt, or
    for --data-dir the validation split (--val-fraction)."""
    val_fraction: float = 0.05
    """Share of IDs held out as validation with --data-dir and no --holdout (by ID hash)."""
    cache_dir: str | None = None
    """Feature / corpus cache (default ~/.cache/djepa/audio)."""
    max_frames: int = 1000
    """Utterances longer than this many mel frames (11.6 s) are skipped."""
    frames_per_token: int = 4
    """g mel frames per D-JEPA token (token dim 80·g)."""
    hidden: int = 128
    """Width of the phoneme encoder and the conditions."""
    mlp_width: int = 512
    """Width of the denoising MLP (the token is 80·g = 320 values wide). 256 was a bottleneck:
    at step 1500 the flow loss was 0.41 vs 0.21 with 512, and held-out WER 96 vs 36.4 %
    (docs/results/tts.md, fourth session)."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="small", loss="flow", pos_embed="rope"))
    """The backbone: core preset (small = CPU) with the flow matching loss (App. F/G) and RoPE."""
    mask_ratio_min: float | None = 0.1
    """Lower bound of the truncated-normal mask ratio (None = the core's 0.7, paper §3.1). CPU
    default 0.1 with std 0.5, as video-train and t2i-train: the late AR steps (most tokens
    known) are trained too."""
    mask_ratio_std: float | None = 0.5
    """Std of the truncated-normal mask ratio (None = the core's 0.25, paper §3.1)."""
    rope_theta: float | None = None
    """Base of the 1-D RoPE frequency ladder (None = the core's 10000)."""
    train: TrainConfig = field(default_factory=_default_train)
    """The training engine (core TrainConfig; CPU defaults TTS_TRAIN_DEFAULTS)."""
    sample_text: str = PREVIEW_TEXT
    """Sentence of the periodic previews."""
    sample_ar_steps: int = 16
    """AR steps of the previews."""
    sample_cfg: float = 2.0
    """CFG scale of the previews."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def build_tts_config(cfg: TTSTrainConfig, symbols, stats):
    """The :class:`~djepa.audio.model.TTSConfig` of a run (backbone from ``cfg.model``)."""
    from djepa.audio.model import TTSConfig

    if cfg.model.loss != "flow":
        print("tts-train: note: the paper found the diffusion loss did not train well on LJSpeech "
              "(App. G.1); flow is the default", file=sys.stderr)
    if cfg.model.pos_embed != "rope":
        raise UserError("--pos-embed must be rope for TTS (1-D RoPE over variable lengths, App. G.1)")
    g = cfg.frames_per_token
    if g < 1:
        raise UserError("--frames-per-token must be >= 1")
    max_tokens = -(-cfg.max_frames // g)
    extra = {k: v for k, v in (("mask_ratio_min", cfg.mask_ratio_min), ("mask_ratio_std", cfg.mask_ratio_std),
                               ("rope_theta", cfg.rope_theta)) if v is not None}
    d = cfg.model.build(token_dim=80 * g, grid=(max_tokens,), num_classes=1, condition="sequence",
                        condition_dim=cfg.hidden, aligned_dim=cfg.hidden, joint_depth=None, **extra)
    d = dataclasses.replace(d, loss=dataclasses.replace(d.loss, mlp_width=cfg.mlp_width))
    mean, std, f0m, f0s = stats
    return TTSConfig(djepa=d, symbols=tuple(symbols), frames_per_token=g, hidden=cfg.hidden,
                     mel_mean=tuple(mean), mel_std=tuple(std), f0_mean=f0m, f0_std=f0s)


def _read_ids(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"ID file {p} not found")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def load_training_data(cfg: TTSTrainConfig):
    """(dataset, data description) for the flags."""
    from djepa.audio.corpus import build_default_corpus, default_cache_dir
    from djepa.audio.data import TTSDataset

    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if cfg.data_dir is None:
        root = build_default_corpus(cache, log=print if is_rank_zero() else (lambda *_: None))
        holdout = cfg.holdout or str(root / "heldout.txt")
        split = "all"
    else:
        root = Path(cfg.data_dir)
        if not root.exists():
            raise UserError(f"--data-dir {root} does not exist")
        holdout = cfg.holdout
        split = "all" if holdout is not None else "train"
    exclude = set(_read_ids(holdout)) if holdout else set()
    ds = TTSDataset(root, split=split, val_fraction=cfg.val_fraction, cache_dir=cache / "features",
                    max_frames=cfg.max_frames, exclude=exclude, progress=is_rank_zero())
    info = dict(data_dir=str(root), holdout=holdout, split=split, val_fraction=cfg.val_fraction,
                max_frames=cfg.max_frames, num_utterances=len(ds))
    return ds, info


@one_writer("cfg.train")
def run(cfg: TTSTrainConfig) -> int:
    """Train with ``cfg`` (EMA weights exported to ``OUTPUT/pretrained``).

    Returns:
        0 when finished, 130 when SIGINT/SIGTERM stopped it (a checkpoint was written).
    """
    from djepa.core.config import SamplerConfig, config_to_dict
    from djepa.core.train import train

    from djepa.audio.data import collate, mel_statistics, prepare_batch
    from djepa.audio.model import TTSModel
    from djepa.audio.preview import SpeechPreview

    ds, data_info = load_training_data(cfg)
    out = Path(cfg.train.output_dir)
    tts_cfg = build_tts_config(cfg, ds.vocab.symbols, mel_statistics(ds.items))
    if is_rank_zero():
        print(f"tts-train: {len(ds)} utterances from {data_info['data_dir']}, "
              f"{len(ds.vocab.symbols)} phoneme symbols, {cfg.frames_per_token} frames per token")
    torch.manual_seed(cfg.train.seed)
    model = TTSModel(tts_cfg)
    preview = SpeechPreview(cfg.sample_text, SamplerConfig(
        num_ar_steps=cfg.sample_ar_steps, cfg_scale=cfg.sample_cfg, num_denoise_steps=25))
    result = train(model, ds, cfg.train, prepare_batch=prepare_batch, collate_fn=collate,
                   preview=preview if cfg.train.sample_every else None,
                   config_to_save={"tts_train": flat_dict(cfg), "model": config_to_dict(tts_cfg.djepa),
                                   "tts": config_to_dict(tts_cfg), "data": data_info},
                   must_match=("model", "tts"))
    if result.interrupted:
        if is_rank_zero():
            print(f"tts-train: interrupted at step {result.step}; checkpoint written; run the same "
                  f"command to resume", file=sys.stderr)
        return 130
    if is_rank_zero():
        print(f"tts-train: done at step {result.step}; EMA weights in {out / 'pretrained'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``tts-train``."""
    return run_main("tts-train", lambda: run(with_cpu_speed(parse(TTSTrainConfig, argv, prog="tts-train"))))


if __name__ == "__main__":
    raise SystemExit(main())
