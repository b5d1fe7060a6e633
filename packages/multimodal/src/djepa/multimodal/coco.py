"""COCO captions as distributed: ``ROOT/annotations/captions_<split>.json`` + ``ROOT/<split>/``.

The annotation file is COCO's: ``images`` (``id``, ``file_name``) and ``annotations``
(``image_id``, ``caption``), about five captions per image. :class:`CocoCaptions` keeps the
images that exist on disk and have at least one caption (missing files: one warning with the
count and the first path, then skipped), centre-crops them (ADM crop, as the image package) and
returns the image with its index; the training step draws one of the image's captions each time
the image is visited (once per epoch) from torch's global RNG — what the engine seeds per rank and
checkpoints, so a resumed run draws the same captions.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CocoCaptions", "draw_captions"]


class CocoCaptions(Dataset):
    """Images of a COCO split with their captions.

    Args:
        root: the COCO folder (holding ``annotations/`` and the split's image folder).
        split: ``train2017``, ``val2017``, …
        image_size: side of the centre crop in pixels.

    Attributes: ``files`` (image paths), ``captions`` (a list of caption lists, one per kept image),
    ``image_size``, ``channels`` (3), ``missing`` (image files named but not on disk).

    Item ``i``: ``(image [3, S, S] float32 in [0, 1], i int64)``.

    Raises:
        FileNotFoundError: no annotation file. ValueError: not COCO's format, or no image left.
    """

    channels = 3

    def __init__(self, root: str | os.PathLike, split: str = "train2017", image_size: int = 64) -> None:
        self.root = Path(root)
        ann = self.root / "annotations" / f"captions_{split}.json"
        if not ann.is_file():
            raise FileNotFoundError(f"COCO captions file {ann} not found (expected ROOT/annotations/"
                                    f"captions_{split}.json and ROOT/{split}/)")
        try:
            data = json.loads(ann.read_text())
            images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
            caps: dict[int, list[str]] = {}
            for a in data["annotations"]:
                text = str(a["caption"]).strip()
                if text:
                    caps.setdefault(int(a["image_id"]), []).append(text)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{ann} is not a COCO captions file: {type(e).__name__}: {e}") from None
        folder = self.root / split
        self.files: list[Path] = []
        self.captions: list[list[str]] = []
        self.missing: list[Path] = []
        for iid in sorted(images):
            if iid not in caps:
                continue
            path = folder / images[iid]
            if not path.is_file():
                self.missing.append(path)
                continue
            self.files.append(path)
            self.captions.append(caps[iid])
        if self.missing:
            warnings.warn(f"{ann}: {len(self.missing)} image(s) named in the annotations are missing on "
                          f"disk and were skipped (first: {self.missing[0]})", stacklevel=2)
        if not self.files:
            raise ValueError(f"{ann}: no image with a caption found on disk under {folder}")
        self.image_size = int(image_size)
        self.split = split

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from djepa.image.latents import load_center_crop

        return load_center_crop(self.files[i], self.image_size), torch.tensor(i, dtype=torch.long)

    def all_captions(self) -> list[str]:
        return [c for caps in self.captions for c in caps]


def draw_captions(dataset: CocoCaptions, indices: Tensor) -> list[str]:
    """One caption per image index, drawn uniformly from torch's global RNG."""
    out = []
    for i in indices.tolist():
        caps = dataset.captions[int(i)]
        out.append(caps[int(torch.randint(len(caps), ()))])
    return out
