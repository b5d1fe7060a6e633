"""``image-inpaint`` (App. D.4): visible pixels exactly preserved, token-aligned masks, errors.

Train-free: a randomly initialised tiny D-JEPA for 8×8 gray images with 2×2 patches (4×4 tokens),
exported like ``image-train`` does (save_pretrained + tokenizer.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from djepa.core.config import preset
from djepa.core.model import DJEPA
from djepa.image import inpaint as inpaint_cli
from djepa.image.datasets import center_crop_arr

FAST = ["--ar-steps", "3", "--denoise-steps", "3", "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=3))
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(dict(
        kind="pixel", channels=1, image_size=8, patch_size=2, value_range=[-1.0, 1.0],
        class_names=["a", "b", "c"])))
    return folder


@pytest.fixture()
def image_png(tmp_path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    return path, arr


def _run(checkpoint, image, out, *extra) -> int:
    return inpaint_cli.main(["--checkpoint", str(checkpoint), "--image", str(image),
                             "--output-dir", str(out), *FAST, *extra])


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _region(token_rows_cols: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros((8, 8), dtype=bool)
    for r, c in token_rows_cols:
        m[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
    return m


def test_box_inpainting_keeps_visible_pixels_exactly(checkpoint, image_png, tmp_path):
    path, arr = image_png
    out = tmp_path / "out"
    assert _run(checkpoint, path, out, "--box", "2,2,6,6") == 0
    result = _read(out / "result.png")
    region = _region([(1, 1), (1, 2), (2, 1), (2, 2)])
    assert result.shape == (8, 8) and result.dtype == np.uint8
    assert np.array_equal(_read(out / "mask.png") > 0, region)
    assert np.array_equal(result[~region], arr[~region])  # exact, on the 8-bit PNG values
    assert not np.array_equal(result[region], arr[region])  # the masked part was generated
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unknown_tokens"] == 4 and summary["known_tokens"] == 12
    assert summary["max_visible_abs_diff"] == 0 and summary["outpainting"] is False
    sbs = _read(out / "side_by_side.png")
    assert sbs.ndim == 3 and sbs.shape[0] == 128 and sbs.shape[1] > 256  # 16× enlarged, two panels


def test_box_and_mask_png_give_the_same_known_set_and_result(checkpoint, image_png, tmp_path):
    path, arr = image_png
    # unaligned box: pixels 3..4 touch tokens 1 and 2 in both axes → same 2×2 token block
    assert _run(checkpoint, path, tmp_path / "box", "--box", "3,3,5,5", "--class", "1") == 0
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[3:5, 3:5] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert _run(checkpoint, path, tmp_path / "png", "--mask", str(tmp_path / "mask.png"), "--class", "1") == 0
    region = _region([(1, 1), (1, 2), (2, 1), (2, 2)])
    for d in ("box", "png"):
        assert np.array_equal(_read(tmp_path / d / "mask.png") > 0, region)
    # same known set + same seed → identical result
    assert np.array_equal(_read(tmp_path / "box" / "result.png"), _read(tmp_path / "png" / "result.png"))
    # one masked pixel (gray ≥ 128 counts, < 128 does not) makes its whole token unknown
    mask[:] = 0
    mask[1, 5] = 200
    mask[6, 6] = 127
    Image.fromarray(mask).save(tmp_path / "one.png")
    assert _run(checkpoint, path, tmp_path / "one", "--mask", str(tmp_path / "one.png")) == 0
    region = _region([(0, 2)])
    assert np.array_equal(_read(tmp_path / "one" / "mask.png") > 0, region)
    assert np.array_equal(_read(tmp_path / "one" / "result.png")[~region], arr[~region])


def test_outpainting_border_box(checkpoint, image_png, tmp_path):
    path, arr = image_png
    out = tmp_path / "out"
    assert _run(checkpoint, path, out, "--box", "0,0,8,3", "--class", "2", "--cfg", "2.0") == 0
    result = _read(out / "result.png")
    region = np.zeros((8, 8), dtype=bool)
    region[:4] = True  # rows 0..2 touch token rows 0 and 1
    assert np.array_equal(_read(out / "mask.png") > 0, region)
    assert np.array_equal(result[~region], arr[~region])
    assert not np.array_equal(result[region], arr[region])
    assert json.loads((out / "summary.json").read_text())["outpainting"] is True


def test_rgb_and_larger_input_is_converted_and_centre_cropped(checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    mask = np.zeros((16, 20), dtype=np.uint8)
    mask[:, 12:] = 255  # right part of the 20-wide input
    Image.fromarray(mask).save(tmp_path / "m.png")
    out = tmp_path / "out"
    assert _run(checkpoint, tmp_path / "big.png", out, "--mask", str(tmp_path / "m.png")) == 0
    fitted = np.asarray(center_crop_arr(Image.fromarray(big).convert("L"), 8))
    region = _read(out / "mask.png") > 0
    assert region[:, -1].all() and not region[:, 0].any()
    result = _read(out / "result.png")
    assert np.array_equal(result[~region], fitted[~region])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_errors(checkpoint, image_png, tmp_path, capsys):
    path, _ = image_png
    out = tmp_path / "o"
    cases = [
        (["--box", "1,1,3,3"], "missing.png", "not found"),
        (["--mask", str(tmp_path / "nomask.png")], None, "mask"),
        ([], None, "exactly one of --mask"),
        (["--box", "0,0,9,2"], None, "outside the 8×8 image"),
        (["--box", "2,2,2,5"], None, "empty or outside"),
        (["--box", "1,2,3"], None, "four integers"),
        (["--box", "1,1,3,3", "--class", "3"], None, "class 3 is out of range"),
    ]
    for extra, image, msg in cases:
        assert _run(checkpoint, tmp_path / image if image else path, out, *extra) == 2, extra
        assert msg in _error_line(capsys), extra
    Image.fromarray(np.zeros((6, 8), dtype=np.uint8)).save(tmp_path / "small.png")
    assert _run(checkpoint, path, out, "--mask", str(tmp_path / "small.png")) == 2
    assert "is 8×6 but the image is 8×8" in _error_line(capsys)
    Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).save(tmp_path / "black.png")
    assert _run(checkpoint, path, out, "--mask", str(tmp_path / "black.png")) == 2
    assert "selects nothing" in _error_line(capsys)
    assert _run(tmp_path / "nockpt", path, out, "--box", "1,1,3,3") == 2
    assert "does not exist" in _error_line(capsys)
    assert not (out / "result.png").exists()
