"""djepa.image.datasets on the real files in ../shared/data (IDX, ImageNet layout) and
scikit-learn's digits."""

from __future__ import annotations

import gzip
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from djepa.image.datasets import (
    DigitsDataset,
    IDXDataset,
    ImageFolderDataset,
    build_dataset,
    center_crop_arr,
    digits_split_indices,
    read_idx,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FASHION = DATA / "fashion-mnist"
MNIST = DATA / "mnist-test"
INET = DATA / "imagenet-sample-500"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data folder {path} is absent (see shared/data/README.md)")
    return path


# --------------------------------------------------------------------------- digits


def test_digits_values_match_sklearn():
    from sklearn.datasets import load_digits

    ds = DigitsDataset()
    raw = load_digits()
    assert len(ds) == 1797 and ds.num_classes == 10 and ds.channels == 1 and ds.image_size == 8
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert float(ds.images.min()) == 0.0 and float(ds.images.max()) == 1.0
    # exact: value = raw / 16
    assert torch.equal(ds.images[:, 0] * 16, torch.from_numpy(raw.images.astype(np.float32)))
    assert torch.equal(ds.targets, torch.from_numpy(raw.target))
    img, lab = ds[5]
    assert lab.dtype == torch.long and int(lab) == int(raw.target[5])
    assert torch.bincount(ds.targets).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_is_stratified_disjoint_and_deterministic():
    tr, te = digits_split_indices("train"), digits_split_indices("test")
    assert len(tr) == 1347 and len(te) == 450
    assert set(tr).isdisjoint(te) and set(tr) | set(te) == set(range(1797))
    assert np.array_equal(te, digits_split_indices("test"))
    assert not np.array_equal(te, digits_split_indices("test", seed=1))
    y = DigitsDataset().targets.numpy()
    per_class = np.bincount(y[te], minlength=10)
    assert per_class.min() >= 43 and per_class.max() <= 47  # 25 % of 174..183
    assert len(DigitsDataset(split="test")) == 450
    with pytest.raises(ValueError, match="split"):
        DigitsDataset(split="val")


def test_digits_upscaling_closed_forms():
    d8 = DigitsDataset(8).images
    near = DigitsDataset(16, interpolation="nearest").images
    assert torch.equal(near[..., ::2, ::2], d8) and torch.equal(near[..., 1::2, 1::2], d8)
    bil = DigitsDataset(16).images  # bilinear, align_corners=False, no antialias
    assert bil.min() >= 0 and bil.max() <= 1
    # output pixel 2i+1 samples source coordinate i + 0.25 (separable in rows and columns)
    r = 0.75 * d8[..., :-1, :] + 0.25 * d8[..., 1:, :]
    rc = 0.75 * r[..., :, :-1] + 0.25 * r[..., :, 1:]
    assert torch.allclose(bil[..., 1:-1:2, 1:-1:2], rc, atol=1e-6)


# --------------------------------------------------------------------------- IDX


def test_idx_fashion_train_real():
    ds = IDXDataset(need(FASHION), "train")
    assert len(ds) == 60_000 and ds.data.shape == (60_000, 28, 28) and ds.data.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.image_size == 28
    assert torch.bincount(ds.targets).tolist() == [6000] * 10
    assert int(ds.targets[0]) == 9  # the first Fashion-MNIST training item is an ankle boot
    # well-known normalisation constant of Fashion-MNIST train: mean 0.2860
    assert abs(float(ds.data.float().mean() / 255) - 0.2860) < 5e-4
    img, lab = ds[0]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32 and int(lab) == 9
    assert torch.equal(img[0], ds.data[0].float() / 255)
    assert len(IDXDataset(FASHION, "test")) == 10_000


def test_idx_mnist_test_real_and_resize():
    ds = IDXDataset(need(MNIST), "test")
    assert len(ds) == 10_000 and ds.num_classes == 10
    assert ds.targets[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first MNIST test digits
    assert abs(float(ds.data.float().mean() / 255) - 0.1325) < 5e-4  # MNIST test mean
    small = IDXDataset(MNIST, "test", image_size=14)
    img, _ = small[0]
    ref = F.avg_pool2d(ds[0][0].unsqueeze(0), 2)[0]  # area downscale of an integer factor
    assert torch.allclose(img, ref, atol=1e-6)
    assert IDXDataset(MNIST, "test", image_size=32)[0][0].shape == (1, 32, 32)


def test_idx_gz_and_raw_identical(tmp_path):
    src = need(MNIST)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(src / f"{name}.gz", "rb") as f:
            (tmp_path / name).write_bytes(f.read())
    raw, gz = IDXDataset(tmp_path, "test"), IDXDataset(src, "test")
    assert raw.image_files[0].suffix != ".gz" and gz.image_files[0].suffix == ".gz"
    assert torch.equal(raw.data, gz.data) and torch.equal(raw.targets, gz.targets)


def test_read_idx_hand_built(tmp_path):
    payload = bytes(range(24))
    p = tmp_path / "x-images-idx3-ubyte"
    p.write_bytes(struct.pack(">iiii", 2051, 2, 3, 4) + payload)
    arr = read_idx(p, 2051)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8
    assert arr.reshape(-1).tolist() == list(range(24))
    with pytest.raises(ValueError, match=r"x-images-idx3-ubyte.*bad magic number 2051 \(expected 2049\)"):
        read_idx(p, 2049)


def _raw_copy(src: Path, dst: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(src / f"{name}.gz", "rb") as f:
            (dst / name).write_bytes(f.read())


def test_idx_truncated_raw_and_gz_name_the_file(tmp_path):
    _raw_copy(need(MNIST), tmp_path)
    img = tmp_path / "t10k-images-idx3-ubyte"
    img.write_bytes(img.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*size mismatch.*truncated"):
        IDXDataset(tmp_path, "test")

    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    shutil.copy(MNIST / "t10k-labels-idx1-ubyte.gz", gz_dir)
    data = (MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()
    (gz_dir / "t10k-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz"):
        IDXDataset(gz_dir, "test")


def test_idx_bad_magic_and_count_mismatch(tmp_path):
    _raw_copy(need(MNIST), tmp_path)
    lbl = tmp_path / "t10k-labels-idx1-ubyte"
    good_labels = lbl.read_bytes()
    # labels where images should be → wrong magic
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "t10k-images-idx3-ubyte").write_bytes(good_labels)
    (swapped / "t10k-labels-idx1-ubyte").write_bytes(good_labels)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*bad magic number 2049 \(expected 2051\)"):
        IDXDataset(swapped, "test")
    # a valid label file with 9,999 entries
    lbl.write_bytes(struct.pack(">ii", 2049, 9999) + good_labels[8:-1])
    with pytest.raises(ValueError, match=r"10000 images .* 9999 labels"):
        IDXDataset(tmp_path, "test")


def test_idx_missing_split_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        IDXDataset(need(MNIST), "train")
    msg = str(e.value)
    assert str(MNIST) in msg and "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IDXDataset(tmp_path / "nope", "test")
    with pytest.raises(ValueError, match="split"):
        IDXDataset(MNIST, "val")


# --------------------------------------------------------------------------- ImageFolder


def _synsets() -> list[str]:
    return [ln.split()[0] for ln in (INET / "synsets_1000.txt").read_text().splitlines() if ln.strip()]


def test_imagefolder_imagenet_sample_classes():
    root = need(INET) / "val"
    ds = ImageFolderDataset(root, 32, synsets_file=INET / "synsets_1000.txt", hflip=False)
    assert len(ds) == 500 and ds.num_classes == 1000 and ds.channels == 3
    wnids = _synsets()
    assert wnids[0] == "n01440764" and ds.class_to_idx["n01440764"] == 0  # first line → 0 (tench)
    assert ds.class_to_idx["n01484850"] == 2  # great white shark
    # SOURCE.txt: one image for every other class of the standard index
    assert sorted(ds.targets.tolist()) == list(range(0, 1000, 2))
    assert all(ds.class_to_idx[w] == i for i, w in enumerate(wnids) if w in ds.class_to_idx)
    img, lab = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and int(lab) == 0
    assert 0 <= float(img.min()) and float(img.max()) <= 1
    # without a synsets file: position among the 500 sorted folder names
    plain = ImageFolderDataset(root, 16, hflip=False)
    assert plain.num_classes == 500 and sorted(plain.targets.tolist()) == list(range(500))


def test_imagefolder_grayscale_jpegs_become_rgb():
    from PIL import Image

    root = need(INET) / "val"
    ds = ImageFolderDataset(root, 24, hflip=False)
    gray = []
    for i, (path, _) in enumerate(ds.samples):
        with Image.open(path) as im:
            if im.mode == "L":
                gray.append(i)
    assert len(gray) == 9  # SOURCE.txt: 9 grayscale JPEGs
    img, _ = ds[gray[0]]
    assert img.shape == (3, 24, 24)
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert float(img.std()) > 0.01


def test_center_crop_sizes_and_content():
    from PIL import Image

    for w, h in [(100, 100), (500, 375), (1836, 1377), (333, 1000), (65, 300)]:
        out = center_crop_arr(Image.new("RGB", (w, h)), 64)
        assert out.size == (64, 64)
    # left / middle / right thirds red, green, blue: the centre square is the green third
    arr = np.zeros((90, 270, 3), np.uint8)
    arr[:, :90, 0] = 255
    arr[:, 90:180, 1] = 255
    arr[:, 180:, 2] = 255
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 30)).astype(int)
    assert out.shape == (30, 30, 3)
    assert (out[:, 2:-2, 1] >= 250).all() and (out[:, 2:-2, 0] <= 5).all() and (out[:, 2:-2, 2] <= 5).all()
    # a real odd-sized file: the crop of the dataset equals the crop of the file
    root = need(INET) / "val"
    ds = ImageFolderDataset(root, 40, hflip=False)
    path = ds.samples[7][0]
    with Image.open(path) as im:
        ref = np.asarray(center_crop_arr(im.convert("RGB"), 40))
    assert torch.equal(ds[7][0], torch.from_numpy(ref.copy()).permute(2, 0, 1).float() / 255)


def test_imagefolder_hflip_with_generator():
    root = need(INET) / "val"
    base = ImageFolderDataset(root, 16, hflip=False)[3][0]
    g = torch.Generator().manual_seed(0)
    ds = ImageFolderDataset(root, 16, hflip=True, generator=g)
    flips = []
    for _ in range(24):
        img = ds[3][0]
        assert torch.equal(img, base) or torch.equal(img, base.flip(-1))
        flips.append(torch.equal(img, base.flip(-1)))
    assert 4 <= sum(flips) <= 20
    g2 = torch.Generator().manual_seed(0)
    ds2 = ImageFolderDataset(root, 16, hflip=True, generator=g2)
    assert [torch.equal(ds2[3][0], base.flip(-1)) for _ in range(24)] == flips


def _small_copy(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for d in sorted((need(INET) / "val").iterdir())[:3]:
        shutil.copytree(d, root / d.name)
    return root


def test_imagefolder_corrupt_file_skip_raise_verify(tmp_path):
    root = _small_copy(tmp_path)
    bad_dir = root / "n01440764"
    good = next(bad_dir.iterdir())
    bad = bad_dir / "zz_broken.JPEG"
    bad.write_bytes(good.read_bytes()[:200])  # truncated JPEG
    ds = ImageFolderDataset(root, 16, hflip=False)
    assert len(ds) == 4
    bad_idx = [p for p, _ in ds.samples].index(str(bad))
    with pytest.warns(UserWarning, match="zz_broken.JPEG"):
        img, lab = ds[bad_idx]
    nxt = ImageFolderDataset(root, 16, hflip=False)
    assert torch.equal(img, nxt[bad_idx + 1][0]) and int(lab) == int(nxt.samples[bad_idx + 1][1])
    with warnings.catch_warnings():  # reported only once per file
        warnings.simplefilter("error")
        ds[bad_idx]

    strict = ImageFolderDataset(root, 16, on_error="raise")
    with pytest.raises(RuntimeError, match="zz_broken.JPEG"):
        strict[bad_idx]

    with pytest.warns(UserWarning, match="zz_broken.JPEG"):
        checked = ImageFolderDataset(root, 16, verify=True)
    assert len(checked) == 3 and str(bad) not in [p for p, _ in checked.samples]


def test_imagefolder_extensions_and_numeric_folders(tmp_path):
    from PIL import Image

    for cls, names in {"2": ["a.jpg", "b.PNG"], "10": ["c.jpeg", "notes.txt", ".hidden.png"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            if n.endswith(".txt"):
                (tmp_path / cls / n).write_text("x")
            else:
                fmt = "PNG" if n.lower().endswith("png") else "JPEG"
                Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / cls / n, format=fmt)
    ds = ImageFolderDataset(tmp_path, 8, hflip=False)
    assert len(ds) == 3
    assert ds.num_classes == 11 and sorted(ds.targets.tolist()) == [2, 2, 10]  # int(folder)


def test_imagefolder_empty_and_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 16)
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path, 16)
    (tmp_path / "cls").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path, 16)
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataset(tmp_path, 16, on_error="ignore")


def test_imagefolder_synsets_missing_class(tmp_path):
    root = _small_copy(tmp_path)
    syn = tmp_path / "syn.txt"
    syn.write_text("n00000001 a\nn00000002 b\n")
    with pytest.raises(ValueError, match="not listed in synsets file"):
        ImageFolderDataset(root, 16, synsets_file=syn)


# --------------------------------------------------------------------------- factory


def test_build_dataset():
    with pytest.raises(ValueError, match="digits, idx, imagefolder"):
        build_dataset("cifar", None, 32)
    d = build_dataset("digits", None, 16, split="test")
    assert isinstance(d, DigitsDataset) and len(d) == 450 and d.image_size == 16
    m = build_dataset("idx", need(MNIST), None, split="test")
    assert isinstance(m, IDXDataset) and (m.num_classes, m.image_size, m.channels) == (10, 28, 1)
    with pytest.raises(ValueError, match="data directory"):
        build_dataset("idx", None, 28)
    i = build_dataset("imagefolder", need(INET), 16, split="test",
                      synsets_file=INET / "synsets_1000.txt")
    assert isinstance(i, ImageFolderDataset) and len(i) == 500 and i.num_classes == 1000
    with pytest.raises(FileNotFoundError, match="'train'"):
        build_dataset("imagefolder", INET, 16, split="train")
