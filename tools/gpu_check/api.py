"""Adapters: the only place where ``tools/gpu_check`` touches djepa's public API.

The model, sampler and checkpoint APIs are still moving (a batch type, a condition protocol,
per-row seeds in ``generate``); when one changes, fix the matching function here and every check
keeps working. Each adapter says which library call it stands for.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tools" / "bench"


# ------------------------------------------------------------------------------- configs
def tiny_config(**overrides: Any):
    """A tiny :class:`djepa.core.config.DJEPAConfig` (``preset("tiny")``: width 64, 2 + 2
    blocks, 4 buffer tokens, no dropout) on a 4×4 grid of 4-channel tokens, 10 classes.

    The equality checks pass ``label_drop_prob=0``: label dropout draws from the *device's*
    global RNG, which differs between CPU and CUDA; everything else random takes a generator.
    """
    from djepa.core.config import preset

    kw: dict[str, Any] = dict(token_dim=4, grid=(4, 4), num_classes=10)
    kw.update(overrides)
    return preset("tiny", **kw)


def preset_config(name: str, **overrides: Any):
    """``preset(name)`` at the benchmark's ImageNet-256 token layout (16×16 tokens of 16
    channels, 1000 classes: KL-16 latents, paper Table 4), via ``tools/bench/common.py``."""
    return bench_module("common").build_config(name, **overrides)


def sampler_config(*, ar_steps: int, denoise_steps: int, cfg_scale: float,
                   temperature: float = 1.0):
    """:class:`djepa.core.config.SamplerConfig` (Algorithm 1: K, S, cfg, τ)."""
    from djepa.core.config import SamplerConfig

    return SamplerConfig(num_ar_steps=ar_steps, num_denoise_steps=denoise_steps,
                         cfg_scale=cfg_scale, temperature=temperature)


# ------------------------------------------------------------------------------- model
def build_model(cfg, *, seed: int = 0, device: str | torch.device = "cpu"):
    """``DJEPA(cfg)`` initialised under ``torch.manual_seed(seed)`` on CPU, then moved."""
    from djepa.core.model import DJEPA

    torch.manual_seed(seed)
    return DJEPA(cfg).to(device)


def randomize_zero_params(model, std: float = 0.02) -> None:
    """Give the zero-initialised AdaLN / output layers of the denoising MLP random values, so
    that sampled tokens depend on the network (as ``tools/bench/sample.py`` does)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.token_loss.net.parameters():
            if p.ndim >= 2 and float(p.abs().max()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def train_forward(model, tokens, labels, *, target_model, generator):
    """One training forward: ``model(tokens [B, N, D] or a TokenBatch, labels [B] or a
    SequenceInput (the condition), target_model=EMA model, generator=CPU generator)`` → dict of
    the loss parts (``DJEPAOutput`` fields; ``loss`` first)."""
    out = model(tokens, labels, target_model=target_model, generator=generator)
    return out._asdict() if hasattr(out, "_asdict") else {"loss": out}


def features(model, tokens, labels, visible_idx):
    """φ then γ in eval mode: ``z [B, N, P]`` (``model.features``) for a deterministic forward."""
    cond = model.condition(labels, tokens.shape[0])
    return model.features(tokens, cond, visible_idx)


def generate(model, labels, config, *, generator, clip_range=(-1.0, 1.0)):
    """Algorithm 1 (:func:`djepa.core.sampler.generate`) → ``[B, N, D] float32`` tokens."""
    from djepa.core.sampler import generate as _generate

    return _generate(model, labels, config, generator=generator, clip_range=clip_range)


def save_pretrained(model, directory) -> None:
    model.save_pretrained(directory)


def from_pretrained(directory, device):
    """``DJEPA.from_pretrained(directory, map_location=device)`` (safetensors, strict)."""
    from djepa.core.model import DJEPA

    return DJEPA.from_pretrained(directory, map_location=device)


def attention_kernel(q, k, v, key_padding_mask, kernel: str, attn_mask=None):
    """:func:`djepa.core.attention.attention_kernel` (``key_padding_mask [B, Lk] bool, True =
    padding``; ``attn_mask`` bool ``[Lq, Lk]`` / ``[B, Lq, Lk]`` / ``[B, 1|H, Lq, Lk]``, True =
    may attend; with ``kernel="xformers"`` it becomes the kernel's ``attn_bias`` through
    ``xformers_bias``), no dropout."""
    from djepa.core.attention import attention_kernel as _kernel

    return _kernel(q, k, v, key_padding_mask, 0.0, kernel, attn_mask)


def block_causal_mask(segment_ids, causal):
    """:func:`djepa.core.attention.block_causal_mask`: ``segment_ids [B, L]`` int
    (non-decreasing), ``causal [B, L]`` bool → ``[B, 1, L, L]`` bool, True = may attend."""
    from djepa.core.attention import block_causal_mask as _mask

    return _mask(segment_ids, causal)


# ------------------------------------------------------------------------------- batches, conditions
def line_config(**overrides: Any):
    """A tiny 1-D :class:`~djepa.core.config.DJEPAConfig` (``preset("tiny")``, width 64, 2 + 2
    blocks) on a line of 12 tokens of 3 channels with 1-D RoPE (positions from the batch), a
    small denoising MLP; ``overrides`` set the condition (``condition="sequence"``,
    ``condition_dim``, ``joint_depth``) or ``num_classes`` (tests/core/test_batch.py and
    test_condition.py build the same)."""
    from djepa.core.config import preset

    kw: dict[str, Any] = dict(token_dim=3, grid=(12,), pos_embed="rope",
                              loss=dict(mlp_width=32, mlp_depth=1, diffusion_batch_mul=2))
    kw.update(overrides)
    return preset("tiny", **kw)


def perturb_params(model, std: float = 0.05, seed: int = 1234) -> None:
    """Add ``std``·N(0, 1) (CPU generator ``seed``) to every parameter, so that every one of
    them (the zero-initialised AdaLN and output layers too) matters to the result."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g).to(p.device, p.dtype))


def token_batch(tokens, lengths, maskable=None):
    """:meth:`djepa.core.batch.TokenBatch.from_lengths`: ``tokens [B, N, D]``, ``lengths [B]``
    (real tokens first, padding after), ``maskable [B, N] bool, True = may be masked /
    generated`` (None = every real token)."""
    from djepa.core.batch import TokenBatch

    return TokenBatch.from_lengths(tokens, lengths, maskable=maskable)


def batch_to(batch, device):
    """``TokenBatch.to(device)``."""
    return batch.to(device)


def sequence_input(values, padding=None):
    """:class:`djepa.core.condition.SequenceInput`: ``values [B, L, D_c]`` float, ``padding
    [B, L] bool, True = padding``."""
    from djepa.core.condition import SequenceInput

    return SequenceInput(values, padding)


def row_generators(seeds, device="cpu"):
    """:func:`djepa.core.rng.row_generators`: one ``torch.Generator`` per row on ``device``."""
    from djepa.core.rng import row_generators as _rows

    return _rows(seeds, device)


def generate_rows(model, condition, config, *, batch, generators, clip_range=None):
    """Algorithm 1 with one generator per row (:func:`djepa.core.sampler.generate` with
    ``batch=`` a :class:`TokenBatch` template and ``generators=``) → ``[B, N, D] float32``."""
    from djepa.core.sampler import generate as _generate

    return _generate(model, condition, config, batch=batch, generators=generators,
                     clip_range=clip_range)


def param_groups(model, weight_decay: float):
    from djepa.core.train.params import param_groups as _groups

    return _groups(model, weight_decay)


def ema(model, decay: float):
    from djepa.core.ema import EMA

    return EMA(model, decay=decay)


# ------------------------------------------------------------------------------- engine
def toy_dataset(n: int, *, num_tokens: int = 16, token_dim: int = 4):
    """``([n, N, D] float32, [n] int64)`` class-dependent tokens (``djepa.core.train.selftest``)."""
    from djepa.core.train.selftest import toy_dataset as _toy

    return _toy(n, num_tokens=num_tokens, token_dim=token_dim)


def train_config(**kw: Any):
    from djepa.core.train import TrainConfig

    return TrainConfig(**kw)


def train(model, dataset, cfg, *, step_callback):
    """:func:`djepa.core.train.train` (DeepSpeed engine); ``step_callback(step, losses, module,
    ema)`` after every step. Returns its ``TrainResult``."""
    from djepa.core.train import train as _train

    return _train(model, dataset, cfg, step_callback=step_callback)


# ------------------------------------------------------------------------------- CLIs
#: Modality CLIs: (check name, module with ``main(argv) -> int``). ``image-train`` has no
#: ``--device`` flag (DeepSpeed's accelerator decides: CUDA when present); the samplers do.
CLIS = {
    "image-train": "djepa.image.train",
    "image-sample": "djepa.image.sample",
    "image-inpaint": "djepa.image.inpaint",
}


# ------------------------------------------------------------------------------- bench
def bench_module(name: str):
    """A module of ``tools/bench`` (``common``, ``sample``, ``train_step``), reused as is."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import importlib

    return importlib.import_module(name)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clone_to(model, device):
    return copy.deepcopy(model).to(device)
