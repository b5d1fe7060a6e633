"""16-bit, float and transparent images are read as 8-bit the same way at every entry point
(issue 12, item 5): scaled, not clipped at 255; alpha composited on white, not dropped."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from djepa.image.datasets import ImageFolderDataset
from djepa.image.inpaint import load_image, load_mask
from djepa.image.latents import load_center_crop
from djepa.image.metrics import load_image_uint8
from djepa.image.pixels import open_image

K = np.arange(64, dtype=np.uint16).reshape(8, 8) * 4          # 8-bit values 0..252


@pytest.fixture
def files(tmp_path):
    """16-bit grey PNG holding 257·k (k = K), float TIFF holding k/255, and an RGBA PNG whose
    left half is transparent black and right half opaque (10, 20, 30)."""
    sixteen = tmp_path / "cls" / "g16.png"
    sixteen.parent.mkdir()
    Image.fromarray((K * 257).astype(np.uint16)).save(sixteen)
    flt = tmp_path / "f.tiff"
    Image.fromarray((K / 255.0).astype(np.float32), "F").save(flt)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, 4:] = (10, 20, 30, 255)
    alpha = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(alpha)
    return sixteen, flt, alpha


def test_every_reader_scales_16_bit_and_float_and_composites_alpha(files, tmp_path):
    sixteen, flt, alpha = files
    with Image.open(sixteen) as im:
        assert im.mode in ("I;16", "I")          # what Pillow gives for a 16-bit grey PNG
    rgb_k = np.repeat(K.astype(np.uint8)[..., None], 3, axis=2)
    white_left = np.zeros((8, 8, 3), np.uint8)
    white_left[:, :4], white_left[:, 4:] = 255, (10, 20, 30)
    for path, want in ((sixteen, rgb_k), (flt, rgb_k), (alpha, white_left)):
        np.testing.assert_array_equal(np.asarray(open_image(path, "RGB")), want)
        np.testing.assert_array_equal(load_image_uint8(path).permute(1, 2, 0).numpy(), want)
        np.testing.assert_array_equal(
            (load_center_crop(path, 8) * 255).round().byte().permute(1, 2, 0).numpy(), want)
        arr, _ = load_image(path, 3, (8, 8))
        np.testing.assert_array_equal(arr, want)
    arr, _ = load_image(sixteen, 1, (8, 8))
    np.testing.assert_array_equal(arr[..., 0], K.astype(np.uint8))
    ds = ImageFolderDataset(tmp_path, 8, hflip=False)
    img, _ = ds[0]
    np.testing.assert_array_equal((img * 255).round().byte().permute(1, 2, 0).numpy(), rgb_k)


def test_16_bit_mask_keeps_its_values(tmp_path):
    m = np.zeros((8, 8), np.uint16)
    m[2:5, 3:6] = 65535
    path = tmp_path / "m.png"
    Image.fromarray(m).save(path)
    low = tmp_path / "low.png"                 # dark grey (16-bit 1000 ≈ 4/255): not masked
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(low)
    np.testing.assert_array_equal(load_mask(path, (8, 8), (8, 8)), m > 0)
    assert not load_mask(low, (8, 8), (8, 8)).any()
