"""Video files → fixed-length clips of frames resampled to a frame rate (paper App. G.3).

The paper samples UCF101 at **8 frames per second**, keeps a fixed clip length (160 frames =
20 s), zero-pads shorter videos and trains on the native 240×320 frames. Here:

* decoding is PyAV (FFmpeg), every container it reads (.avi XviD, .mp4 H.264, …);
* resampling: source frame ``i`` is shown from ``i / r_src`` (the stream's average rate; the
  frame's own timestamp when the container declares none); output frame ``k`` (time ``k / fps``)
  is the last source frame shown at or before it, for every ``k`` with ``k / fps < duration``,
  ``duration = n_src / r_src`` — so a video yields ``ceil(duration · fps)`` frames (the real
  UCF101 clip: 164 frames at 25 fps = 6.56 s → 53 frames at 8 fps);
* geometry: ``size=None`` keeps the native frames; ``size=(H, W)`` with ``mode="crop"`` scales
  the shorter side to fit and centre-crops, ``mode="resize"`` scales to exactly ``H × W``
  (bilinear, Pillow);
* clips start at the video's first frame and stop after ``max_frames``.

Bad files raise :class:`BadVideo` (a ``ValueError``) with the file name: not a video / no video
stream / 0 decodable frames / truncated (fewer frames decoded than the container declares, by
more than ``max(2, 5 %)``). Data sets warn and skip them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["BadVideo", "VideoInfo", "decode_video", "resampled_count", "fit_frame"]


class BadVideo(ValueError):
    """A file that cannot be used as a video (message names the file and why)."""


class VideoInfo:
    """Container facts: ``frames`` declared (0 = unknown), ``rate`` (fps, float or None),
    ``width``, ``height``."""

    def __init__(self, frames: int, rate: float | None, width: int, height: int) -> None:
        self.frames, self.rate, self.width, self.height = frames, rate, width, height


def resampled_count(num_source_frames: int, source_fps: float, fps: float) -> int:
    """``ceil(duration · fps)`` with ``duration = num_source_frames / source_fps`` (frames the
    resampling yields; a relative 1e-9 slack so exact products are not rounded up)."""
    return int(math.ceil(num_source_frames / source_fps * fps - 1e-9))


def fit_frame(frame: np.ndarray, size: tuple[int, int] | None, mode: Literal["crop", "resize"] = "crop") -> np.ndarray:
    """``frame [h, w, 3] uint8`` → ``[H, W, 3] uint8`` (module docstring); unchanged when
    ``size`` is None or already equal."""
    if size is None or tuple(frame.shape[:2]) == tuple(size):
        return frame
    from PIL import Image

    h, w = frame.shape[:2]
    oh, ow = size
    img = Image.fromarray(frame)
    if mode == "resize":
        return np.asarray(img.resize((ow, oh), Image.BILINEAR))
    if mode != "crop":
        raise ValueError(f"frame mode must be 'crop' or 'resize', got {mode!r}")
    s = max(oh / h, ow / w)
    nh, nw = max(oh, round(h * s)), max(ow, round(w * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    top, left = (nh - oh) // 2, (nw - ow) // 2
    return np.asarray(img.crop((left, top, left + ow, top + oh)))


def decode_video(path: str | os.PathLike[str], *, fps: float = 8.0, max_frames: int | None = None,
                 size: tuple[int, int] | None = None, mode: Literal["crop", "resize"] = "crop",
                 check_truncation: bool = True) -> tuple[np.ndarray, VideoInfo]:
    """Decode ``path`` into frames resampled to ``fps`` (module docstring).

    Args:
        path: any container PyAV/FFmpeg reads.
        fps: output frame rate (paper: 8).
        max_frames: stop after this many output frames (the clip length; None = all).
        size: ``(H, W)`` output size, or None for the native size.
        mode: ``"crop"`` (scale the shorter side, centre-crop) or ``"resize"``.
        check_truncation: compare the decoded frame count with the declared one (only when the
            whole video is decoded, i.e. ``max_frames`` was not reached).

    Returns:
        ``(frames [T, H, W, 3] uint8, info)``.

    Raises:
        BadVideo: unreadable, no video stream, 0 frames, truncated.
        FileNotFoundError: no such file.
    """
    import av

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video file {p} not found")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    out: list[np.ndarray] = []
    try:
        container = av.open(str(p))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise BadVideo(f"{p.name}: not a readable video ({type(e).__name__}: {e})") from None
    with container:
        if not container.streams.video:
            raise BadVideo(f"{p.name}: has no video stream")
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else None
        info = VideoInfo(int(stream.frames or 0), rate, int(stream.width or 0), int(stream.height or 0))
        n_src, k, t0, last, done = 0, 0, None, None, False
        try:
            for frame in container.decode(stream):
                if rate is not None:
                    t = n_src / rate
                else:
                    ft = frame.time if frame.time is not None else float(n_src)
                    t0 = ft if t0 is None else t0
                    t = ft - t0
                # frames k with k/fps < t belong to the previous source frame
                while last is not None and k / fps < t - 1e-9:
                    out.append(last)
                    k += 1
                    if max_frames is not None and k >= max_frames:
                        done = True
                        break
                if done:
                    break
                last = fit_frame(frame.to_ndarray(format="rgb24"), size, mode)
                n_src += 1
        except av.FFmpegError as e:
            raise BadVideo(f"{p.name}: decoding failed after {n_src} frames ({type(e).__name__}: {e})") from None
        if n_src == 0:
            raise BadVideo(f"{p.name}: 0 decodable video frames")
        if not done:
            end = n_src / rate if rate is not None else (n_src if t0 is None else t + 1.0 / fps)
            while k / fps < end - 1e-9 and (max_frames is None or k < max_frames):
                out.append(last)
                k += 1
            declared = info.frames
            if check_truncation and declared > 0 and n_src < declared - max(2, declared // 20):
                raise BadVideo(f"{p.name}: truncated: {n_src} of {declared} declared frames decode")
    return np.stack(out), info
