"""Video VAE tokenizer: diffusers ``AutoencoderKLCogVideoX`` from a local folder (paper App. G.3:
the VideoVAE of Yang et al. 2024b, 4× time, 8× space), and a per-clip latent cache.

* The VAE is loaded with ``from_pretrained(folder, use_safetensors=True)`` — a local folder only
  (``config.json`` + ``diffusion_pytorch_model.safetensors``), never a hub id, never a pickle —
  and always runs in **fp32** (training precision never reaches it).
* Latent layout: ``encode`` maps ``[0, 1]`` frames to ``[−1, 1]``, takes the posterior
  (mean, or a sample with ``sample=True``), multiplies by the config's ``scaling_factor``
  (CogVideoX-2b: 1.15258426; ``latent_scale`` overrides it) and cuts ``pt × ph × pw`` latent
  cubes (:func:`djepa.video.tokenizer.patchify3d`). ``decode`` is the inverse.
* Token grid: :func:`djepa.video.grid.vae_grid` (``T_lat = ceil(T/4)`` for T = 1, 8k, 8k+1).
* Latents are unbounded: :attr:`value_range` is ``None`` (the sampler does not clip).

:func:`cache_latents` stores the posterior moments of each clip once (VAE encoding dominates the
cost of a video run), one safetensors file per clip, resumable, with a progress bar.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from djepa.core.tokenizer import register_tokenizer
from djepa.video.grid import vae_grid
from djepa.video.tokenizer import patchify3d, unpatchify3d

__all__ = ["VideoVAETokenizer", "load_cogvideox", "cache_latents", "CachedLatents"]


def load_cogvideox(path: str | os.PathLike[str], device: torch.device | str = "cpu"):
    """``AutoencoderKLCogVideoX`` from a local folder, fp32, eval mode.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` / safetensors weights are missing.
        ValueError: the config is not a CogVideoX VAE.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"video VAE folder {p} does not exist")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"video VAE folder {p} has no config.json")
    if not any(p.glob("*.safetensors")):
        raise FileNotFoundError(f"video VAE folder {p} has no .safetensors weights (pickles are never loaded)")
    from diffusers import AutoencoderKLCogVideoX

    try:
        vae = AutoencoderKLCogVideoX.from_pretrained(str(p), torch_dtype=torch.float32, use_safetensors=True, low_cpu_mem_usage=False,
                                                     local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{p}: not a loadable AutoencoderKLCogVideoX ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    return vae.to(device=device).eval().requires_grad_(False)


@register_tokenizer
class VideoVAETokenizer:
    """CogVideoX-VAE latents patched into a 3-D token grid (module docstring).

    Args:
        vae_path: local diffusers folder.
        frames, height, width: clip size (frames 1 / 8k / 8k+1, sides multiples of 8).
        patch: ``(pt, ph, pw)`` in latent units (paper: 4 × 2 × 2).
        latent_scale: multiplier of the latents (None = the config's ``scaling_factor``).
        device: where the VAE runs.

    Raises:
        ValueError: a clip / patch that does not fit (one line, sizes that fit).
        FileNotFoundError: no VAE folder.
    """

    kind: ClassVar[str] = "video-vae"

    def __init__(self, vae_path: str, frames: int, height: int, width: int, patch: tuple[int, int, int],
                 latent_scale: float | None = None, device: torch.device | str = "cpu") -> None:
        self.patch = tuple(int(p) for p in patch)
        self.frames, self.height, self.width = int(frames), int(height), int(width)
        self.vae_path = str(vae_path)
        self.vae = load_cogvideox(vae_path, device)
        c = self.vae.config
        self.temporal = int(c.temporal_compression_ratio)
        self.spatial = 2 ** (len(c.block_out_channels) - 1)
        self.latent_channels = int(c.latent_channels)
        self.channels = int(c.in_channels)
        self._grid = vae_grid(self.frames, self.height, self.width, self.patch,
                              temporal=self.temporal, spatial=self.spatial)
        self.latent_scale = float(c.scaling_factor if latent_scale is None else latent_scale)

    @property
    def grid(self) -> tuple[int, int, int]:
        return self._grid

    @property
    def num_tokens(self) -> int:
        return self._grid[0] * self._grid[1] * self._grid[2]

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(C_lat, T_lat, H/8, W/8)``."""
        pt, ph, pw = self.patch
        return (self.latent_channels, self._grid[0] * pt, self._grid[1] * ph, self._grid[2] * pw)

    @property
    def token_dim(self) -> int:
        pt, ph, pw = self.patch
        return self.latent_channels * pt * ph * pw

    @property
    def value_range(self) -> None:
        return None

    @property
    def frames_per_token(self) -> int:
        """Frames one temporal grid step covers (``temporal · pt``; the causal first frame makes
        the first step one frame shorter)."""
        return self.temporal * self.patch[0]

    @torch.no_grad()
    def moments(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mean, std)`` ``[B, C_lat, T_lat, h, w]`` fp32 of ``video [B, C, T, H, W]``
        in ``[0, 1]`` (unscaled).

        Raises:
            ValueError: another clip shape.
        """
        want = (self.channels, self.frames, self.height, self.width)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(f"expected video [B, {', '.join(map(str, want))}], got {list(video.shape)}")
        dev = next(self.vae.parameters()).device
        x = video.to(dev, torch.float32) * 2.0 - 1.0
        with torch.autocast(dev.type, enabled=False):
            dist = self.vae.encode(x).latent_dist
        return dist.mean.float(), dist.std.float()

    def tokens_from_latents(self, z: Tensor) -> Tensor:
        """Unscaled latents ``[B, C_lat, T_lat, h, w]`` → scaled tokens ``[B, N, D_tok]``."""
        return patchify3d(z.float() * self.latent_scale, self.patch)

    def encode(self, video: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``[B, C, T, H, W]`` in ``[0, 1]`` → ``[B, N, D_tok]`` (posterior mean, or a sample)."""
        mean, std = self.moments(video)
        z = mean if not sample else mean + std * torch.randn(mean.shape, generator=generator,
                                                             device=mean.device)
        return self.tokens_from_latents(z)

    @torch.no_grad()
    def decode(self, tokens: Tensor, clamp: bool = True) -> Tensor:
        """``[B, N, D_tok]`` → ``[B, C, T, H, W]`` in ``[0, 1]`` (fp32 VAE decode).

        Raises:
            ValueError: wrong ``N`` or ``D_tok``.
        """
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(f"expected tokens [B, {self.num_tokens}, {self.token_dim}], got {list(tokens.shape)}")
        dev = next(self.vae.parameters()).device
        z = unpatchify3d(tokens.to(dev, torch.float32), self.latent_channels, self._grid, self.patch) / self.latent_scale
        with torch.autocast(dev.type, enabled=False):
            x = self.vae.decode(z).sample.float()
        x = (x + 1.0) / 2.0
        return x.clamp(0.0, 1.0) if clamp else x

    def to_config(self) -> dict[str, Any]:
        return dict(kind=self.kind, vae_path=self.vae_path, frames=self.frames, height=self.height,
                    width=self.width, patch=list(self.patch), latent_scale=self.latent_scale,
                    grid=list(self._grid), value_range=None)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "VideoVAETokenizer":
        return cls(str(config["vae_path"]), int(config["frames"]), int(config["height"]), int(config["width"]),
                   tuple(config["patch"]), float(config["latent_scale"]))


def _key(dataset: Any, index: int) -> str:
    name = str(dataset.item_name(index)) if hasattr(dataset, "item_name") else str(index)
    return f"{index:08d}_{hashlib.sha1(name.encode()).hexdigest()[:10]}"


class CachedLatents(torch.utils.data.Dataset):
    """Items ``(mean, std, label, valid_frames)`` read from a :func:`cache_latents` folder."""

    def __init__(self, folder: Path, keys: list[str], labels: list[int], valid: list[int]) -> None:
        self.folder, self.keys, self.labels, self.valid = folder, keys, labels, valid

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        from safetensors.torch import load_file

        t = load_file(str(self.folder / f"{self.keys[i]}.safetensors"))
        return t["mean"], t["std"], self.labels[i], self.valid[i]


def cache_latents(dataset: Any, tokenizer: VideoVAETokenizer, folder: str | os.PathLike[str], *,
                  progress: bool = True) -> CachedLatents:
    """Encode every clip of ``dataset`` (items ``(video [C, T, H, W], label, valid)``) once and
    store its posterior moments as ``folder/<index>_<hash>.safetensors`` (written to a temporary
    name and renamed: an interrupted cache resumes, only missing clips are encoded).

    Returns:
        a :class:`CachedLatents` data set over the cache.
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    keys, labels, valid = [], [], []
    todo = []
    for i in range(len(dataset)):
        k = _key(dataset, i)
        keys.append(k)
        if not (out / f"{k}.safetensors").is_file():
            todo.append(i)
    for i in tqdm(todo, desc="video latents", unit="clip", disable=not progress or not todo):
        video, label, nvalid = dataset[i]
        mean, std = tokenizer.moments(video.unsqueeze(0))
        tmp = out / f".{keys[i]}.tmp"
        save_file({"mean": mean[0].contiguous().cpu(), "std": std[0].contiguous().cpu()}, str(tmp))
        os.replace(tmp, out / f"{keys[i]}.safetensors")
    for i in range(len(dataset)):
        labels.append(int(dataset.label_of(i)) if hasattr(dataset, "label_of") else int(dataset[i][1]))
        valid.append(int(dataset.valid_of(i)) if hasattr(dataset, "valid_of") else int(dataset[i][2]))
    return CachedLatents(out, keys, labels, valid)
