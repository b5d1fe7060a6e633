"""mp4 writing (H.264 yuv420p, sizes in multiples of 16, upscaling, determinism, readable back) and strips."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from djepa.video.media import read_mp4, to_uint8_frames, trim_padding, write_frame_strip, write_mp4


def _frames():
    g = np.random.default_rng(0)
    f = np.zeros((6, 15, 17, 3), np.uint8)  # odd sizes on purpose
    for t in range(6):
        f[t, :, :] = (40 * t, 100, 200 - 30 * t)
        f[t, 2:6, t:t + 4] = 255
    f[0] += g.integers(0, 3, f[0].shape, dtype=np.uint8)
    return f


def test_mp4_is_h264_yuv420p_macroblock_sized_readable_and_deterministic(tmp_path):
    frames = _frames()
    assert write_mp4(tmp_path / "a.mp4", frames, fps=8) == "libx264"
    write_mp4(tmp_path / "b.mp4", frames, fps=8)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    with av.open(str(tmp_path / "a.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        # ×9 (15 → ≥ 128) of 17×15 = 153×135, padded to multiples of 16
        assert (s.width, s.height) == (160, 144) and float(s.average_rate) == 8
    back = read_mp4(tmp_path / "a.mp4")
    assert back.shape == (6, 144, 160, 3)
    # nearest-neighbour upscale: pixel (y, x) of the file is source pixel (y // 9, x // 9)
    err = np.abs(back[:, 4::9, 4::9][:, :15, :17].astype(int) - frames.astype(int))
    assert np.median(err) <= 3 and err.mean() < 6


def test_mpeg4_fallback(tmp_path):
    assert write_mp4(tmp_path / "m.mp4", _frames(), codec="mpeg4") == "mpeg4"
    assert len(read_mp4(tmp_path / "m.mp4")) == 6


def test_trim_and_strip(tmp_path):
    v = torch.full((1, 6, 4, 4), 0.3)
    v[:, 4:] = 0.02
    v[:, 2] = 0.0  # a dark frame in the middle is kept
    assert trim_padding(v) == 4 and trim_padding(v, 0) == 6 and trim_padding(torch.zeros(1, 3, 2, 2)) == 1
    frames = to_uint8_frames(v)
    assert frames.shape == (6, 4, 4, 3) and frames[0, 0, 0, 0] == round(0.3 * 255)
    p = write_frame_strip(tmp_path / "s.png", [frames, frames[:2]], scale=2, gap=1)
    from PIL import Image

    assert Image.open(p).size == (6 * 9 + 1, 2 * 9 + 1)


def test_bad_frames_refused(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", np.zeros((0, 4, 4, 3), np.uint8))
