"""``video-train``: class-conditional D-JEPA on video (paper App. G.3), flow matching loss (App. F).

Defaults train on the embedded moving-digits clips (:class:`djepa.video.datasets.MovingDigits`:
scikit-learn's real digits, class = digit × direction, 20 classes, 8 frames of 12×12, patch
2×4×4 → a 4×3×3 grid of 36 tokens of 32 values) on two CPU cores. UCF101 as distributed (``--dataset ucf101
--data-dir UCF-101 --split-dir ucfTrainTestlist``), Kinetics-style class folders
(``--dataset folder``), the CogVideoX VAE (``--vae DIR``) and the paper's presets are flags.

Paper choices kept: flow matching loss (App. F: "the diffusion loss failed on video"), 3-D axial
RoPE over the token grid, zero-padded clips that the model learns to end (``--padding zeros``:
padded tokens are ordinary targets, so the model "decides when to terminate"; ``--padding
mask`` instead drops them from attention and loss via the core's TokenBatch padding — then the
sampler still generates the full grid), 8 fps, clip length 160 for UCF101.

CPU-budget deviations (flags keep the paper / core values): digit frames 12×12 (``--frame-size
16 16`` was the first default: 64 tokens, ~1.8× the step cost, and at 500 steps its samples'
motion was at chance where 12×12 reached ~60 %); a denoising MLP of width 256 instead of the
small preset's 128 (``--mlp-width``; App. F suspects the MLP is too light for flow matching, and
32-value tokens are 8× the image default's 4); 1500 steps with a cosine lr decay to 1e-4 to fit
15 minutes on two cores; and the recipe that made a short run work (docs/results/video.md):
digits entering at the edge their motion comes from (``--digit-start random`` is the harder
set), training mask ratio TruncNormal(1, 0.5) on [0.1, 1] (paper: std 0.25 on [0.7, 1]),
RoPE base 100 (paper code: 10000) and EMA 0.99 ramped over 100 steps (core: 0.9999). With the
paper's masking, RoPE base and a 0.999 EMA the same 1500 steps gave 48.5 % class accuracy
instead of 95.5–97 %.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from djepa.core.cli import flat_dict, is_rank_zero, parse, run_main, UserError, with_cpu_speed
from djepa.core.config import ModelSpec
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.pretrained import atomic_write_text
from djepa.core.runs import TOKENIZER_FILE, resumed_model_config
from djepa.core.train.checkpoint import one_writer
from djepa.core.train.config import TrainConfig

__all__ = ["VideoTrainConfig", "VIDEO_TRAIN_DEFAULTS", "SMALL_MLP_WIDTH", "build_dataset", "build_tokenizer", "run", "main"]

# CPU default run (deviations from the core TrainConfig, as image-train: a short run on two
# cores: lr 1e-3 with warm-up and a cosine decay to 1e-4, EMA 0.99 ramped over 100 steps — 0.999
# lags far behind the weights in a 1500-step run, docs/results/t2i.md — denser checkpoints / logs).
VIDEO_TRAIN_DEFAULTS: dict = dict(
    output_dir="runs/video", max_steps=1500, micro_batch_size=32, lr=1e-3, warmup_steps=200,
    lr_schedule="cosine", min_lr=1e-4,
    ema_decay=0.99, ema_warmup_steps=100, checkpoint_every=500, sample_every=1000, log_every=50)


#: Denoising-MLP width of the small preset in video-train (the core preset's is 128).
SMALL_MLP_WIDTH = 256


def _default_train() -> TrainConfig:
    return TrainConfig(**VIDEO_TRAIN_DEFAULTS)


@dataclass(frozen=True)
class VideoTrainConfig:
    """Train a class-conditional D-JEPA video generator (paper App. G.3)."""

    dataset: Literal["digits", "ucf101", "folder"] = "digits"
    """digits (embedded moving digits), ucf101 (UCF-101/<Class>/*.avi + split files) or folder
    (Kinetics-style <root>/<class>/*.mp4)."""
    data_dir: str | None = None
    """The folder of class folders (UCF-101, or a Kinetics-style root)."""
    split_dir: str | None = None
    """UCF101 ucfTrainTestlist folder (classInd.txt, trainlist0N.txt); None = every video,
    classInd.txt from data_dir/.. or the case-insensitive folder order."""
    fold: int = 1
    """UCF101 split fold (trainlist0{fold}.txt)."""
    frames: int | None = None
    """Clip length in frames at --fps (default: 8 digits, 160 = 20 s for video folders)."""
    fps: float = 8.0
    """Frame rate clips are resampled to (paper: 8)."""
    frame_size: tuple[int, int] | None = None
    """H W to resize / centre-crop frames to (None = native; digits: 12 12)."""
    frame_mode: Literal["crop", "resize"] = "crop"
    """crop (scale the shorter side, centre-crop) or resize (stretch)."""
    grey: bool = False
    """Convert video-folder clips to one grey channel."""
    digit_start: Literal["edge", "random"] = "edge"
    """Moving digits only: ``edge`` (CPU default: each clip enters at the edge its motion comes
    from, centred, 1 px/frame, so a class has one trajectory) or ``random`` (any start, 1–2
    px/frame, ≈ 90 trajectories per class: the model must find the digit in its context, which
    a 15-minute CPU run does not learn, docs/results/video.md). :class:`MovingDigits`."""
    patch: tuple[int, int, int] | None = None
    """Patch t h w (default: 2 4 4 for digit pixels, 4 8 8 for other pixels, 4 2 2 latents as the paper)."""
    padding: Literal["zeros", "mask"] = "zeros"
    """zeros: padded frames are trained as data (paper); mask: padded tokens are left out of
    attention and the loss (TokenBatch padding)."""
    vae: str | None = None
    """Local diffusers AutoencoderKLCogVideoX folder: train on its latents (cached in RUN/latents)."""
    latent_scale: float | None = None
    """Latent multiplier (None = the VAE config's scaling_factor)."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="small", loss="flow", pos_embed="rope"))
    """The model: core preset (small = CPU) with the flow matching loss and RoPE (App. F, G.3)."""
    mlp_width: int | None = None
    """Width of the denoising MLP; None = SMALL_MLP_WIDTH (256) for the small preset, whose own
    128 is too light for 32-value pixel cubes (module docstring), else the preset's (B: 1024)."""
    mlp_depth: int | None = None
    """Residual blocks of the denoising MLP (None = the preset's; small: 3)."""
    mask_ratio_min: float | None = 0.1
    """Lower bound of the truncated-normal mask ratio (None = the core's 0.7, paper §3.1). CPU
    default 0.1 (with std 0.5): sampling reveals most tokens with much of the clip already
    known, a state the paper's [0.7, 1] hardly trains in 1500 steps (docs/results/video.md:
    48.5 % class accuracy with the paper's masking, RoPE base and EMA, 95.5–97 % with these)."""
    mask_ratio_std: float | None = 0.5
    """Std of the truncated-normal mask ratio (None = the core's 0.25, paper §3.1; the mean
    stays 1.0, so high ratios still dominate). CPU default 0.5, with ``mask_ratio_min``."""
    rope_theta: float | None = 100.0
    """Base of the 3-D RoPE frequency ladder (None = the core's 10000). CPU default 100: on a
    4×3×3 grid only one or two of a head's frequencies per axis turn usefully with 10000."""
    embed_norm: bool = True
    """LayerNorm on the context encoder's token embeddings (core ``DJEPAConfig.embed_norm``)."""
    train: TrainConfig = field(default_factory=_default_train)
    """The training engine (core TrainConfig; CPU defaults VIDEO_TRAIN_DEFAULTS)."""
    sample_ar_steps: int = 16
    """AR steps of the previews written during training."""
    sample_cfg: float = 3.0
    """CFG scale of the previews."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def build_dataset(cfg, split: str = "train"):
    """The data set of ``cfg`` (a :class:`VideoTrainConfig` or anything with its data fields).

    Raises:
        UserError: a missing folder / file, or a flag combination that does not apply.
    """
    from djepa.video.datasets import MovingDigits, VideoFolder

    if cfg.dataset == "digits":
        if cfg.data_dir:
            raise UserError("--data-dir is not used by --dataset digits (did you mean --dataset ucf101 or folder?)")
        size = cfg.frame_size or (12, 12)
        if size[0] != size[1]:
            raise UserError(f"moving digits have square frames, got --frame-size {size[0]} {size[1]}")
        return MovingDigits(split, frames=cfg.frames or 8, size=size[0], min_frames=max(1, (cfg.frames or 8) * 5 // 8),
                            start=cfg.digit_start)
    if not cfg.data_dir:
        raise UserError(f"--dataset {cfg.dataset} needs --data-dir")
    root = Path(cfg.data_dir)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    class_ind, split_file = None, None
    if cfg.dataset == "ucf101":
        sd = Path(cfg.split_dir) if cfg.split_dir else None
        if sd is not None and not sd.is_dir():
            raise UserError(f"split folder {sd} does not exist")
        for cand in ([sd] if sd else []) + [root.parent / "ucfTrainTestlist", root]:
            if cand is not None and (cand / "classInd.txt").is_file():
                class_ind = cand / "classInd.txt"
                break
        if sd is not None:
            name = f"{'train' if split == 'train' else 'test'}list{cfg.fold:02d}.txt"
            split_file = sd / name
            if not split_file.is_file():
                raise UserError(f"split file {split_file} not found")
    try:
        return VideoFolder(root, frames=cfg.frames or 160, fps=cfg.fps, size=cfg.frame_size,
                           mode=cfg.frame_mode, class_ind=class_ind, split_file=split_file, grey=cfg.grey)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None


def build_tokenizer(cfg, dataset, device="cpu"):
    """The pixel-cube or VAE tokenizer for ``cfg`` and ``dataset`` (grid checked up front).

    Raises:
        UserError: a clip / patch / VAE that does not fit (one line naming sizes that fit).
    """
    from djepa.video.tokenizer import VideoPixelTokenizer
    from djepa.video.vae import VideoVAETokenizer

    t, h, w, c = dataset.frames if hasattr(dataset, "frames") else None, dataset.height, dataset.width, dataset.channels
    try:
        if cfg.vae:
            return VideoVAETokenizer(cfg.vae, t, h, w, cfg.patch or (4, 2, 2), cfg.latent_scale, device=device)
        default = (2, 4, 4) if cfg.dataset == "digits" else (4, 8, 8)
        return VideoPixelTokenizer(c, t, h, w, cfg.patch or default)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def _quiet(message: str) -> None:
    """Log nothing (ranks other than 0)."""


def token_padding_for(tokenizer, valid, frames: int):
    """``[B, N]`` padding mask (True = all of the token's frames are padding) for ``valid`` counts."""
    from djepa.video.datasets import token_padding

    first = None
    if getattr(tokenizer, "kind", "") == "video-vae" and frames % 8 == 1:
        first = 1 + tokenizer.temporal * (tokenizer.patch[0] - 1)  # causal first latent frame
    return token_padding(valid, tokenizer.grid, tokenizer.frames_per_token, first)


@one_writer("cfg.train")
def run(cfg: VideoTrainConfig) -> int:
    """Train with ``cfg`` (EMA weights exported to ``OUTPUT/pretrained``).

    Returns:
        0 when done, 130 when SIGINT/SIGTERM stopped it (a checkpoint was written).
    """
    from djepa.core.batch import TokenBatch
    from djepa.core.config import SamplerConfig, config_to_dict
    from djepa.core.model import DJEPA
    from djepa.core.train import train
    from djepa.video.preview import VideoPreview

    dataset = build_dataset(cfg, "train")
    if len(dataset) == 0:
        raise UserError(f"dataset {cfg.dataset!r} is empty")
    out = Path(cfg.train.output_dir)
    tokenizer = build_tokenizer(cfg, dataset)
    num_classes = int(dataset.num_classes)
    try:
        extra = {k: v for k, v in (("mask_ratio_min", cfg.mask_ratio_min), ("mask_ratio_std", cfg.mask_ratio_std),
                                   ("rope_theta", cfg.rope_theta)) if v is not None}
        extra["embed_norm"] = cfg.embed_norm
        model_cfg = cfg.model.build(token_dim=tokenizer.token_dim, grid=tokenizer.grid, num_classes=num_classes,
                                    **extra)
        width = cfg.mlp_width if cfg.mlp_width is not None else (SMALL_MLP_WIDTH if cfg.model.preset == "small" else None)
        mlp = {k: v for k, v in (("mlp_width", width), ("mlp_depth", cfg.mlp_depth)) if v is not None}
        if mlp:
            model_cfg = dataclasses.replace(model_cfg, loss=dataclasses.replace(model_cfg.loss, **mlp))
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.train.resume is not False:
        model_cfg = resumed_model_config(out, model_cfg, log=print if is_rank_zero() else _quiet)
    torch.manual_seed(cfg.train.seed)
    model = DJEPA(model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    class_names = list(dataset.class_names)
    tok_info = dict(tokenizer.to_config(), class_names=class_names, fps=cfg.fps, modality="video",
                    dataset=cfg.dataset)
    if is_rank_zero():
        atomic_write_text(out / TOKENIZER_FILE, json.dumps(tok_info, indent=2) + "\n")
    frames = tokenizer.frames
    use_mask = cfg.padding == "mask"

    def batch_of(tokens, valid):
        if not use_mask:
            return tokens
        tb = TokenBatch.from_grid(tokens, tokenizer.grid)
        return TokenBatch(tb.tokens, tb.positions, token_padding_for(tokenizer, valid.cpu(), frames).to(tokens.device))

    if cfg.vae:
        from djepa.video.vae import cache_latents

        train_data = cache_latents(dataset, tokenizer, out / "latents", progress=is_rank_zero())

        def prepare_batch(batch, device):
            mean, std, labels, valid = batch
            z = mean.to(device) + std.to(device) * torch.randn(mean.shape, device=device)  # posterior sample
            return {"tokens": batch_of(tokenizer.tokens_from_latents(z), valid), "labels": labels.to(device)}
    else:
        train_data = dataset

        def prepare_batch(batch, device):
            video, labels, valid = batch
            return {"tokens": batch_of(tokenizer.encode(video.to(device)), valid), "labels": labels.to(device)}

    preview = VideoPreview(tokenizer, class_names, SamplerConfig(
        num_ar_steps=cfg.sample_ar_steps, cfg_scale=cfg.sample_cfg, num_denoise_steps=50, flow_solver="heun"),
        fps=cfg.fps)
    data_info = dict(dataset=cfg.dataset, data_dir=cfg.data_dir, split_dir=cfg.split_dir, fold=cfg.fold,
                     frames=frames, fps=cfg.fps, frame_size=list(cfg.frame_size) if cfg.frame_size else None,
                     frame_mode=cfg.frame_mode, grey=cfg.grey, padding=cfg.padding, vae=cfg.vae,
                     digit_start=cfg.digit_start)
    result = train(model, train_data, cfg.train, prepare_batch=prepare_batch,
                   preview=preview if cfg.train.sample_every else None,
                   config_to_save={"video": flat_dict(cfg), "model": config_to_dict(model_cfg),
                                   "tokenizer": tok_info, "data": data_info},
                   must_match=("model", "tokenizer", "data"))
    if result.interrupted:
        if is_rank_zero():
            print(f"video-train: interrupted at step {result.step}; checkpoint written; run the same "
                  f"command to resume", file=sys.stderr)
        return 130
    export = out / "pretrained"
    if is_rank_zero() and export.is_dir():
        atomic_write_text(export / TOKENIZER_FILE, json.dumps(tok_info, indent=2) + "\n")
        print(f"video-train: done at step {result.step}; EMA weights in {export}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``video-train``."""
    return run_main("video-train", lambda: run(with_cpu_speed(parse(VideoTrainConfig, argv, prog="video-train"))))


if __name__ == "__main__":
    raise SystemExit(main())
