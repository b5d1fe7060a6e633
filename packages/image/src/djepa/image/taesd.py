"""TAESD-family tiny autoencoders (Ollin Boer Bohan, github.com/madebyollin/taesd), written here.

A TAESD is a small *deterministic* convolutional encoder / decoder distilled to reproduce the
latent space of a large VAE (SD, SDXL, SD3, FLUX.1, FLUX.2 …) at 1/8 resolution; images are in
``[0, 1]`` (no ``[-1, 1]`` mapping). The module layout (indices of the ``nn.Sequential`` are the
state-dict keys of the published ``*_encoder.pth`` / ``*_decoder.pth`` files)::

    Encoder: 0 conv(3→64) · 1 Block · 2 conv(s2, no bias) · 3-5 Block×3 · 6 conv(s2) · 7-9 Block×3
             · 10 conv(s2) · 11-13 Block×3 · 14 conv(64→C_lat)
    Decoder: 0 Clamp (3·tanh(x/3)) · 1 conv(C_lat→64) · 2 ReLU · 3-5 Block×3 · 6 Upsample×2
             · 7 conv(no bias) · 8-10 Block×3 · 11 Upsample · 12 conv · 13-15 Block×3
             · 16 Upsample · 17 conv · 18 Block · 19 conv(64→3)

    Block(x) = ReLU(conv3(ReLU(conv3(ReLU(conv3(x'))))) + x'),  x' = x + pool(x) if mid-block GN
    pool     = conv1×1(64→256, no bias) · GroupNorm(4, 256) · ReLU · conv1×1(256→64, no bias)

All convs are 3×3 with padding 1. The ``pool`` branch ("mid-block GroupNorm", TAEF2 / FLUX.2
variant) exists only in the blocks whose weights have ``pool.*`` keys (TAEF2: the three
lowest-resolution blocks of each side); it is detected from the state dict, as is ``C_lat``
(TAEF2: 32). diffusers' ``AutoencoderTiny`` cannot express the ``pool`` branch, hence this module.

Accepted weight formats (:func:`load_taesd`): the upstream pair ``*encoder*.{pth,safetensors}`` +
``*decoder*.{pth,safetensors}`` (keys ``0.weight``, ``1.conv.0.weight`` …), or one diffusers-style
``AutoencoderTiny`` file with ``encoder.layers.{i}.*`` / ``decoder.layers.{i}.*`` keys (the
decoder's index is one less there: diffusers applies the Clamp outside ``layers``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["TAESDBlock", "TinyAutoencoder", "load_taesd", "taesd_decoder", "taesd_encoder"]


def _conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class _Clamp(nn.Module):
    """Soft clamp of the decoder input to ``(−3, 3)``: ``3 · tanh(x / 3)``."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x / 3) * 3


class TAESDBlock(nn.Module):
    """Residual block ``ReLU(conv(ReLU(conv(ReLU(conv(x'))))) + skip(x'))`` with the optional
    mid-block GroupNorm branch ``x' = x + pool(x)`` (see the module docstring)."""

    def __init__(self, n_in: int, n_out: int, midblock_gn: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n_in, n_out), nn.ReLU(), _conv(n_out, n_out), nn.ReLU(),
                                  _conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if midblock_gn:
            width = 4 * n_in
            self.pool = nn.Sequential(nn.Conv2d(n_in, width, 1, bias=False), nn.GroupNorm(4, width),
                                      nn.ReLU(), nn.Conv2d(width, n_in, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def taesd_encoder(latent_channels: int, midblock_gn: frozenset[int] = frozenset()) -> nn.Sequential:
    """The 8× TAESD encoder; ``midblock_gn`` = indices of the blocks with a ``pool`` branch."""
    layers: list[nn.Module] = [_conv(3, 64), TAESDBlock(64, 64, 1 in midblock_gn)]
    for _ in range(3):
        layers.append(_conv(64, 64, stride=2, bias=False))
        for _ in range(3):
            layers.append(TAESDBlock(64, 64, len(layers) in midblock_gn))
    layers.append(_conv(64, latent_channels))
    return nn.Sequential(*layers)


def taesd_decoder(latent_channels: int, midblock_gn: frozenset[int] = frozenset()) -> nn.Sequential:
    """The 8× TAESD decoder; ``midblock_gn`` = indices of the blocks with a ``pool`` branch."""
    layers: list[nn.Module] = [_Clamp(), _conv(latent_channels, 64), nn.ReLU()]
    for _ in range(3):
        for _ in range(3):
            layers.append(TAESDBlock(64, 64, len(layers) in midblock_gn))
        layers += [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]
    layers += [TAESDBlock(64, 64, len(layers) in midblock_gn), _conv(64, 3)]
    return nn.Sequential(*layers)


def _pool_indices(sd: dict[str, Tensor]) -> frozenset[int]:
    return frozenset(int(k.split(".", 1)[0]) for k in sd if re.fullmatch(r"\d+\.pool\..+", k))


class TinyAutoencoder(nn.Module):
    """A deterministic TAESD-family autoencoder (encoder + decoder, 8× downsampling).

    ``encode``: ``[B, 3, H, W]`` in ``[0, 1]`` → latents ``[B, C_lat, H/8, W/8]``;
    ``decode``: latents → ``[B, 3, H, W]`` (≈ ``[0, 1]``, not clamped). ``H, W`` must be
    multiples of 8.
    """

    downsample = 8

    def __init__(self, encoder_sd: dict[str, Tensor], decoder_sd: dict[str, Tensor]) -> None:
        super().__init__()
        try:
            c_enc = int(encoder_sd["14.weight"].shape[0])
            c_dec = int(decoder_sd["1.weight"].shape[1])
        except KeyError as e:
            raise ValueError(f"not a TAESD (8×) state dict: missing {e}") from None
        if c_enc != c_dec:
            raise ValueError(f"TAESD encoder has {c_enc} latent channels but the decoder {c_dec}")
        self.latent_channels = c_enc
        self.encoder = taesd_encoder(c_enc, _pool_indices(encoder_sd))
        self.decoder = taesd_decoder(c_dec, _pool_indices(decoder_sd))
        self.encoder.load_state_dict({k: v.float() for k, v in encoder_sd.items()}, strict=True)
        self.decoder.load_state_dict({k: v.float() for k, v in decoder_sd.items()}, strict=True)

    def encode(self, images: Tensor) -> Tensor:
        return self.encoder(images)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents)


def _load_any(path: Path) -> dict[str, Tensor]:
    from djepa.image.kl16 import read_state_dict

    return read_state_dict(path)


def load_taesd(path: str | os.PathLike) -> TinyAutoencoder:
    """Load a TAESD-family autoencoder (fp32, eval mode, no gradients).

    Args:
        path: a folder holding ``*encoder*.{pth,safetensors}`` and ``*decoder*.{pth,safetensors}``
            (upstream format, e.g. ``taef2_encoder.pth`` / ``taef2_decoder.pth``: fp16 state
            dicts, loaded with ``torch.load(weights_only=True)``), or a folder / file with one
            diffusers-style ``AutoencoderTiny`` state dict (``encoder.layers.*`` keys).

    Raises:
        FileNotFoundError: nothing loadable there (the message lists what was looked for).
        ValueError: ambiguous folder (several encoders) or a foreign layout.
        RuntimeError: shapes that do not fit the TAESD layout (from ``load_state_dict``).
    """
    path = Path(path)
    exts = (".pth", ".pt", ".safetensors")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in exts and p.is_file())
        enc = [p for p in files if "encoder" in p.name]
        dec = [p for p in files if "decoder" in p.name]
        if len(enc) > 1 or len(dec) > 1:
            raise ValueError(f"TAESD folder {path} holds several encoders/decoders: {[p.name for p in enc + dec]}")
        if enc and dec:
            return TinyAutoencoder(_load_any(enc[0]), _load_any(dec[0])).eval().requires_grad_(False)
        single = [p for p in files if p not in enc + dec]
        if len(single) != 1:
            raise FileNotFoundError(
                f"TAESD folder {path}: expected *encoder*.pth + *decoder*.pth (or .safetensors), or "
                f"one diffusers AutoencoderTiny weights file; found {[p.name for p in files]}")
        path = single[0]
    sd = _load_any(path)
    enc_sd, dec_sd = {}, {}
    for k, v in sd.items():
        m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)", k)
        if not m:
            raise ValueError(f"{path}: key {k!r} is not a diffusers AutoencoderTiny key (encoder.layers.N.*)")
        part, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        (enc_sd if part == "encoder" else dec_sd)[f"{idx + (part == 'decoder')}.{rest}"] = v
    return TinyAutoencoder(enc_sd, dec_sd).eval().requires_grad_(False)
