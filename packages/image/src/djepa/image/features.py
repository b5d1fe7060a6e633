"""Pooled context-encoder features of an image run: the representation D-JEPA hands to
downstream classifiers (paper App. E.2, "Experiment settings").

The paper uses the context encoder φ (not the target encoder, following I-JEPA) as the
pre-trained model and "globally average pool[s] the output of the context encoder" (as MAE /
MAGE do). Here:

* φ runs on the **full, unmasked** image (every token visible, as the target-encoder pass of
  training does), in eval mode (no dropout), from the run's **EMA** weights (what
  :func:`djepa.core.runs.load_run` loads: the released weights);
* the condition is the **null** one (a class model's learned null class, the CFG "fake latent";
  nothing for an unconditional model; the null sequence for a sequence model): the label must
  never reach the encoder of a classifier;
* the ``Nb`` **buffer tokens** (learned buffer + condition vector, prepended by φ) are dropped
  and the remaining ``N`` token outputs (after φ's final LayerNorm) are averaged; padding
  tokens, if a :class:`~djepa.core.batch.TokenBatch` has any, are not counted.

:func:`extract_features` runs a data set through a tokenizer and :func:`pooled_features` in
batches (tqdm progress bar) and :class:`FeatureCache` keeps the result in a safetensors file
keyed by the weights' sha256, the tokenizer record and the data set's identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["pooled_features", "encode_images", "extract_features", "FeatureCache", "cache_key",
           "IMAGE_TOKENIZER_KINDS", "FEATURES_VERSION"]

#: Tokenizer kinds of image runs (``tokenizer.json``'s ``kind``): raw pixels and VAE latents.
IMAGE_TOKENIZER_KINDS = ("pixel", "vae")
#: Bumped whenever the feature definition changes (part of every cache key).
FEATURES_VERSION = 1


def pooled_features(model: Any, tokens: Tensor | Any) -> Tensor:
    """Global average pool of φ's output over the full image, buffer tokens excluded.

    Args:
        model: a :class:`~djepa.core.model.DJEPA` (any condition kind). Its mode is left as it
            was; call ``model.eval()`` first for inference (no dropout).
        tokens: ``[B, N, D]`` float (the model's full grid) or a
            :class:`~djepa.core.batch.TokenBatch` (padding rows are not averaged).

    Returns:
        ``[B, E]`` float32 (``E = encoder_dim``), on the model's device.

    Raises:
        ValueError: tokens that do not fit the model (:meth:`DJEPA.as_batch`).
    """
    from djepa.core.batch import TokenBatch

    plain = not isinstance(tokens, TokenBatch)
    batch = model.as_batch(tokens)
    b = batch.batch_size
    state = model.null_state(b)
    # a plain full grid takes φ's own-grid path (positions=None), a TokenBatch its positions
    out = model.encoder(batch.tokens, state, None, positions=None if plain else batch.positions,
                        padding=None if plain else batch.padding)  # [B, Nb + N, E]
    h = out[:, model.config.buffer_size:].float()  # buffer dropped: [B, N, E]
    valid = batch.valid.to(h.dtype).unsqueeze(-1)  # [B, N, 1], 1 = real token
    return (h * valid).sum(1) / valid.sum(1).clamp(min=1.0)


def encode_images(tokenizer: Any, images: Tensor) -> Tensor:
    """Images ``[B, C, H, W]`` in ``[0, 1]`` → tokens, deterministically: a VAE tokenizer gives
    its posterior **mean** (no sample; the features of an image must not change between calls).
    A gray image is repeated to 3 channels when the tokenizer reads RGB (a VAE)."""
    expected = getattr(tokenizer, "channels", 3)
    if images.shape[1] == 1 and expected == 3:
        images = images.expand(-1, 3, -1, -1)
    if getattr(tokenizer, "kind", None) == "vae":
        return tokenizer.encode(images, sample=False)
    return tokenizer.encode(images)


@torch.no_grad()
def extract_features(model: Any, tokenizer: Any, dataset: Any, *, batch_size: int = 256,
                     device: torch.device | str = "cpu", progress: bool = True,
                     desc: str = "features") -> tuple[Tensor, Tensor]:
    """:func:`pooled_features` of every item of ``dataset``, in order.

    Args:
        model: the :class:`~djepa.core.model.DJEPA` (put in eval mode here, restored after).
        tokenizer: the run's tokenizer (images → tokens).
        dataset: ``(image [C, H, W] in [0, 1], label)`` items.
        batch_size: images per forward.
        progress: show a tqdm bar.

    Returns:
        ``(features [M, E] float32 CPU, labels [M] int64 CPU)``.
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    device = torch.device(device)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images, y in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            tokens = encode_images(tokenizer, images.to(device).float())
            feats.append(pooled_features(model, tokens.to(device)).cpu())
            labels.append(torch.as_tensor(y, dtype=torch.long).reshape(-1).cpu())
    finally:
        model.train(was_training)
    e = model.config.encoder_dim
    return (torch.cat(feats) if feats else torch.zeros(0, e),
            torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(weights: str | os.PathLike, tokenizer_config: Mapping[str, Any],
              data: Mapping[str, Any]) -> str:
    """The cache key of one feature set: sha256 over the weights file's sha256 (the checkpoint,
    whatever folder it was reached from), the tokenizer record (minus ``class_names``), the
    data set's identity ``data`` (name, resolved folder, split, size, item count) and
    :data:`FEATURES_VERSION`. 64 hex digits."""
    tok = {k: v for k, v in dict(tokenizer_config).items() if k != "class_names"}
    blob = json.dumps({"weights": _sha256(Path(weights)), "tokenizer": tok, "data": dict(data),
                       "version": FEATURES_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureCache:
    """Feature sets on disk: ``DIR/<key>.safetensors`` holding ``features [M, E] float32`` and
    ``labels [M] int64`` (safetensors: nothing is executed on load), written atomically
    (temp file + ``os.replace``), so a killed extraction leaves no half file.

    Args:
        directory: the cache folder (created on the first write).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str) -> tuple[Tensor, Tensor] | None:
        """The cached ``(features, labels)`` or ``None`` (missing or unreadable: recomputed)."""
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            d = load_file(str(p))
            return d["features"], d["labels"]
        except Exception:  # a damaged cache file is recomputed, never trusted
            return None

    def save(self, key: str, features: Tensor, labels: Tensor) -> Path:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": features.float().contiguous(), "labels": labels.long().contiguous()}, tmp)
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.path(key)
