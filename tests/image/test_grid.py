"""djepa.image.grid: PNG grids and ImageFolder-layout PNG sets, read back with PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from djepa.image.datasets import ImageFolderDataset
from djepa.image.grid import save_image_grid, save_images_imagefolder

PAD, PADV = 2, 128  # make_grid padding (px) and its gray level


def _read(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).copy()


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def test_grid_layout_and_pixels(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    x[0, 0, 0, 0] = 1.7  # clamped to 1 → 255
    p = save_image_grid(x, tmp_path / "sub" / "g.png", nrow=3, upscale=1)
    a = _read(p)
    assert a.shape == (2 * (8 + PAD) + PAD, 3 * (8 + PAD) + PAD, 3)
    for i in range(6):
        r, c = divmod(i, 3)
        y0, x0 = r * (8 + PAD) + PAD, c * (8 + PAD) + PAD
        cell = a[y0:y0 + 8, x0:x0 + 8]
        for ch in range(3):  # gray → three equal channels
            assert np.array_equal(cell[..., ch], _u8(x[i, 0]))
    assert a[0, 0, 0] == PADV and a[10, 5, 1] == PADV and a[5, 10, 2] == PADV  # padding between cells
    assert a[PAD, PAD, 0] == 255


def test_grid_upscale_default_and_rgb(tmp_path):
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    a = _read(save_image_grid(x, tmp_path / "g.png", nrow=2))  # default: 8×8 → ×8 = 64 px cells
    assert a.shape == (2 * (64 + PAD) + PAD, 2 * (64 + PAD) + PAD, 3)
    cell = a[PAD:PAD + 64, PAD:PAD + 64]
    assert np.array_equal(cell[::8, ::8], _u8(x[0]).transpose(1, 2, 0))
    assert np.array_equal(cell[7::8, 7::8], _u8(x[0]).transpose(1, 2, 0))  # nearest blocks


def test_grid_row_and_cell_labels(tmp_path):
    x = torch.zeros(6, 1, 8, 8)
    plain = _read(save_image_grid(x, tmp_path / "p.png", nrow=3, upscale=2))
    rows = _read(save_image_grid(x, tmp_path / "r.png", nrow=3, upscale=2, labels=["zero", "one"]))
    margin = rows.shape[1] - plain.shape[1]
    assert rows.shape[0] == plain.shape[0] and margin > 10
    assert np.array_equal(rows[:, margin:], plain)  # the grid itself is unchanged
    assert rows[:, :margin].max() > 200  # white (antialiased) text in the margin

    cells = _read(save_image_grid(x, tmp_path / "c.png", nrow=3, upscale=2,
                                  labels=[str(i) for i in range(6)]))
    strip = (cells.shape[0] - PAD) // 2 - PAD - 16
    assert cells.shape[1] == plain.shape[1] and strip >= 6
    assert cells[PAD:PAD + 16, PAD:PAD + 16].max() == 0  # the image is not overwritten
    assert cells[PAD + 16:PAD + 16 + strip, PAD:PAD + 16].max() > 200  # its label under it
    with pytest.raises(ValueError, match="one per row"):
        save_image_grid(x, tmp_path / "bad.png", nrow=3, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="B, 1\\|3, H, W"):
        save_image_grid(torch.zeros(2, 2, 8, 8), tmp_path / "bad.png")


def test_imagefolder_pngs_round_trip(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 1, 8, 8, generator=g)
    labels = [3, 10, 3, 0, 3]
    paths = save_images_imagefolder(x, torch.tensor(labels), tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert names == ["3/00000.png", "10/00000.png", "3/00001.png", "0/00000.png", "3/00002.png"]
    for p, img in zip(paths, x):
        a = _read(p)
        assert a.dtype == np.uint8 and a.shape == (8, 8)  # 8-bit gray PNG
        assert np.array_equal(a, _u8(img[0]))
    # second call continues per class
    more = save_images_imagefolder(x[:2], [3, 7], tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in more] == ["3/00003.png", "7/00000.png"]
    other = tmp_path.parent / (tmp_path.name + "_other")  # outside the folder read back below
    fixed = save_images_imagefolder(x[:2], [3, 7], other, start_index={3: 40})
    assert [p.name for p in fixed] == ["00040.png", "00000.png"]
    assert save_images_imagefolder(x[:1], [1], other, start_index=9)[0].name == "00009.png"

    # read back as an image folder: class index = int(folder name), pixels unchanged
    ds = ImageFolderDataset(tmp_path, 8, hflip=False)
    assert ds.num_classes == 11 and sorted(ds.targets.tolist()) == [0, 3, 3, 3, 3, 7, 10]
    i = [p for p, _ in ds.samples].index(str(paths[1]))
    img, lab = ds[i]
    assert int(lab) == 10
    assert torch.equal(img, torch.from_numpy(_u8(x[1])).float().div(255).expand(3, 8, 8))


def test_imagefolder_pngs_rgb_and_errors(tmp_path):
    x = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(3))
    p = save_images_imagefolder(x, [0, 1], tmp_path)
    a = _read(p[1])
    assert a.shape == (4, 6, 3) and np.array_equal(a, _u8(x[1]).transpose(1, 2, 0))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        save_images_imagefolder(x, [0, 1, 2], tmp_path)
    with pytest.raises(ValueError, match="non-negative"):
        save_images_imagefolder(x, [0, -1], tmp_path)
