"""PyAV decoding of the real UCF101 .avi and Kinetics-style .mp4 clips at 8 fps; bad videos."""

from __future__ import annotations

import math
import warnings

import av
import numpy as np
import pytest

from djepa.video.datasets import VideoFolder
from djepa.video.decode import BadVideo, decode_video


def _native(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(s)]), float(s.average_rate)


@pytest.mark.parametrize("name, n_src, fps_src", [("ucf", 164, 25), ("demo", 280, 28), ("test", 300, 30)])
def test_8fps_frame_count_from_duration_and_frames_chosen(clips, name, n_src, fps_src):
    path = getattr(clips, name)
    frames, info = decode_video(path, fps=8.0)
    assert info.frames == n_src and info.rate == fps_src
    assert len(frames) == math.ceil(n_src / fps_src * 8 - 1e-9)  # UCF: 6.56 s → 53; mp4s: 10 s → 80
    native, _ = _native(path)
    for k in (0, 1, 7, len(frames) - 1):  # frame k/8 s is the last source frame at or before it
        assert np.array_equal(frames[k], native[int(math.floor(k * fps_src / 8 + 1e-9))])


def test_ucf_clip_first_frame_mean_and_native_size(clips):
    frames, _ = decode_video(clips.ucf, fps=8.0, max_frames=4)
    assert frames.shape == (4, 240, 320, 3)
    assert abs(frames[0].mean() - 87.119574652778) < 0.05  # the public reference value (SOURCE.txt)


def test_resize_and_centre_crop(clips):
    crop, _ = decode_video(clips.ucf, max_frames=1, size=(16, 16), mode="crop")
    stretch, _ = decode_video(clips.ucf, max_frames=1, size=(16, 16), mode="resize")
    assert crop.shape == stretch.shape == (1, 16, 16, 3)
    assert not np.array_equal(crop, stretch)


def test_bad_videos_raise_with_their_name(clips, tmp_path):
    data = clips.ucf.read_bytes()
    (tmp_path / "trunc.avi").write_bytes(data[: len(data) // 3])
    (tmp_path / "header.avi").write_bytes(data[:2000])
    (tmp_path / "text.mp4").write_text("not a video")
    with av.open(str(tmp_path / "audio.wav"), "w") as c:  # a file with no video stream
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
    with pytest.raises(BadVideo, match="trunc.avi: truncated"):
        decode_video(tmp_path / "trunc.avi")
    for name in ("header.avi", "text.mp4"):
        with pytest.raises(BadVideo, match=name):
            decode_video(tmp_path / name)
    with pytest.raises(BadVideo, match="audio.wav: has no video stream"):
        decode_video(tmp_path / "audio.wav")


def test_video_folder_skips_bad_videos_with_a_warning_and_pads(clips, tmp_path):
    root = tmp_path / "UCF-101" / "ApplyEyeMakeup"
    root.mkdir(parents=True)
    (root / "v_ApplyEyeMakeup_g01_c01.avi").symlink_to(clips.ucf)
    (root / "v_ApplyEyeMakeup_g02_c01.avi").write_bytes(clips.ucf.read_bytes()[:4000])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = VideoFolder(root.parent, frames=64, size=(16, 16))
    assert len(ds) == 1 and ds.skipped == ["v_ApplyEyeMakeup_g02_c01.avi"]
    assert any("v_ApplyEyeMakeup_g02_c01.avi" in str(x.message) for x in w)
    video, label, valid = ds[0]
    assert video.shape == (3, 64, 16, 16) and label == 0 and valid == 53
    assert video[:, 53:].abs().sum() == 0 and video[:, 52].sum() > 0  # zero padding after 53 frames


def test_kinetics_style_mp4_folders_decode(clips):
    ds = VideoFolder(clips.root / "kinetics400", frames=16, size=(32, 32))
    assert ds.class_names == ["arm_wrestling", "unlabeled"]
    assert len(ds) == 2 and [ds[i][2] for i in range(2)] == [16, 16]
