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
    """One training forward: ``model(tokens [B, N, D], labels [B], target_model=EMA model,
    generator=CPU generator)`` → dict of the loss parts (``DJEPAOutput`` fields; ``loss`` first)."""
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


def attention_kernel(q, k, v, key_padding_mask, kernel: str):
    """:func:`djepa.core.attention.attention_kernel` (``key_padding_mask [B, Lk] bool, True =
    padding``), no dropout."""
    from djepa.core.attention import attention_kernel as _kernel

    return _kernel(q, k, v, key_padding_mask, 0.0, kernel)


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
