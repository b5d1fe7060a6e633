"""Latent-space image tokenizers: a frozen VAE + scale/shift + patchify (paper §3.1, §4.1, App. C;
FIDELITY.md "Latents").

D-JEPA (like MAR) models ImageNet images as the latents of a KL-regularised VAE: a 256×256 image
becomes a ``16 × 16 × 16`` latent (KL-16), each latent pixel one token (``p = 1``) — or ``p × p``
latent patches with ``D_tok = C_lat · p²``. :class:`VAETokenizer` implements the
:class:`~djepa.core.tokenizer.Tokenizer` protocol (kind ``"vae"``) on top of a latent autoencoder:

``encode``: images ``[0, 1]`` → the autoencoder's input range (``2v − 1`` for KL VAEs, unchanged for
TAESD) → posterior moments ``(mean, logvar)`` → ``z`` = mean (default) or a posterior sample
``mean + exp(logvar / 2) · ε`` → ``(z − shift) · scale`` → patchify (MAR layout: row-major
patches, ``(channel, row, col)`` inside a token, exactly :class:`PixelTokenizer`'s order).
``decode`` undoes each step: unpatchify → ``tokens / scale + shift`` → decoder → ``[0, 1]``.

The autoencoder always runs in float32 with autocast disabled (MAR keeps its VAE in fp32 while
the generator trains in bf16), under ``torch.no_grad``; it is moved to the input's device on
first use. Deterministic encoders (TAESD family) have no posterior variance: their ``logvar`` is
``−inf`` (:data:`DETERMINISTIC_LOGVAR`), so ``exp(logvar / 2) = 0`` and "sampling" returns the
mean exactly.

Autoencoders are named by a spec string (:func:`load_vae`, the ``--vae`` flag):

* ``diffusers:PATH`` — ``diffusers.AutoencoderKL.from_pretrained(PATH)`` (local files only; a
  pipeline folder with a ``vae/`` sub-folder works too); any number of latent channels; default
  scale / shift = the config's ``scaling_factor`` / ``shift_factor`` (``None`` → 0).
* ``kl16:PATH`` — MAR's LDM-format KL-16 checkpoint (:mod:`djepa.image.kl16`); default scale
  0.2325, shift 0.
* ``taesd:DIR`` — a TAESD-family tiny autoencoder (:mod:`djepa.image.taesd`, e.g. TAEF2 with 32
  channels); default scale 1, shift 0 (measure yours with ``image-compute-scale``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from djepa.core.tokenizer import register_tokenizer

__all__ = [
    "DETERMINISTIC_LOGVAR",
    "VAE_KINDS",
    "DiffusersKLAutoencoder",
    "LatentAutoencoder",
    "TAESDAutoencoder",
    "VAETokenizer",
    "load_autoencoder",
    "load_vae",
    "parse_vae_spec",
    "vae_tokenizer_from_description",
]

VAE_KINDS = ("diffusers", "kl16", "taesd")
DETERMINISTIC_LOGVAR = float("-inf")


class LatentAutoencoder(nn.Module):
    """What :class:`VAETokenizer` needs from an autoencoder (subclasses wrap the real model).

    Attributes:
        latent_channels: ``C_lat``.
        downsample: spatial stride ``f`` (latent side = image side / f).
        input_range: pixel range the network expects, ``(−1, 1)`` or ``(0, 1)``.
        deterministic: ``True`` when the encoder has no posterior variance.
        default_scale, default_shift: the latent normalisation that comes with the weights.
    """

    latent_channels: int
    downsample: int
    input_range: tuple[float, float]
    deterministic: bool
    default_scale: float | list[float] = 1.0
    default_shift: float | list[float] = 0.0

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, 3, H, W]`` fp32 in :attr:`input_range` → ``(mean, logvar)``, each
        ``[B, C_lat, H/f, W/f]`` fp32."""
        raise NotImplementedError

    def decode_latents(self, z: Tensor) -> Tensor:
        """``z [B, C_lat, h, w]`` (raw, unscaled) → images ``[B, 3, h·f, w·f]`` in :attr:`input_range`
        (not clamped)."""
        raise NotImplementedError


class DiffusersKLAutoencoder(LatentAutoencoder):
    """A diffusers ``AutoencoderKL`` (also MAR's KL-16 after key mapping); input ``[−1, 1]``;
    moments from ``latent_dist`` (``logvar`` clamped to ``[−30, 20]`` as in LDM)."""

    input_range = (-1.0, 1.0)
    deterministic = False

    def __init__(self, vae: nn.Module, default_scale: float | None = None, default_shift: float | None = None):
        super().__init__()
        self.vae = vae.float().eval().requires_grad_(False)
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.default_scale = float(cfg.scaling_factor if default_scale is None else default_scale)
        shift = cfg.shift_factor if default_shift is None else default_shift
        self.default_shift = float(shift or 0.0)

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar

    def decode_latents(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample


class TAESDAutoencoder(LatentAutoencoder):
    """A TAESD-family :class:`~djepa.image.taesd.TinyAutoencoder`; input ``[0, 1]``;
    deterministic (``logvar = −inf``)."""

    input_range = (0.0, 1.0)
    deterministic = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.float().eval().requires_grad_(False)
        self.latent_channels = int(model.latent_channels)
        self.downsample = int(model.downsample)

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.model.encode(x)
        return mean, torch.full_like(mean, DETERMINISTIC_LOGVAR)

    def decode_latents(self, z: Tensor) -> Tensor:
        return self.model.decode(z)


# ----------------------------------------------------------------------------------------------
# loading


def parse_vae_spec(spec: str) -> tuple[str, str]:
    """``"kind:PATH"`` → ``(kind, PATH)``.

    Raises:
        ValueError: no ``:`` or an unknown kind (the message lists the known ones).
    """
    kind, sep, path = spec.partition(":")
    if not sep or kind not in VAE_KINDS or not path:
        raise ValueError(f"bad VAE spec {spec!r}: expected one of "
                         f"{', '.join(k + ':PATH' for k in VAE_KINDS)}")
    return kind, path


def _absolute_spec(spec: str) -> str:
    kind, path = parse_vae_spec(spec)
    return f"{kind}:{Path(path).expanduser().resolve()}"


def load_autoencoder(spec: str, kl16_config: dict | None = None) -> LatentAutoencoder:
    """Load the autoencoder named by ``spec`` (see the module docstring), fp32, eval, frozen.

    Args:
        spec: ``diffusers:PATH``, ``kl16:PATH`` or ``taesd:DIR``.
        kl16_config: architecture of a ``kl16`` checkpoint (:class:`~djepa.image.kl16.KL16Config`
            fields; default MAR's KL-16).

    Raises:
        ValueError: bad spec / weights layout. FileNotFoundError: missing path.
    """
    kind, path = parse_vae_spec(spec)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"VAE path {p} (from --vae {spec}) does not exist")
    if kind == "taesd":
        from djepa.image.taesd import load_taesd

        return TAESDAutoencoder(load_taesd(p))
    if kind == "kl16":
        from djepa.image.kl16 import KL16Config, load_kl16

        cfg = KL16Config.from_dict(kl16_config)
        return DiffusersKLAutoencoder(load_kl16(p, cfg), default_scale=cfg.scale, default_shift=cfg.shift)
    from diffusers import AutoencoderKL

    sub = "vae" if not (p / "config.json").is_file() and (p / "vae" / "config.json").is_file() else None
    if not (p / (sub or "") / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not a diffusers AutoencoderKL folder (no config.json)")
    vae = AutoencoderKL.from_pretrained(str(p), subfolder=sub, local_files_only=True, torch_dtype=torch.float32)
    return DiffusersKLAutoencoder(vae)


def load_vae(spec: str, image_size: int | tuple[int, int], patch_size: int = 1,
             scale: float | Sequence[float] | None = None, shift: float | Sequence[float] | None = None,
             sample_posterior: bool = False, kl16_config: dict | None = None) -> VAETokenizer:
    """A :class:`VAETokenizer` for the autoencoder ``spec`` (``scale`` / ``shift`` ``None`` = the
    autoencoder's defaults). Errors as :func:`load_autoencoder` and :class:`VAETokenizer`."""
    ae = load_autoencoder(spec, kl16_config=kl16_config)
    return VAETokenizer(ae, image_size, patch_size, scale=scale, shift=shift,
                        sample_posterior=sample_posterior, spec=_absolute_spec(spec),
                        kl16_config=kl16_config)


def vae_tokenizer_from_description(info: dict) -> VAETokenizer:
    """Rebuild the tokenizer recorded by :meth:`VAETokenizer.describe` (``tokenizer.json``).

    Raises:
        KeyError: a missing field; plus :func:`load_vae`'s errors (e.g. the VAE weights moved).
    """
    return load_vae(info["vae"], tuple(info["image_size"]) if isinstance(info["image_size"], list)
                    else info["image_size"], info["patch_size"], scale=info["scale"], shift=info["shift"],
                    kl16_config=info.get("kl16_config"))


# ----------------------------------------------------------------------------------------------
# tokenizer


def _as_channel_tensor(v: float | Sequence[float], c: int, name: str) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
    if t.numel() not in (1, c):
        raise ValueError(f"latent {name} must be a number or {c} per-channel values, got {t.numel()}")
    if name == "scale" and (t == 0).any():
        raise ValueError("latent scale must be non-zero")
    return t.expand(c).clone().reshape(1, c, 1, 1)


@register_tokenizer
class VAETokenizer:
    """Images ↔ tokens through a frozen latent autoencoder (module docstring; ``Tokenizer``
    protocol of :mod:`djepa.core.tokenizer`, kind ``"vae"``).

    Args:
        autoencoder: a :class:`LatentAutoencoder`.
        image_size: ``H = W`` in pixels, or ``(H, W)``; must be divisible by ``f · p``.
        patch_size: ``p`` latent pixels per token side (KL-16 / D-JEPA: 1).
        scale, shift: token = ``(z − shift) · scale``; a number or ``C_lat`` per-channel values;
            ``None`` = the autoencoder's defaults.
        sample_posterior: default of :meth:`encode`: sample the posterior (training) instead of
            taking its mean.
        spec: the ``--vae`` string (recorded by :meth:`describe`).
        kl16_config: recorded by :meth:`describe` for ``kl16`` specs.

    Raises:
        ValueError: sizes that do not divide, bad scale / shift.
    """

    kind: ClassVar[str] = "vae"

    def __init__(self, autoencoder: LatentAutoencoder, image_size: int | tuple[int, int], patch_size: int = 1,
                 scale: float | Sequence[float] | None = None, shift: float | Sequence[float] | None = None,
                 sample_posterior: bool = False, spec: str | None = None, kl16_config: dict | None = None):
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        f = autoencoder.downsample
        if patch_size < 1 or h < 1 or w < 1:
            raise ValueError(f"image size and patch size must be positive, got {(h, w)}, {patch_size}")
        if h % (f * patch_size) or w % (f * patch_size):
            raise ValueError(f"image size {h}×{w} is not divisible by VAE stride {f} × patch size {patch_size}")
        self.autoencoder = autoencoder
        self.height, self.width = int(h), int(w)
        self.patch_size = int(patch_size)
        self.latent_channels = int(autoencoder.latent_channels)
        self.downsample = int(f)
        c = self.latent_channels
        self.scale_value = autoencoder.default_scale if scale is None else scale
        self.shift_value = autoencoder.default_shift if shift is None else shift
        self._scale = _as_channel_tensor(self.scale_value, c, "scale")
        self._shift = _as_channel_tensor(self.shift_value, c, "shift")
        self.sample_posterior = bool(sample_posterior)
        self.spec = spec
        self.kl16_config = kl16_config

    # -- geometry ------------------------------------------------------------------------------
    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return (self.height, self.width)

    @property
    def latent_size(self) -> tuple[int, int]:
        """``(H / f, W / f)``."""
        return (self.height // self.downsample, self.width // self.downsample)

    @property
    def token_dim(self) -> int:
        """``D_tok = C_lat · p²``."""
        return self.latent_channels * self.patch_size**2

    @property
    def grid(self) -> tuple[int, int]:
        """``(H / (f·p), W / (f·p))``."""
        lh, lw = self.latent_size
        return (lh // self.patch_size, lw // self.patch_size)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def value_range(self) -> None:
        """Latents are unbounded: ``None`` (no sampler clipping)."""
        return None

    @property
    def deterministic(self) -> bool:
        """The encoder has no posterior variance (``logvar = −inf``)."""
        return bool(self.autoencoder.deterministic)

    # -- plumbing ------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> VAETokenizer:
        """Move the autoencoder (kept fp32) to ``device``; returns ``self``."""
        self.autoencoder.to(device=device, dtype=torch.float32)
        return self

    def _ready(self, device: torch.device) -> None:
        p = next(self.autoencoder.parameters(), None)
        if p is not None and p.device != device:
            self.autoencoder.to(device)

    # -- latents ↔ tokens ----------------------------------------------------------------------
    def latents_to_tokens(self, z: Tensor) -> Tensor:
        """Raw latents ``[B, C_lat, h, w]`` → tokens ``[B, N, C_lat·p²]`` fp32:
        ``(z − shift) · scale``, patchified (MAR's ``nchpwq → nhwcpq`` order)."""
        lh, lw = self.latent_size
        if z.dim() != 4 or tuple(z.shape[1:]) != (self.latent_channels, lh, lw):
            raise ValueError(f"expected latents [B, {self.latent_channels}, {lh}, {lw}], got {list(z.shape)}")
        z = z.float()
        x = (z - self._shift.to(z.device)) * self._scale.to(z.device)
        b, c, p = z.shape[0], self.latent_channels, self.patch_size
        gh, gw = self.grid
        x = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, gh * gw, c * p * p)

    def tokens_to_latents(self, tokens: Tensor) -> Tensor:
        """The exact inverse of :meth:`latents_to_tokens` (up to float rounding of
        ``/ scale``): tokens ``[B, N, D_tok]`` → raw latents ``[B, C_lat, h, w]`` fp32."""
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(f"expected tokens [B, {self.num_tokens}, {self.token_dim}], got {list(tokens.shape)}")
        b, c, p = tokens.shape[0], self.latent_channels, self.patch_size
        gh, gw = self.grid
        x = tokens.float().reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(b, c, gh * p, gw * p)
        return x / self._scale.to(x.device) + self._shift.to(x.device)

    @staticmethod
    def sample_latents(mean: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A posterior sample ``mean + exp(logvar / 2) · ε``, ``ε ~ N(0, I)`` (``generator`` on
        ``mean``'s device, or the global RNG). ``logvar = −inf`` gives ``mean`` exactly."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def moments_to_tokens(self, moments: Tensor, sample: bool = True,
                          generator: torch.Generator | None = None) -> Tensor:
        """Cached posterior moments → tokens (training on cached latents, FIDELITY.md "Latents").

        Args:
            moments: ``[B, 2·C_lat, h, w]`` float, ``cat(mean, logvar)`` on channels (MAR's cache).
            sample: draw ``z`` from the posterior (default, as MAR trains) or take the mean.
            generator: RNG of ``ε``.

        Returns:
            ``[B, N, D_tok]`` fp32.
        """
        mean, logvar = moments.float().chunk(2, dim=1)
        z = self.sample_latents(mean, logvar, generator) if sample else mean
        return self.latents_to_tokens(z)

    # -- images ↔ latents ----------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, self.height, self.width):
            raise ValueError(f"expected images [B, 3, {self.height}, {self.width}], got {list(images.shape)}")

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` → posterior ``(mean, logvar)``, each
        ``[B, C_lat, H/f, W/f]`` fp32 (raw latent space: no scale / shift). fp32, autocast off,
        no grad. ``logvar = −inf`` for deterministic encoders.

        Raises:
            ValueError: wrong image shape.
        """
        self._check_images(images)
        self._ready(images.device)
        lo, hi = self.autoencoder.input_range
        with torch.no_grad(), torch.autocast(device_type=images.device.type, enabled=False):
            x = images.float() * (hi - lo) + lo
            mean, logvar = self.autoencoder.moments(x)
        return mean.float(), logvar.float()

    def encode(self, images: Tensor, sample: bool | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in ``[0, 1]`` → tokens ``[B, N, C_lat·p²]`` fp32.

        Args:
            sample: sample the posterior (``None`` = the ``sample_posterior`` default).
            generator: RNG of the posterior sample.

        Raises:
            ValueError: wrong image shape.
        """
        mean, logvar = self.encode_moments(images)
        use_sample = self.sample_posterior if sample is None else sample
        z = self.sample_latents(mean, logvar, generator) if use_sample else mean
        return self.latents_to_tokens(z)

    def decode_latents(self, z: Tensor, clamp: bool = True) -> Tensor:
        """Raw latents ``[B, C_lat, h, w]`` → images ``[B, 3, H, W]`` fp32 in ``[0, 1]`` (clamped
        unless ``clamp=False``); fp32, autocast off, no grad."""
        self._ready(z.device)
        lo, hi = self.autoencoder.input_range
        with torch.no_grad(), torch.autocast(device_type=z.device.type, enabled=False):
            x = self.autoencoder.decode_latents(z.float())
        x = (x.float() - lo) / (hi - lo)
        return x.clamp(0.0, 1.0) if clamp else x

    def decode(self, tokens: Tensor, clamp: bool = True) -> Tensor:
        """Tokens ``[B, N, D_tok]`` → images ``[B, 3, H, W]`` fp32 in ``[0, 1]``: unpatchify,
        ``/ scale + shift``, decoder.

        Raises:
            ValueError: wrong ``N`` or ``D_tok``.
        """
        return self.decode_latents(self.tokens_to_latents(tokens), clamp=clamp)

    # -- description ---------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-able record (``tokenizer.json``) from which :func:`vae_tokenizer_from_description`
        rebuilds this tokenizer."""

        def plain(v):
            if isinstance(v, (int, float)):
                return float(v)
            return [float(x) for x in v]

        return dict(kind="vae", vae=self.spec, kl16_config=self.kl16_config,
                    image_size=self.height if self.height == self.width else [self.height, self.width],
                    patch_size=self.patch_size, scale=plain(self.scale_value), shift=plain(self.shift_value),
                    latent_channels=self.latent_channels, downsample=self.downsample,
                    deterministic=self.deterministic, channels=3, value_range=None)

    def to_config(self) -> dict[str, Any]:
        """The :class:`~djepa.core.tokenizer.Tokenizer` record: :meth:`describe`."""
        return self.describe()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VAETokenizer:
        """Rebuild from :meth:`to_config` (loads the VAE weights the record names; errors as
        :func:`vae_tokenizer_from_description`)."""
        return vae_tokenizer_from_description(dict(config))

    def __repr__(self) -> str:
        return (f"VAETokenizer(spec={self.spec!r}, image_size={self.image_size}, patch_size={self.patch_size}, "
                f"latent={self.latent_channels}×{self.latent_size}, scale={self.scale_value}, shift={self.shift_value})")

