"""``image-train``: class-conditional D-JEPA on images (pixels, patchified).

The defaults train on scikit-learn's real 8×8 handwritten digits (shipped with scikit-learn, no
download) and finish in about ten minutes on two CPU cores with samples a classifier recognises.
Everything else — MNIST/Fashion-MNIST IDX files, ImageNet-layout folders, the paper's presets —
is a flag away. The training loop is the shared DeepSpeed engine (:mod:`djepa.core.train`).

Run as ``image-train …``, ``python -m djepa.image.train …``, or under a launcher::

    torchrun --nproc_per_node 2 -m djepa.image.train --max-steps 500
    deepspeed --num_gpus 8 --module djepa.image.train --preset B ...
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from djepa.core.cli import UserError, parse, run_main
from djepa.core.pretrained import atomic_write_text
from djepa.core.train.checkpoint import one_writer

__all__ = ["ImageTrainConfig", "build_model_config", "run", "main"]

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ImageTrainConfig:
    """Train a class-conditional D-JEPA image generator (paper §3, §4.1)."""

    dataset: Literal["digits", "idx", "imagefolder"] = "digits"
    """Data set: scikit-learn digits (embedded), IDX files (MNIST / Fashion-MNIST) or an
    ImageNet-layout folder root/<class>/*.JPEG."""
    data_dir: str | None = None
    """Folder of the IDX files or the ImageFolder root (not used by digits)."""
    image_size: int | None = None
    """Side in pixels the images are resized / centre-cropped to (default: 8 digits, 28 IDX)."""
    patch_size: int = 2
    """Pixels per token side: N = (image_size / patch_size)² tokens of C·p² channels."""
    preset: Literal["tiny", "small", "B", "L", "H"] = "small"
    """Model size: tiny (CPU tests), small (CPU runs), or the paper's B / L / H."""
    loss: Literal["diffusion", "flow"] = "diffusion"
    """Per-token loss: diffusion (Eq. 4) or flow matching (Eq. 7)."""
    beta_schedule: Literal["linear", "cosine"] = "linear"
    """Diffusion β schedule: linear (paper App. B) or cosine (MAR code)."""
    prediction_loss_weight: float = 1.0
    """Weight of the JEPA prediction loss L_p; 0 = the MAR baseline (Table 6)."""
    pos_embed: Literal["learned", "rope"] = "learned"
    """Positions: learned tables (official code) or 2-D axial RoPE."""
    batch_size: int = 64
    """Micro-batch per process; global batch = batch_size × grad_accum × processes."""
    grad_accum: int = 1
    """Gradient-accumulation steps per optimizer step."""
    max_steps: int = 3000
    """Optimizer steps of the run."""
    lr: float | None = 1e-3
    """Peak learning rate; None = blr × global_batch / 256."""
    blr: float = 1e-4
    """Base learning rate per 256 samples (used when --lr is None)."""
    warmup_steps: int = 200
    """Linear learning-rate warm-up (optimizer steps)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warm-up: constant (paper) or cosine decay to --min-lr."""
    min_lr: float = 0.0
    """Floor of the cosine schedule."""
    weight_decay: float = 0.02
    """AdamW weight decay (none on biases, norms, embeddings/tokens, denoising MLP, projector)."""
    weight_decay_end: float | None = None
    """When set, weight decay goes linearly from --weight-decay to this over the run (paper: 0.02 → 0.2)."""
    ema_decay: float = 0.999
    """EMA decay of the target encoder / sampling weights (paper 0.9999 for 400+ epoch runs)."""
    ema_warmup_steps: int = 500
    """Linear ramp of the EMA decay over this many steps (0 = constant)."""
    grad_clip: float = 3.0
    """Gradient-norm clip."""
    output_dir: str = "runs/image"
    """Run folder: checkpoints, TensorBoard logs, samples, config, pretrained/ export."""
    checkpoint_every: int = 500
    """Checkpoint period in steps (and always at the end or on SIGINT/SIGTERM)."""
    keep_last: int = 2
    """Complete checkpoints kept."""
    sample_every: int = 1000
    """Sample-grid period in steps (0 = never)."""
    log_every: int = 50
    """TensorBoard scalar period in steps."""
    seed: int = 0
    """Seed of data order, masks, noise and the model init."""
    resume: Literal["auto", "yes", "no"] = "auto"
    """auto: continue from the last complete checkpoint in --output-dir if there is one."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0, 1 or 2)."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """fp32, bf16 (autocast, fp32 master weights and EMA) or fp16 (DeepSpeed loss scaling)."""
    num_workers: int = 0
    """DataLoader worker processes."""
    sample_ar_steps: int = 16
    """AR steps of the sample grids written during training."""
    sample_cfg: float = 3.0
    """CFG scale of the sample grids written during training."""
    vae: str | None = None
    """Train in latent space: diffusers:PATH, kl16:PATH or taesd:DIR (None = pixels);
    --patch-size then counts latent pixels (KL-16: 1)."""
    latent_scale: float | None = None
    """Latent scale (token = (z − shift)·scale); None = the VAE's (KL-16 0.2325)."""
    latent_shift: float | None = None
    """Latent shift; None = the VAE's."""
    cached_latents: str | None = None
    """Train on an image-cache-latents folder (posterior sampled per step, flip p = 0.5)."""


def _preset_overrides(preset: str) -> tuple[str, dict]:
    """``small``: the CPU size used by the defaults (≈1.3 M parameters, like the official
    code's CPU reference run): width 128, 3+3 blocks, 4 heads, 4 buffer tokens, MLP 3×128."""
    if preset == "small":
        return "tiny", dict(encoder_dim=128, encoder_depth=3, encoder_heads=4,
                            predictor_dim=128, predictor_depth=3, predictor_heads=4,
                            buffer_size=4, attn_dropout=0.0, proj_dropout=0.0,
                            loss=dict(mlp_depth=3, mlp_width=128))
    return preset, {}


def build_model_config(cfg: ImageTrainConfig, *, channels: int, image_size: int, num_classes: int):
    """The :class:`~djepa.core.config.DJEPAConfig` for this run's data and flags.

    Raises:
        UserError: image size not divisible by the patch size.
    """
    from djepa.core.config import preset

    if image_size % cfg.patch_size:
        raise UserError(f"image size {image_size} is not divisible by patch size {cfg.patch_size}")
    name, overrides = _preset_overrides(cfg.preset)
    g = image_size // cfg.patch_size
    loss = dict(overrides.pop("loss", {}), kind=cfg.loss, beta_schedule=cfg.beta_schedule,
                prediction_weight=cfg.prediction_loss_weight)
    return preset(name, token_dim=channels * cfg.patch_size ** 2, grid=(g, g), num_classes=num_classes,
                  pos_embed=cfg.pos_embed, loss=loss, **overrides)


def _is_rank0() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


@one_writer("cfg")  # the tokenizer file and the export are written outside train()
def run(cfg: ImageTrainConfig) -> int:
    """Train with ``cfg`` (EMA weights exported to ``OUTPUT/pretrained``).

    Returns:
        0 when the run finished, 130 when SIGINT/SIGTERM stopped it (a checkpoint was written).

    Raises:
        UserError / ValueError / FileNotFoundError: bad flags or data (clear messages).
    """
    from djepa.core.model import DJEPA
    from djepa.core.sampler import generate
    from djepa.core.config import SamplerConfig, config_to_dict
    from djepa.core.train import TrainConfig, train
    from djepa.image.datasets import build_dataset
    from djepa.image.tokenizer import PixelTokenizer

    default_size = {"digits": 8, "idx": None, "imagefolder": None}[cfg.dataset]
    latent = None
    if cfg.vae or cfg.cached_latents:
        from djepa.image.latents import latent_training_setup

        latent = latent_training_setup(cfg)
        dataset = latent.dataset
    else:
        dataset = build_dataset(cfg.dataset, cfg.data_dir, cfg.image_size or default_size, split="train")
    if len(dataset) == 0:
        raise UserError(f"dataset {cfg.dataset!r} at {cfg.data_dir} is empty")
    image_size = int(dataset.image_size)
    channels, num_classes = int(dataset.channels), int(dataset.num_classes)
    tokenizer = latent.tokenizer if latent else PixelTokenizer(channels, image_size, cfg.patch_size)
    model_cfg = build_model_config(cfg, channels=tokenizer.latent_channels if latent else channels,
                                   image_size=tokenizer.latent_size[0] if latent else image_size,
                                   num_classes=num_classes)
    torch.manual_seed(cfg.seed)
    model = DJEPA(model_cfg)

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = list(getattr(dataset, "class_names", [str(i) for i in range(num_classes)]))
    if latent:
        tok_info = dict(tokenizer.describe(), class_names=class_names)
    else:
        tok_info = dict(kind="pixel", channels=channels, image_size=image_size, patch_size=cfg.patch_size,
                        value_range=list(tokenizer.value_range), class_names=class_names)
    if _is_rank0():
        atomic_write_text(out / TOKENIZER_FILE, json.dumps(tok_info, indent=2) + "\n")

    def prepare_batch(batch, device):
        images, labels = batch
        return {"tokens": tokenizer.encode(images.to(device, non_blocking=True)),
                "labels": labels.to(device, non_blocking=True)}

    grid_labels = torch.arange(num_classes).repeat_interleave(max(1, 100 // num_classes))[:100]
    sampler_cfg = SamplerConfig(num_ar_steps=cfg.sample_ar_steps, cfg_scale=cfg.sample_cfg,
                                temperature=1.0, num_denoise_steps=50)

    def sample_fn(ema_module, step):
        dev = next(ema_module.parameters()).device
        tokens = generate(ema_module, grid_labels.to(dev), sampler_cfg,
                          generator=torch.Generator(device=dev).manual_seed(cfg.seed),
                          clip_range=tokenizer.value_range)
        return tokenizer.decode(tokens.float().cpu())

    train_cfg = TrainConfig(
        output_dir=str(out), max_steps=cfg.max_steps, micro_batch_size=cfg.batch_size,
        grad_accum_steps=cfg.grad_accum, blr=cfg.blr, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_schedule=cfg.lr_schedule, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay,
        weight_decay_end=cfg.weight_decay_end, grad_clip=cfg.grad_clip, zero_stage=cfg.zero_stage,
        precision=cfg.precision, ema_decay=cfg.ema_decay, ema_warmup_steps=cfg.ema_warmup_steps,
        checkpoint_every=cfg.checkpoint_every, keep_last=cfg.keep_last, sample_every=cfg.sample_every,
        log_every=cfg.log_every, seed=cfg.seed, num_workers=cfg.num_workers,
        resume={"auto": "auto", "yes": True, "no": False}[cfg.resume])
    data_info = dict(dataset=cfg.dataset, data_dir=cfg.data_dir, image_size=cfg.image_size,
                     vae=cfg.vae, cached_latents=cfg.cached_latents)
    result = train(model, dataset, train_cfg, prepare_batch=latent.prepare_batch if latent else prepare_batch,
                   sample_fn=sample_fn if cfg.sample_every else None,
                   config_to_save={"image": dataclasses.asdict(cfg), "model": config_to_dict(model_cfg),
                                   "tokenizer": tok_info, "data": data_info},
                   must_match=("model", "tokenizer", "data"))
    export = out / "pretrained"
    if result.interrupted:
        if _is_rank0():
            print(f"image-train: interrupted at step {result.step}; checkpoint written; run the same "
                  f"command to resume", file=sys.stderr)
        return 130
    if _is_rank0() and export.is_dir():
        atomic_write_text(export / TOKENIZER_FILE, json.dumps(tok_info, indent=2) + "\n")
        print(f"image-train: done at step {result.step}; EMA weights in {export}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``image-train``."""
    return run_main("image-train", lambda: run(parse(ImageTrainConfig, argv, prog="image-train")))


if __name__ == "__main__":
    raise SystemExit(main())
