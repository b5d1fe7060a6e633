"""MAR's KL-16 VAE (LDM format) on diffusers' ``AutoencoderKL`` (paper §4.1, App. C; FIDELITY.md
"Latents").

MAR (Li et al. 2024, ``models/vae.py``) and D-JEPA tokenise ImageNet with a KL-regularised
autoencoder in the layout of latent-diffusion (LDM, Rombach et al. 2022,
``ldm/modules/diffusionmodules/model.py``): ``ch = 128``, ``ch_mult = (1, 1, 2, 2, 4)`` (stride
16), two residual blocks per level, self-attention in the encoder's 16×16 level and in both
mid-blocks, ``z_channels = embed_dim = 16``, a ``1×1`` ``quant_conv`` ``2·16 → 2·16`` producing
the posterior moments ``(mean, logvar)`` and a ``1×1`` ``post_quant_conv`` ``16 → 16``. The
checkpoint is a ``torch.save`` dict whose ``"model"`` entry is that module's state dict.

Instead of re-implementing the network, the LDM state dict is renamed onto diffusers'
``AutoencoderKL`` (same computation: pre-norm SiLU ResNet blocks with GroupNorm(32, eps 1e-6),
asymmetric ``(0, 1, 0, 1)`` padding before the stride-2 downsampling convs, nearest ×2 then
conv upsampling, single-head attention with ``C^{-1/2}`` scaling). :func:`ldm_to_diffusers_vae`
is the renaming (and :func:`diffusers_to_ldm_vae` its exact inverse):

==========================================  ====================================================
LDM                                         diffusers
==========================================  ====================================================
``encoder.down.{i}.block.{j}.*``            ``encoder.down_blocks.{i}.resnets.{j}.*``
``encoder.down.{i}.attn.{j}.*``             ``encoder.down_blocks.{i}.attentions.{j}.*``
``encoder.down.{i}.downsample.conv``        ``encoder.down_blocks.{i}.downsamplers.0.conv``
``decoder.up.{i}.block.{j}.*``              ``decoder.up_blocks.{L-1-i}.resnets.{j}.*``
``decoder.up.{i}.attn.{j}.*``               ``decoder.up_blocks.{L-1-i}.attentions.{j}.*``
``decoder.up.{i}.upsample.conv``            ``decoder.up_blocks.{L-1-i}.upsamplers.0.conv``
``{enc,dec}.mid.block_{1,2}``               ``{enc,dec}.mid_block.resnets.{0,1}``
``{enc,dec}.mid.attn_1``                    ``{enc,dec}.mid_block.attentions.0``
``{enc,dec}.norm_out``                      ``{enc,dec}.conv_norm_out``
resnet ``nin_shortcut``                     resnet ``conv_shortcut`` (1×1)
attention ``norm / q / k / v / proj_out``   ``group_norm / to_q / to_k / to_v / to_out.0``
                                            (1×1 conv ``[C, C, 1, 1]`` ↔ linear ``[C, C]``)
``conv_in, conv_out, quant_conv, …``        unchanged
==========================================  ====================================================

(LDM's ``self.up`` is stored highest resolution first, diffusers' ``up_blocks`` lowest first,
hence ``L − 1 − i`` with ``L = len(ch_mult)``.) Training-only entries (``loss.*``: the LPIPS /
discriminator of the LDM trainer) are dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "KL16Config",
    "diffusers_to_ldm_vae",
    "kl16_diffusers_config",
    "ldm_to_diffusers_vae",
    "load_kl16",
    "read_state_dict",
]

KL16_SCALE = 0.2325  # MAR: 1 / std of KL-16 ImageNet latents (FIDELITY.md "Latents")


@dataclass(frozen=True)
class KL16Config:
    """Architecture of an LDM-format KL autoencoder (defaults: MAR's KL-16).

    Attributes:
        ch: base width (128).
        ch_mult: width multiplier per resolution level; ``len(ch_mult) − 1`` stride-2 stages
            (``(1, 1, 2, 2, 4)`` → stride 16).
        num_res_blocks: ResNet blocks per encoder level (the decoder has one more).
        embed_dim: latent channels (16).
        resolution: the nominal input side used only to place attention (256).
        encoder_attn_resolutions: encoder levels whose feature side ``resolution // 2**level``
            is listed get self-attention after every ResNet block (MAR: ``(16,)``).
        decoder_attn_resolutions: the same for the decoder (MAR: none).
        scale: default latent scale (MAR 0.2325).
        shift: default latent shift (0).
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    embed_dim: int = 16
    resolution: int = 256
    encoder_attn_resolutions: tuple[int, ...] = (16,)
    decoder_attn_resolutions: tuple[int, ...] = ()
    scale: float = KL16_SCALE
    shift: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> KL16Config:
        """Build from a (JSON) mapping; lists become tuples; unknown keys raise ``ValueError``."""
        if d is None:
            return cls()
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown KL-16 config keys {bad}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)


def kl16_diffusers_config(cfg: KL16Config) -> dict:
    """The ``AutoencoderKL(**config)`` keyword arguments equivalent to ``cfg``."""
    levels = range(cfg.num_levels)
    down = ["AttnDownEncoderBlock2D" if cfg.resolution // 2**i in cfg.encoder_attn_resolutions
            else "DownEncoderBlock2D" for i in levels]
    # diffusers' up_blocks run lowest resolution first: up block k is LDM level L-1-k
    up = ["AttnUpDecoderBlock2D" if cfg.resolution // 2 ** (cfg.num_levels - 1 - k) in cfg.decoder_attn_resolutions
          else "UpDecoderBlock2D" for k in levels]
    return dict(in_channels=3, out_channels=3, down_block_types=tuple(down), up_block_types=tuple(up),
                block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
                layers_per_block=cfg.num_res_blocks, act_fn="silu", latent_channels=cfg.embed_dim,
                norm_num_groups=32, sample_size=cfg.resolution, scaling_factor=cfg.scale,
                shift_factor=cfg.shift, use_quant_conv=True, use_post_quant_conv=True,
                mid_block_add_attention=True)


# ----------------------------------------------------------------------------------------------
# key mapping

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_INV = {v: k for k, v in _ATTN.items()}
_RESNET_INV = {v: k for k, v in _RESNET.items()}
_IGNORED_PREFIXES = ("loss.",)


def _rename_ldm_key(key: str, num_levels: int) -> tuple[str, bool]:
    """One LDM key → ``(diffusers key, is_attention_projection_weight)``; ``KeyError`` if unknown."""
    m = re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key)
    if m:
        return key, False
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        raise KeyError(key)
    part, rest = m.groups()

    m = re.fullmatch(r"(conv_in|conv_out)\.(weight|bias)", rest)
    if m:
        return key, False
    m = re.fullmatch(r"norm_out\.(weight|bias)", rest)
    if m:
        return f"{part}.conv_norm_out.{m.group(1)}", False
    m = re.fullmatch(r"mid\.block_([12])\.(\w+)\.(weight|bias)", rest)
    if m and m.group(2) in _RESNET:
        return f"{part}.mid_block.resnets.{int(m.group(1)) - 1}.{_RESNET[m.group(2)]}.{m.group(3)}", False
    m = re.fullmatch(r"mid\.attn_1\.(\w+)\.(weight|bias)", rest)
    if m and m.group(1) in _ATTN:
        return f"{part}.mid_block.attentions.0.{_ATTN[m.group(1)]}.{m.group(2)}", (
            m.group(1) != "norm" and m.group(2) == "weight")
    tag, blocks = ("down", "down_blocks") if part == "encoder" else ("up", "up_blocks")
    m = re.fullmatch(rf"{tag}\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(weight|bias)", rest)
    if m:
        level, kind, j, name, wb = m.groups()
        k = int(level) if part == "encoder" else num_levels - 1 - int(level)
        if kind == "block" and name in _RESNET:
            return f"{part}.{blocks}.{k}.resnets.{j}.{_RESNET[name]}.{wb}", False
        if kind == "attn" and name in _ATTN:
            return f"{part}.{blocks}.{k}.attentions.{j}.{_ATTN[name]}.{wb}", name != "norm" and wb == "weight"
        raise KeyError(key)
    m = re.fullmatch(rf"{tag}\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)", rest)
    if m:
        level, kind, wb = m.groups()
        if (part == "encoder") != (kind == "downsample"):
            raise KeyError(key)
        k = int(level) if part == "encoder" else num_levels - 1 - int(level)
        samplers = "downsamplers" if part == "encoder" else "upsamplers"
        return f"{part}.{blocks}.{k}.{samplers}.0.conv.{wb}", False
    raise KeyError(key)


def ldm_to_diffusers_vae(state_dict: dict[str, Tensor], num_levels: int) -> dict[str, Tensor]:
    """Rename an LDM-format KL-VAE state dict to diffusers ``AutoencoderKL`` keys (table in the
    module docstring); attention ``q / k / v / proj_out`` weights ``[C, C, 1, 1]`` become
    ``[C, C]``. Tensors are not copied.

    Args:
        state_dict: LDM keys (``encoder.down.0.block.0.norm1.weight`` …); ``loss.*`` entries
            are dropped.
        num_levels: ``len(ch_mult)`` (needed to reverse the decoder level order).

    Returns:
        The diffusers-keyed dict (same tensors, attention weights reshaped views).

    Raises:
        KeyError: a key that is neither an LDM VAE key nor ignorable (names it).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_IGNORED_PREFIXES):
            continue
        try:
            new, is_proj = _rename_ldm_key(key, num_levels)
        except KeyError:
            raise KeyError(f"unexpected key {key!r} in an LDM-format KL-VAE state dict") from None
        if is_proj and value.dim() == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    return out


def diffusers_to_ldm_vae(state_dict: dict[str, Tensor], num_levels: int) -> dict[str, Tensor]:
    """The exact inverse of :func:`ldm_to_diffusers_vae` (attention projections back to
    ``[C, C, 1, 1]``).

    Raises:
        KeyError: a key with no LDM counterpart.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new, is_proj = _rename_diffusers_key(key, num_levels)
        if is_proj and value.dim() == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[new] = value
    return out


def _rename_diffusers_key(key: str, num_levels: int) -> tuple[str, bool]:
    if re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", key):
        return key, False
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        raise KeyError(f"unexpected diffusers AutoencoderKL key {key!r}")
    part, rest = m.groups()
    if re.fullmatch(r"(conv_in|conv_out)\.(weight|bias)", rest):
        return key, False
    m = re.fullmatch(r"conv_norm_out\.(weight|bias)", rest)
    if m:
        return f"{part}.norm_out.{m.group(1)}", False
    m = re.fullmatch(r"mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", rest)
    if m and m.group(2) in _RESNET_INV:
        return f"{part}.mid.block_{int(m.group(1)) + 1}.{_RESNET_INV[m.group(2)]}.{m.group(3)}", False
    m = re.fullmatch(r"mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)", rest)
    if m and m.group(1) in _ATTN_INV:
        name = _ATTN_INV[m.group(1)]
        return f"{part}.mid.attn_1.{name}.{m.group(2)}", name != "norm" and m.group(2) == "weight"
    tag, blocks = ("down", "down_blocks") if part == "encoder" else ("up", "up_blocks")
    m = re.fullmatch(rf"{blocks}\.(\d+)\.(resnets|attentions)\.(\d+)\.(\w+(?:\.0)?)\.(weight|bias)", rest)
    if m:
        k, kind, j, name, wb = m.groups()
        level = int(k) if part == "encoder" else num_levels - 1 - int(k)
        if kind == "resnets" and name in _RESNET_INV:
            return f"{part}.{tag}.{level}.block.{j}.{_RESNET_INV[name]}.{wb}", False
        if kind == "attentions" and name in _ATTN_INV:
            ldm = _ATTN_INV[name]
            return f"{part}.{tag}.{level}.attn.{j}.{ldm}.{wb}", ldm != "norm" and wb == "weight"
    m = re.fullmatch(rf"{blocks}\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(weight|bias)", rest)
    if m:
        k, _, wb = m.groups()
        level = int(k) if part == "encoder" else num_levels - 1 - int(k)
        kind = "downsample" if part == "encoder" else "upsample"
        return f"{part}.{tag}.{level}.{kind}.conv.{wb}", False
    raise KeyError(f"unexpected diffusers AutoencoderKL key {key!r}")


# ----------------------------------------------------------------------------------------------
# loading


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``); a
    ``{"model": sd}`` / ``{"state_dict": sd}`` wrapper (MAR / LDM checkpoints) is unwrapped.

    Raises:
        FileNotFoundError: missing file.
        ValueError: the file holds no mapping of tensors, or is not readable.
        djepa.core.safe_load.UnsafeFileError: a pickle that needs code to load (never run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    from djepa.core.safe_load import torch_load

    obj = torch_load(path, map_location="cpu")  # weights_only=True; one-line refusal
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return obj


def load_kl16(path: str | os.PathLike, config: KL16Config | dict | None = None):
    """MAR's KL-16 checkpoint as a diffusers ``AutoencoderKL`` (fp32, eval mode).

    Args:
        path: ``.ckpt`` / ``.pth`` (``torch.save``, optionally ``{"model": sd}``) or
            ``.safetensors`` holding the LDM-format state dict.
        config: architecture (:class:`KL16Config` or its dict; default MAR's KL-16).

    Returns:
        ``diffusers.AutoencoderKL`` with the weights loaded strictly; its
        ``config.scaling_factor`` / ``shift_factor`` are ``config.scale`` / ``config.shift``.

    Raises:
        FileNotFoundError / ValueError: unreadable file; KeyError: foreign keys; RuntimeError:
        missing keys or shape mismatches (from ``load_state_dict``, naming them).
    """
    from diffusers import AutoencoderKL

    cfg = config if isinstance(config, KL16Config) else KL16Config.from_dict(config)
    sd = ldm_to_diffusers_vae(read_state_dict(path), cfg.num_levels)
    model = AutoencoderKL(**kl16_diffusers_config(cfg))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.float().eval().requires_grad_(False)
