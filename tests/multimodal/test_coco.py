"""COCO captions as distributed, on the real mini set (159 images, 5 captions each)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch

from djepa.multimodal.coco import CocoCaptions, draw_captions

ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco-mini-captions"
pytestmark = pytest.mark.skipif(not (ROOT / "annotations").is_dir(), reason="shared/data/coco-mini-captions absent")


def test_real_mini_set_loads():
    ds = CocoCaptions(ROOT, "train2017", image_size=32)
    data = json.loads((ROOT / "annotations" / "captions_train2017.json").read_text())
    assert len(ds) == len(data["images"]) and not ds.missing
    assert all(len(c) >= 5 for c in ds.captions)
    # the captions of item 0 are those of its image id in the file
    first = min(im["id"] for im in data["images"])
    assert set(ds.captions[0]) == {a["caption"].strip() for a in data["annotations"] if a["image_id"] == first}
    x, i = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and int(i) == 0


def test_one_caption_per_image_from_the_global_rng():
    ds = CocoCaptions(ROOT, "train2017", image_size=32)
    torch.manual_seed(0)
    a = draw_captions(ds, torch.arange(20))
    torch.manual_seed(0)
    assert draw_captions(ds, torch.arange(20)) == a
    assert all(c in ds.captions[i] for i, c in enumerate(a))
    torch.manual_seed(1)
    assert draw_captions(ds, torch.arange(20)) != a


def test_missing_images_are_warned_and_skipped(tmp_path):
    (tmp_path / "annotations").mkdir()
    data = json.loads((ROOT / "annotations" / "captions_train2017.json").read_text())
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(data))
    (tmp_path / "train2017").mkdir()
    keep = sorted(data["images"], key=lambda im: im["id"])[:3]
    for im in keep:
        os.symlink((ROOT / "train2017" / im["file_name"]).resolve(), tmp_path / "train2017" / im["file_name"])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = CocoCaptions(tmp_path, "train2017", image_size=16)
    assert len(ds) == 3 and len(ds.missing) == len(data["images"]) - 3
    assert any(f"{len(ds.missing)} image(s)" in str(x.message) for x in w)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions_train2017.json"):
        CocoCaptions(tmp_path)
