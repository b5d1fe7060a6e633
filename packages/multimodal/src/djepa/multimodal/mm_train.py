"""``mm-train``: the Transfusion-style text+image D-JEPA (paper App. G.4) on the shared engine.

Data: the embedded shapes set (:mod:`djepa.multimodal.shapes`, 24×24 RGB, captions in several
phrasings, the seen/unseen split held out). Item ``i`` is a pure function of ``(seed, i)``: a
scene and caption (:class:`~djepa.multimodal.shapes.ShapesDataset`) and, from its own stream,
the example kind — caption → image (``--t2i-prob``, the text dropped to the null prompt with
``--text-drop-prob`` for CFG), image → caption (``--i2t-prob``) or the caption alone
(``--text-prob``) — and the chat phrasing (:mod:`djepa.multimodal.mm_sequence`). Images are
pixel patches (:class:`djepa.image.tokenizer.PixelTokenizer`, ``--patch-size``, default 4 → a
6×6 grid of 48-value tokens, values in [−1, 1]).

The text tokenizer: ``--tokenizer PATH`` (a ``tokenizer.model`` from ``mm-train-tokenizer``, or
its folder), or, by default, one trained here on the training captions (deterministic). Its bytes
are stored in the model (every checkpoint and the export) and in ``RUN/tokenizer.model``.

Run folder as the image CLIs': ``config.json`` (sections ``mm``, ``model``, ``tokenizer``,
``data``; a different model / data / tokenizer in the same folder is refused), ``checkpoints/``
(atomic, verified; the same command resumes), ``samples/`` (previews), ``pretrained/`` (EMA
export: ``config.json`` + ``model.safetensors``). One writer per folder.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from djepa.core.cli import UserError, flat_dict, is_rank_zero, parse, run_main, with_cpu_speed
from djepa.core.config import LossConfig
from djepa.core.cpu_speed import CpuSpeedFlags
from djepa.core.pretrained import atomic_write_bytes, atomic_write_text
from djepa.core.train.checkpoint import one_writer
from djepa.core.train.config import TrainConfig

__all__ = ["MMTrainConfig", "MM_TRAIN_DEFAULTS", "MODALITY", "MMTrainSet", "collate", "run", "main",
           "build_model_config"]

MODALITY = "text+image"

# CPU default run (19 min on two cores, docs/results/mm.md): 4000 steps, lr 1e-3 with warm-up and
# cosine decay to 1e-4, EMA 0.99 ramped over 100 steps (0.999 lags far behind in a short run,
# docs/results/t2i.md), fp32.
MM_TRAIN_DEFAULTS: dict = dict(
    output_dir="runs/mm", max_steps=4000, micro_batch_size=32, lr=1e-3, warmup_steps=100,
    lr_schedule="cosine", min_lr=1e-4, ema_decay=0.99, ema_warmup_steps=100, checkpoint_every=250,
    sample_every=500, log_every=50, precision="fp32")


def _default_train() -> TrainConfig:
    return TrainConfig(**MM_TRAIN_DEFAULTS)


@dataclass(frozen=True)
class MMTrainConfig:
    """Train the Transfusion-style text+image D-JEPA (paper App. G.4) on the shapes set."""

    tokenizer: str | None = None
    """A tokenizer.model from mm-train-tokenizer (or its folder); default: train one on the captions."""
    vocab_size: int = 384
    """Pieces of the tokenizer trained here (when no --tokenizer)."""
    patch_size: int = 4
    """Pixels per image-token side (24 px images: 4 → a 6×6 grid)."""
    num_scenes: int = 50_000
    """Items per epoch (each a pure function of the seed and its index)."""
    layout: Literal["random", "slots"] = "slots"
    """Shapes set: ``slots`` (CPU default: objects at fixed centres, random scale) or ``random``
    (random sizes and positions; :func:`djepa.multimodal.shapes.sample_scene`). At 1500 steps
    slots + the masking / RoPE base / EMA defaults below lifted seen text→image object+colour
    from 27.5 to 60.0 % and relation from 4.3 to 45.3 % (docs/results/mm.md)."""
    t2i_prob: float = 0.45
    """Share of caption → image examples."""
    i2t_prob: float = 0.4
    """Share of image → caption examples (0.3 → 0.4 lifted both directions at step 1500:
    image → text correct 51.0 → 54.5 %, text → image object+colour 61.0 → 73.0 %, docs/results/mm.md)."""
    text_prob: float = 0.15
    """Share of captions alone."""
    text_drop_prob: float = 0.1
    """Probability a caption → image example has its text dropped (CFG's null prompt)."""
    i2t_phrasing: Literal["canonical", "any"] = "canonical"
    """Answer of an image → caption example: ``canonical`` = reading order (the left / upper
    object first, "… to the left of …" / "… above …"; :attr:`~djepa.multimodal.shapes.Prompt.canonical`),
    ``any`` = the item's random phrasing (as the caption → image prompts, which keep all
    phrasings). With ``any`` the answer's first object is a coin flip, so the relation word
    depends on *where that object is*, a binding the short CPU run does not learn (relation order
    at chance, docs/results/mm.md); in reading order the model names the object *at* a place."""
    encoder_dim: int = 128
    """Width of the context encoder φ (and the LM head's input)."""
    encoder_depth: int = 4
    """Blocks of φ."""
    encoder_heads: int = 4
    """Heads of φ."""
    predictor_dim: int = 128
    """Width of the feature predictor γ."""
    predictor_depth: int = 2
    """Blocks of γ."""
    predictor_heads: int = 4
    """Heads of γ."""
    loss: Literal["flow", "diffusion"] = "flow"
    """Per-token image loss (App. G uses flow matching)."""
    mlp_depth: int = 3
    """Residual blocks of the denoising MLP."""
    mlp_width: int = 256
    """Width of the denoising MLP."""
    prediction_weight: float = 1.0
    """Weight of the prediction loss L_p (0 = the MAR baseline, no target-encoder pass)."""
    image_weight: float = 5.0
    """λ of L = CE + λ·(image loss) (Transfusion's 5)."""
    mask_ratio_min: float = 0.1
    """Lower bound of the truncated-normal mask ratio of a drawn image span (paper §3.1: 0.7;
    CPU default 0.1 with std 0.5, as t2i-train: the late AR steps are trained too)."""
    mask_ratio_std: float = 0.5
    """Its std (paper §3.1: 0.25; the mean is 1)."""
    rope_theta: float = 100.0
    """RoPE base of the 3-D positions (text on the diagonal, 2-D inside an image span); CPU
    default 100 (core: 10000) for the 6×6 span and ~40-token sequences."""
    image_pos_embed: bool = True
    """Learned absolute position embedding of the span cell at φ's and γ's image inputs
    (MMConfig.image_pos_embed; --no-image-pos-embed = RoPE only, the earlier design)."""
    train: TrainConfig = field(default_factory=_default_train)
    """The training engine (core TrainConfig; CPU-run defaults MM_TRAIN_DEFAULTS)."""
    sample_ar_steps: int = 16
    """AR steps of the previews written during training."""
    sample_cfg: float = 3.0
    """CFG scale of the previews."""
    speed: CpuSpeedFlags = field(default_factory=CpuSpeedFlags)
    """CPU speed paths, one switch (djepa.core.cpu_speed)."""


class MMTrainSet(Dataset):
    """Training items: ``(image [3, S, S] float in [0, 1], caption, kind, drop_text, template)``
    for item ``i`` (module docstring), a pure function of ``(seed, i)``. ``i2t_phrasing=
    "canonical"``: an image → caption item's caption is the prompt's reading-order phrasing."""

    def __init__(self, size: int, seed: int, mix, layout: str = "random", i2t_phrasing: str = "any") -> None:
        from djepa.multimodal.shapes import ShapesDataset

        if i2t_phrasing not in ("canonical", "any"):
            raise ValueError(f"i2t_phrasing must be 'canonical' or 'any', got {i2t_phrasing!r}")
        self.shapes = ShapesDataset(size, seed=seed, layout=layout)
        self.seed, self.mix, self.i2t_phrasing = int(seed), mix, i2t_phrasing

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int):
        from djepa.multimodal.shapes import render

        scene, cap = self.shapes.item(i)
        kind, drop, tmpl = self.mix.draw(random.Random(self.seed * 2_000_003 + 17 * int(i) + 5))
        if kind == "i2t" and self.i2t_phrasing == "canonical":
            cap = scene.prompt.canonical
        return render(scene.objects, self.shapes.image_size), cap, kind, drop, tmpl


def collate(items, tok, pixel) -> "MMBatch":  # noqa: F821
    """Items of :class:`MMTrainSet` → one packed :class:`~djepa.multimodal.mm_sequence.MMBatch`."""
    from djepa.multimodal import mm_sequence as S

    images = torch.stack([it[0] for it in items])
    tokens = pixel.encode(images).float()
    grid = tuple(pixel.grid)
    rows = []
    for (img, cap, kind, drop, tmpl), x in zip(items, tokens):
        if kind == "t2i":
            rows.append(S.t2i_example(tok, cap, x, grid, template=S.DRAW_TEMPLATES[tmpl % len(S.DRAW_TEMPLATES)],
                                      drop_text=drop))
        elif kind == "i2t":
            rows.append(S.i2t_example(tok, cap, x, grid, question=S.ASK_TEMPLATES[tmpl % len(S.ASK_TEMPLATES)]))
        else:
            rows.append(S.text_example(tok, cap))
    return S.pack(rows, pixel.token_dim)


def build_model_config(cfg: MMTrainConfig, tok, pixel):
    """The :class:`~djepa.multimodal.mm_model.MMConfig` of ``cfg`` for tokenizer ``tok``."""
    from djepa.multimodal.mm_model import MMConfig

    loss = LossConfig(kind=cfg.loss, mlp_depth=cfg.mlp_depth, mlp_width=cfg.mlp_width,
                      prediction_weight=cfg.prediction_weight, diffusion_batch_mul=4)
    return MMConfig(vocab_size=tok.vocab_size, token_dim=pixel.token_dim, image_grid=tuple(pixel.grid),
                    encoder_dim=cfg.encoder_dim, encoder_depth=cfg.encoder_depth, encoder_heads=cfg.encoder_heads,
                    predictor_dim=cfg.predictor_dim, predictor_depth=cfg.predictor_depth,
                    predictor_heads=cfg.predictor_heads, loss=loss, image_weight=cfg.image_weight,
                    mask_ratio_min=cfg.mask_ratio_min, mask_ratio_std=cfg.mask_ratio_std,
                    rope_theta=cfg.rope_theta, image_pos_embed=cfg.image_pos_embed,
                    tokenizer_size=len(tok.model_proto), tokenizer_sha256=tok.sha256)


def load_tokenizer_for_training(cfg: MMTrainConfig):
    """``--tokenizer`` read, or one trained on the training captions; a resumed run reuses the
    run folder's ``tokenizer.model``."""
    from djepa.multimodal.mm_tokenizer import MODEL_FILE, MMTokenizer, default_corpus, train_sentencepiece

    if cfg.tokenizer:
        return MMTokenizer.from_file(cfg.tokenizer)
    saved = Path(cfg.train.output_dir) / MODEL_FILE
    if saved.is_file():
        return MMTokenizer.from_file(saved)
    return MMTokenizer(train_sentencepiece(default_corpus(), cfg.vocab_size))


@one_writer("cfg.train")
def run(cfg: MMTrainConfig) -> int:
    """Train with ``cfg``; EMA weights exported to ``OUTPUT/pretrained``.

    Returns:
        0 when finished, 130 when SIGINT/SIGTERM stopped it (a checkpoint was written).

    Raises:
        UserError / ValueError / FileNotFoundError: bad flags, tokenizer or run folder (one line).
    """
    from djepa.core.config import SamplerConfig, config_to_dict
    from djepa.core.train import train
    from djepa.image.tokenizer import PixelTokenizer
    from djepa.multimodal import shapes
    from djepa.multimodal.mm_model import MMModel
    from djepa.multimodal.mm_sample import MMPreview
    from djepa.multimodal.mm_sequence import ExampleMix
    from djepa.multimodal.mm_tokenizer import MODEL_FILE

    if shapes.DEFAULT_IMAGE_SIZE % cfg.patch_size:
        raise UserError(f"image size {shapes.DEFAULT_IMAGE_SIZE} is not divisible by --patch-size {cfg.patch_size}")
    try:
        mix = ExampleMix(cfg.t2i_prob, cfg.i2t_prob, cfg.text_prob, cfg.text_drop_prob)
    except ValueError as e:
        raise UserError(str(e)) from None
    tok = load_tokenizer_for_training(cfg)
    pixel = PixelTokenizer(3, shapes.DEFAULT_IMAGE_SIZE, cfg.patch_size)
    model_cfg = build_model_config(cfg, tok, pixel)
    torch.manual_seed(cfg.train.seed)
    model = MMModel(model_cfg, tok.model_proto)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_rank_zero():
        atomic_write_bytes(out / MODEL_FILE, tok.model_proto)
    dataset = MMTrainSet(cfg.num_scenes, cfg.train.seed, mix, cfg.layout, cfg.i2t_phrasing)
    tok_info = dict(tok.describe(), modality=MODALITY, image_tokenizer=pixel.to_config(),
                    shapes_split_version=shapes.SPLIT_VERSION)
    data_info = dict(dataset="shapes", num_scenes=cfg.num_scenes, image_size=shapes.DEFAULT_IMAGE_SIZE,
                     mix=dict(t2i=mix.t2i, i2t=mix.i2t, text=mix.text, text_drop_prob=mix.text_drop_prob),
                     i2t_phrasing=cfg.i2t_phrasing)

    def prepare_batch(batch, device):
        return {"tokens": batch.to(device)}

    preview = MMPreview(pixel, [c for _, c in shapes.eval_prompts("seen", 6)],
                        SamplerConfig(num_ar_steps=cfg.sample_ar_steps, cfg_scale=cfg.sample_cfg,
                                      num_denoise_steps=25))
    n_params = sum(p.numel() for p in model.parameters())
    if is_rank_zero():
        print(f"mm-train: {n_params / 1e6:.2f} M parameters; tokenizer {tok.vocab_size} pieces "
              f"(sha256 {tok.sha256[:12]}); image grid {pixel.grid} × {pixel.token_dim}")
    result = train(model, dataset, cfg.train, prepare_batch=prepare_batch,
                   preview=preview if cfg.train.sample_every else None,
                   collate_fn=lambda items: collate(items, tok, pixel),
                   config_to_save={"mm": flat_dict(cfg), "model": config_to_dict(model_cfg),
                                   "tokenizer": tok_info, "data": data_info},
                   must_match=("model", "tokenizer", "data"))
    if result.interrupted:
        if is_rank_zero():
            print(f"mm-train: interrupted at step {result.step}; checkpoint written; run the same "
                  f"command to resume", file=sys.stderr)
        return 130
    if is_rank_zero():
        export = out / "pretrained"
        if export.is_dir():
            atomic_write_text(export / "tokenizer.json", json.dumps(tok_info, indent=2) + "\n")
        print(f"mm-train: done at step {result.step}; EMA weights in {export}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``mm-train``."""
    return run_main("mm-train", lambda: run(with_cpu_speed(parse(MMTrainConfig, argv, prog="mm-train"))))


if __name__ == "__main__":
    raise SystemExit(main())
