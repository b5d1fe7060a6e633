"""Token-grid arithmetic (one-line errors naming sizes that fit), the pixel-cube tokenizer and
padding masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from djepa.video.datasets import MovingDigits, frame_padding, token_padding
from djepa.video.grid import pixel_grid, vae_grid, vae_latent_shape
from djepa.video.media import trim_padding
from djepa.video.tokenizer import VideoPixelTokenizer


def test_paper_grid_is_3000_tokens():
    assert vae_latent_shape(160, 240, 320) == (40, 30, 40)
    assert vae_grid(160, 240, 320, (4, 2, 2)) == (10, 15, 20)
    assert vae_latent_shape(17, 64, 64) == (5, 8, 8)  # causal first frame: 1 + (17 − 1)/4
    assert pixel_grid(8, 16, 16, (2, 4, 4)) == (4, 4, 4)


@pytest.mark.parametrize("call, msg", [
    (lambda: pixel_grid(17, 16, 16, (4, 4, 4)), "frames 17 is not a multiple of 4 (use 16 or 20)"),
    (lambda: pixel_grid(8, 18, 16, (2, 4, 4)), "height 18 is not a multiple of 4 (use 16 or 20)"),
    (lambda: vae_latent_shape(150, 240, 320), "takes 1, 8k or 8k+1 frames, got 150 (use 145 or 152)"),
    (lambda: vae_latent_shape(160, 250, 320), "height a multiple of 8, got 250 (use 248 or 256)"),
    (lambda: vae_grid(152, 240, 320, (4, 2, 2)), "38 latent frames, not a multiple of patch 4 (use 144 or 160 frames)"),
    (lambda: vae_grid(160, 248, 320, (4, 2, 2)), "height 248 gives 31 latent pixels, not a multiple of patch 2 (use 240 or 256)"),
])
def test_grid_errors_name_sizes_that_fit(call, msg):
    with pytest.raises(ValueError) as e:
        call()
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_pixel_tokenizer_round_trip_and_layout():
    tok = VideoPixelTokenizer(3, 4, 8, 12, (2, 4, 4))
    x = torch.rand(2, 3, 4, 8, 12)
    t = tok.encode(x)
    assert t.shape == (2, 2 * 2 * 3, 3 * 2 * 4 * 4) and tok.grid == (2, 2, 3)
    assert torch.equal(tok.decode(t, clamp=False), (t.new_tensor(0) + (2 * x - 1) + 1) / 2)
    torch.testing.assert_close(tok.decode(t), x, rtol=0, atol=1e-6)
    # token (i, j, k) = cube starting at frame 2i, row 4j, col 4k; inside (c, t, y, x)
    i, j, k = 1, 0, 2
    cube = 2 * x[0, :, 2 * i:2 * i + 2, 4 * j:4 * j + 4, 4 * k:4 * k + 4] - 1
    assert torch.equal(t[0, (i * 2 + j) * 3 + k], cube.reshape(-1))
    assert tok.value_range == (-1.0, 1.0)
    assert VideoPixelTokenizer.from_config(tok.to_config()).to_config() == tok.to_config()


def test_padding_masks():
    assert frame_padding([2, 4], 4).tolist() == [[False, False, True, True], [False] * 4]
    m = token_padding([3, 8, 4], (4, 1, 2), frames_per_token=2)  # steps start at frames 0, 2, 4, 6
    assert m.tolist() == [[False] * 4 + [True] * 4, [False] * 8, [False] * 4 + [True] * 4]
    m = token_padding([1, 2], (3, 1, 1), frames_per_token=4, first_step_frames=1)  # starts 0, 1, 5
    assert m.tolist() == [[False, True, True], [False, False, True]]


def test_moving_digits_classes_lengths_and_trim_rule():
    ds = MovingDigits("test")
    assert ds.num_classes == 20 and ds.class_names[12] == "3-right"
    lengths = [ds.valid_of(i) for i in range(len(ds))]
    assert min(lengths) == 5 and max(lengths) == 8  # varied lengths: padding exercised
    left_early = 0
    for i in range(0, len(ds), 7):
        video, label, valid = ds[i]
        assert label == ds.label_of(i) and video.shape == (1, 8, 16, 16)
        assert video[:, valid:].abs().sum() == 0  # zero padding
        assert trim_padding(video) == valid  # the trim rule recovers every real clip's length
        fg = (video[0, :valid] > 0.26).flatten(1).sum(1)
        left_early += int((fg == 0).any())
    assert left_early > 0  # some digits leave the frame before the clip ends
    # class = digit × direction: same image, "right" vs "left" differ only by motion
    a, b = ds[0][0], ds[1][0]
    assert ds.label_of(0) // 4 == ds.label_of(1) // 4 and ds.label_of(0) % 4 != ds.label_of(1) % 4
    assert not torch.equal(a, b)


def test_moving_digits_edge_start_is_one_trajectory_per_class():
    """start="edge": every clip enters at the edge its motion comes from, centred across it, and
    moves 1 px per frame; checked against the scikit-learn digit pasted by hand."""
    from sklearn.datasets import load_digits

    ds = MovingDigits("train", size=12, start="edge")
    raw = load_digits()
    picked = [i for i, t in enumerate(raw.target) if int(t) in ds.digits and i % 5 != 0]
    for i in (0, 1, 2, 3, 41, 42):
        video, label, valid = ds[i]
        img, direction = i // (4 * ds.repeats), label % 4
        digit = raw.images[picked[img]] / 16.0
        for t in range(valid):
            want = np.full((12, 12), 0.25, np.float32)
            canvas = np.zeros((12 + 16, 12 + 16), np.float32)  # room for the digit outside the frame
            mask = np.zeros_like(canvas, dtype=bool)
            y, x = {0: (2, t), 1: (2, 4 - t), 2: (t, 2), 3: (4 - t, 2)}[direction]  # right, left, down, up
            canvas[8 + y:8 + y + 8, 8 + x:8 + x + 8] = digit
            mask[8 + y:8 + y + 8, 8 + x:8 + x + 8] = True
            inside = mask[8:20, 8:20]
            want[inside] = 0.25 + 0.75 * canvas[8:20, 8:20][inside]
            np.testing.assert_allclose(video[0, t].numpy(), want, atol=1e-6)
        assert video[:, valid:].abs().sum() == 0
    with pytest.raises(ValueError, match="start"):
        MovingDigits("train", start="middle")
