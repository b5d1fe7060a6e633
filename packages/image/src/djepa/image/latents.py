"""Cached VAE posteriors for latent-space training (MAR ``main_cache.py``; FIDELITY.md "Latents").

Encoding every image with the VAE at every step dominates training cost, so the posterior moments
are computed once (:func:`cache_latents`, the ``image-cache-latents`` CLI) and training reads them
back (:class:`CachedLatentDataset`) and **samples** the posterior (:func:`make_latent_prepare`),
exactly as MAR does: the centre crop is encoded without random flip, together with its
horizontal flip, and the loader picks one of the two with probability 0.5.

Cache layout (one folder; MAR's ``.npz`` keys so either code base can read the other's cache)::

    OUT/manifest.json               what was cached and how (below)
    OUT/<class folder>/<file>.npz   one per image (file = the image's file name, e.g. x.JPEG.npz):
        moments       float32 [2·C_lat, h, w]   cat(mean, logvar) of the centre crop
        moments_flip  float32 [2·C_lat, h, w]   the same for the horizontally flipped crop

``logvar`` is the encoder's (clamped to ``[−30, 20]`` by KL VAEs). **Deterministic encoders**
(TAESD family) have no variance: their ``logvar`` channels are stored as ``−inf``
(:data:`~djepa.image.vae.DETERMINISTIC_LOGVAR`), so ``exp(logvar / 2) = 0`` and sampling returns
the mean exactly (MAR's loader, which clamps ``logvar`` to ``−30``, gets ``std = e^{−15}``).

``manifest.json``: ``format``, ``version``, ``vae`` (spec, absolute path), ``kl16_config``,
``image_size``, ``latent_channels``, ``latent_size``, ``downsample``, ``deterministic``,
``scale`` / ``shift`` (the tokenizer's at caching time; informational: moments are raw, unscaled),
``data_dir``, ``num_classes``, ``class_names``, ``complete`` and, once complete, ``entries``:
``[[relative .npz path, label], …]``. Each ``.npz`` is written to a temporary name and renamed,
so an interrupted run leaves only whole files; running again skips them (resume).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CACHE_FORMAT",
    "MANIFEST",
    "CachedLatentDataset",
    "cache_latents",
    "load_center_crop",
    "LatentTraining",
    "latent_training_setup",
    "make_latent_prepare",
]

CACHE_FORMAT = "djepa-latent-cache"
MANIFEST = "manifest.json"


def load_center_crop(path: str | os.PathLike, image_size: int) -> Tensor:
    """An image file → ``[3, S, S]`` float32 in ``[0, 1]``: RGB, ADM centre crop
    (:func:`~djepa.image.datasets.center_crop_arr`), ``byte / 255``; 16-bit / float / transparent
    images as :mod:`djepa.image.pixels` reads them. PIL errors propagate."""
    from djepa.image.datasets import center_crop_arr
    from djepa.image.pixels import open_image

    img = open_image(path, "RGB")
    arr = np.asarray(center_crop_arr(img, image_size), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


class _Crops(Dataset):
    def __init__(self, items: list[tuple[int, str]], image_size: int):
        self.items, self.image_size = items, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        k, path = self.items[i]
        try:
            return k, load_center_crop(path, self.image_size), ""
        except Exception as e:  # noqa: BLE001 — any decoder failure: reported, skipped
            return k, torch.zeros(3, self.image_size, self.image_size), f"{type(e).__name__}: {e}"


def _collate(batch):
    return [b[0] for b in batch], torch.stack([b[1] for b in batch]), [b[2] for b in batch]


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def cache_latents(tokenizer, data_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
                  split: str = "train", batch_size: int = 32, num_workers: int = 0,
                  synsets_file: str | None = None, max_images: int | None = None,
                  progress: bool = True) -> dict:
    """Encode an ImageFolder's centre crops and their flips; write the cache described in the
    module docstring (resumable).

    Args:
        tokenizer: a :class:`~djepa.image.vae.VAETokenizer` (its ``image_size`` is the crop size;
            square only).
        data_dir: ImageFolder root (``root/<class>/<image>``), or a folder with ``train/`` /
            ``val/`` sub-folders (then ``split`` picks one, as in :func:`build_dataset`).
        output_dir: the cache folder.
        split: ``"train"`` / ``"test"``.
        batch_size: images per VAE call (each call encodes ``2 × batch_size``: plain + flipped).
        num_workers: DataLoader processes decoding JPEGs.
        synsets_file: class order file (ImageNet indices), see ``ImageFolderDataset``.
        max_images: cache only the first ``max_images`` (sorted) images.
        progress: show a tqdm bar.

    Returns:
        ``{"cached": newly written, "skipped": already there, "failed": unreadable, "total": entries}``.

    Raises:
        ValueError: non-square tokenizer; an existing cache in ``output_dir`` written with a
            different VAE / image size (mixing would corrupt it).
        FileNotFoundError: missing data folder.
    """
    from tqdm import tqdm

    from djepa.image.datasets import build_dataset

    h, w = tokenizer.image_size
    if h != w:
        raise ValueError(f"latent caching needs square crops, got {h}×{w}")
    ds = build_dataset("imagefolder", data_dir, h, split=split, hflip=False, synsets_file=synsets_file)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    desc = tokenizer.describe()
    manifest = dict(format=CACHE_FORMAT, version=1, vae=desc["vae"], kl16_config=desc["kl16_config"],
                    image_size=h, latent_channels=tokenizer.latent_channels,
                    latent_size=list(tokenizer.latent_size), downsample=tokenizer.downsample,
                    deterministic=tokenizer.deterministic, scale=desc["scale"], shift=desc["shift"],
                    data_dir=str(Path(ds.root).resolve()), num_classes=int(ds.num_classes),
                    class_names=list(ds.class_names), complete=False)
    mpath = out / MANIFEST
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        for key in ("vae", "kl16_config", "image_size", "latent_channels", "latent_size"):
            if old.get(key) != manifest[key]:
                raise ValueError(f"{out} already holds a latent cache with {key}={old.get(key)!r}, "
                                 f"not {manifest[key]!r}; use another --output-dir")
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")

    samples = ds.samples[:max_images] if max_images is not None else ds.samples
    root = Path(ds.root)
    rel = [str(Path(p).relative_to(root)) + ".npz" for p, _ in samples]
    pending = [(k, p) for k, (p, _) in enumerate(samples) if not (out / rel[k]).is_file()]
    skipped = len(samples) - len(pending)
    cached = failed = 0
    loader = DataLoader(_Crops(pending, h), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    bar = tqdm(total=len(pending), desc="image-cache-latents", unit="img", disable=not progress)
    for ks, images, errors in loader:
        ok = [i for i, e in enumerate(errors) if not e]
        for i, e in enumerate(errors):
            if e:
                warnings.warn(f"skipping unreadable image {samples[ks[i]][0]}: {e}", stacklevel=2)
        failed += len(errors) - len(ok)
        if ok:
            x = images[ok]
            mean, logvar = tokenizer.encode_moments(torch.cat([x, x.flip(-1)]))
            moments = torch.cat([mean, logvar], dim=1).cpu().numpy().astype(np.float32)
            n = len(ok)
            for j, i in enumerate(ok):
                target = out / rel[ks[i]]
                target.parent.mkdir(parents=True, exist_ok=True)
                _save_npz(target, moments=moments[j], moments_flip=moments[n + j])
            cached += n
        bar.update(len(errors))
    bar.close()
    entries = [[rel[k], int(lbl)] for k, (_, lbl) in enumerate(samples) if (out / rel[k]).is_file()]
    manifest.update(complete=True, entries=entries)
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")
    return dict(cached=cached, skipped=skipped, failed=failed, total=len(entries), output_dir=str(out))


class CachedLatentDataset(Dataset):
    """Items of a latent cache written by :func:`cache_latents`.

    Each item is ``(moments, label)``: ``moments`` float32 ``[2·C_lat, h, w]`` =
    ``cat(mean, logvar)`` of the centre crop or — with probability ``flip_prob`` (0.5, MAR) — of
    its horizontal flip; ``label`` a 0-d long. Turn a batch into tokens with
    :func:`make_latent_prepare` (which samples the posterior).

    Args:
        root: the cache folder (with a complete ``manifest.json``).
        flip_prob: probability of the flipped moments.
        generator: RNG of the flip choice (default: the global torch RNG, which ``DataLoader``
            seeds differently per worker).

    Attributes: ``manifest`` (dict), ``num_classes``, ``class_names``, ``targets`` ``[N]`` long,
    ``image_size``, ``latent_channels``, ``vae`` (spec), ``channels`` (3).

    Raises:
        FileNotFoundError: no manifest. ValueError: incomplete / foreign manifest.
    """

    channels = 3

    def __init__(self, root: str | os.PathLike, flip_prob: float = 0.5,
                 generator: torch.Generator | None = None) -> None:
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not mpath.is_file():
            raise FileNotFoundError(f"{self.root} is not a latent cache (no {MANIFEST}); "
                                    "create it with image-cache-latents")
        m = json.loads(mpath.read_text())
        if m.get("format") != CACHE_FORMAT:
            raise ValueError(f"{mpath} is not a {CACHE_FORMAT} manifest")
        if not m.get("complete"):
            raise ValueError(f"latent cache {self.root} is incomplete; run image-cache-latents again to finish it")
        if not m["entries"]:
            raise ValueError(f"latent cache {self.root} holds no image")
        self.manifest = m
        self.entries = [(e[0], int(e[1])) for e in m["entries"]]
        self.targets = torch.tensor([e[1] for e in self.entries], dtype=torch.long)
        self.num_classes = int(m["num_classes"])
        self.class_names = list(m["class_names"])
        self.image_size = int(m["image_size"])
        self.latent_channels = int(m["latent_channels"])
        self.vae = m["vae"]
        self.flip_prob = float(flip_prob)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        rel, label = self.entries[index]
        flip = bool(torch.rand((), generator=self.generator) < self.flip_prob)
        with np.load(self.root / rel) as f:
            moments = f["moments_flip" if flip else "moments"]
        return torch.from_numpy(np.array(moments, dtype=np.float32)), torch.tensor(label, dtype=torch.long)


def make_latent_prepare(tokenizer, generator: torch.Generator | None = None,
                        sample: bool = True) -> Callable[[tuple[Tensor, Tensor], torch.device], dict]:
    """The training engine's ``prepare_batch`` for cached latents:
    ``((moments [B, 2C, h, w], labels [B]), device) → {"tokens": [B, N, D_tok] fp32, "labels"}``,
    sampling ``z = mean + exp(logvar / 2) · ε`` (``sample=True``, MAR / FIDELITY.md) then
    ``(z − shift) · scale`` and patchify (:meth:`VAETokenizer.moments_to_tokens`)."""

    def prepare(batch, device):
        moments, labels = batch
        tokens = tokenizer.moments_to_tokens(moments.to(device, non_blocking=True), sample=sample,
                                             generator=generator)
        return {"tokens": tokens, "labels": labels.to(device, non_blocking=True)}

    return prepare


class LatentTraining:
    """What ``image-train`` needs to train in latent space (:func:`latent_training_setup`):
    ``dataset``, ``tokenizer`` (:class:`~djepa.image.vae.VAETokenizer`), ``prepare_batch``."""

    def __init__(self, dataset, tokenizer, prepare_batch):
        self.dataset, self.tokenizer, self.prepare_batch = dataset, tokenizer, prepare_batch


def latent_training_setup(cfg) -> LatentTraining:
    """Latent-space data for ``image-train`` (``--vae`` and / or ``--cached-latents``).

    * ``--cached-latents DIR``: :class:`CachedLatentDataset` (flip p = 0.5) and a
      ``prepare_batch`` that samples the posterior; the VAE is ``--vae`` or the one recorded in
      the cache's manifest (needed to decode sample grids), the image size the cache's.
    * ``--vae`` alone: the image dataset of ``--dataset`` / ``--data-dir`` (RGB), encoded on the
      fly with a posterior sample per image.

    ``--latent-scale`` / ``--latent-shift`` override the VAE's defaults; ``--patch-size`` is in
    latent pixels.

    Raises:
        ValueError: a non-RGB dataset, an image size that contradicts the cache, or a VAE whose
            latent channels differ from the cache's.
    """
    from djepa.image.vae import load_vae

    if cfg.cached_latents:
        ds = CachedLatentDataset(cfg.cached_latents)
        m = ds.manifest
        if cfg.image_size is not None and cfg.image_size != ds.image_size:
            raise ValueError(f"--image-size {cfg.image_size} contradicts the latent cache "
                             f"{cfg.cached_latents} (cached at {ds.image_size})")
        spec = cfg.vae or m["vae"]
        tok = load_vae(spec, ds.image_size, cfg.patch_size, scale=cfg.latent_scale, shift=cfg.latent_shift,
                       kl16_config=m.get("kl16_config"))
        if tok.latent_channels != ds.latent_channels or list(tok.latent_size) != list(m["latent_size"]):
            raise ValueError(f"VAE {spec} gives {tok.latent_channels}×{tok.latent_size} latents but the cache "
                             f"{cfg.cached_latents} holds {ds.latent_channels}×{m['latent_size']}")
        return LatentTraining(ds, tok, make_latent_prepare(tok))
    from djepa.image.datasets import build_dataset

    ds = build_dataset(cfg.dataset, cfg.data_dir, cfg.image_size, split="train")
    if int(ds.channels) != 3:
        raise ValueError(f"--vae needs RGB images; dataset {cfg.dataset!r} has {ds.channels} channel(s)")
    tok = load_vae(cfg.vae, int(ds.image_size), cfg.patch_size, scale=cfg.latent_scale, shift=cfg.latent_shift,
                   sample_posterior=True)

    def prepare(batch, device):
        images, labels = batch
        return {"tokens": tok.encode(images.to(device, non_blocking=True), sample=True),
                "labels": labels.to(device, non_blocking=True)}

    return LatentTraining(ds, tok, prepare)
