"""Video media out: mp4 files through PyAV, PNG frame strips, and the trailing-padding trim rule.

mp4 (MODALITIES.md): H.264 (``libx264``) in ``yuv420p`` — the pixel format every player
decodes — needs even frame sizes, so frames are upscaled by an integer factor (nearest
neighbour) until the shorter side is at least ``min_side`` (tiny 16×16 clips → 128×128) and
padded (edge pixels repeated) to multiples of 16, the H.264 macroblock; ``mpeg4`` (Part 2) is
the fallback when libx264 is missing or fails.
The encoders run single-threaded with fixed settings, frame pts 0, 1, … and no timestamps in
the metadata, so the same frames give the same bytes. libx264 also runs without its rate-control
lookahead and macroblock tree (``mbtree=0:rc-lookahead=0``): with them, writing the same frames a
second time in one process gave other bytes (decoded frames up to 48/255 apart), at 130×130,
132×132, 154×154 and, for noisy frames, 144×144.

Trim rule (paper App. G.3: the model "decides when to terminate video generation"): training
clips are zero-padded after their last real frame; a generated clip is cut after its last frame
whose mean intensity (over pixels and channels, in ``[0, 1]``) is at least ``threshold``
(default 0.1): trailing frames darker than that decode to padding. At least one frame is kept.
``threshold = 0`` keeps every frame. A real video whose last frames are black would be trimmed
too (documented; pass 0 for such data).
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["trim_padding", "to_uint8_frames", "write_mp4", "read_mp4", "write_frame_strip", "DEFAULT_PAD_THRESHOLD"]

DEFAULT_PAD_THRESHOLD = 0.1


def trim_padding(video: Tensor, threshold: float = DEFAULT_PAD_THRESHOLD) -> int:
    """Frames to keep of ``video [C, T, H, W]`` in ``[0, 1]``: ``1 + index`` of the last frame
    with mean ``≥ threshold`` (at least 1; ``T`` when ``threshold <= 0``)."""
    t = video.shape[1]
    if threshold <= 0:
        return t
    means = video.float().mean(dim=(0, 2, 3))
    keep = torch.nonzero(means >= threshold).flatten()
    return max(1, int(keep[-1]) + 1) if len(keep) else 1


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """``[C, T, H, W]`` float in ``[0, 1]`` (C = 1 or 3) → ``[T, H, W, 3] uint8`` (rounded)."""
    v = video.detach().float().clamp(0, 1).cpu()
    if v.shape[0] == 1:
        v = v.expand(3, -1, -1, -1)
    return (v.permute(1, 2, 3, 0) * 255.0).round().to(torch.uint8).numpy()


def _upscaled(frames: np.ndarray, min_side: int, multiple: int = 16) -> np.ndarray:
    t, h, w, c = frames.shape
    k = max(1, -(-min_side // min(h, w)))
    x = frames.repeat(k, axis=1).repeat(k, axis=2) if k > 1 else frames
    ph, pw = -x.shape[1] % multiple, -x.shape[2] % multiple
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return np.ascontiguousarray(x)


def write_mp4(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8.0, *, min_side: int = 128,
              codec: str = "libx264", multiple: int = 16) -> str:
    """Write ``frames [T, H, W, 3] uint8`` as an mp4 (module docstring); returns the codec used.

    ``multiple``: frame sizes are padded up to multiples of it (16: byte-stable H.264; 2, the
    least yuv420p allows, keeps e.g. a 12×12 clip at its size but its bytes may vary).

    Raises:
        ValueError: empty or badly shaped frames; an odd or < 2 ``multiple``.
    """
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0 or frames.dtype != np.uint8:
        raise ValueError(f"expected frames [T, H, W, 3] uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    if multiple < 2 or multiple % 2:
        raise ValueError(f"multiple must be an even number >= 2, got {multiple}")
    x = _upscaled(frames, min_side, multiple)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp.mp4")
    order = [codec] + (["mpeg4"] if codec != "mpeg4" else [])
    last_err: Exception | None = None
    for name in order:
        if name not in av.codecs_available:
            continue
        try:
            with av.open(str(tmp), mode="w", format="mp4") as out:
                rate = Fraction(fps).limit_denominator(1000)
                stream = out.add_stream(name, rate=rate)
                stream.width, stream.height = x.shape[2], x.shape[1]
                stream.pix_fmt = "yuv420p"
                stream.codec_context.thread_count = 1
                if name == "libx264":
                    stream.options = {"crf": "12", "preset": "medium", "threads": "1", "x264-params": "mbtree=0:rc-lookahead=0"}
                else:
                    stream.bit_rate = 4_000_000
                for i, f in enumerate(x):
                    frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
                    frame.pts = i
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            os.replace(tmp, p)
            return name
        except Exception as e:  # encoder missing / refused: try the fallback
            last_err = e
            tmp.unlink(missing_ok=True)
    raise RuntimeError(f"could not write {p}: no working encoder among {order} ({last_err})")


def read_mp4(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode all frames of a video file as ``[T, H, W, 3] uint8`` (PyAV)."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])


def write_frame_strip(path: str | os.PathLike[str], videos: list[np.ndarray], *, scale: int = 4,
                      gap: int = 2) -> Path:
    """A PNG with one row per video (``[T, H, W, 3] uint8`` each; rows may differ in length),
    frames left to right, ``scale``× nearest upscaling, ``gap`` px white between cells."""
    from PIL import Image

    h, w = videos[0].shape[1] * scale, videos[0].shape[2] * scale
    cols = max(len(v) for v in videos)
    canvas = np.full((len(videos) * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for r, v in enumerate(videos):
        for c, f in enumerate(v):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            canvas[y:y + h, x:x + w] = f.repeat(scale, 0).repeat(scale, 1)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(p)
    return p
