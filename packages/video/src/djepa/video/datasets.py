"""Video data sets in their fields' on-disk layouts, and the embedded moving-digits default.

Every data set yields ``(video [C, T, H, W] float32 in [0, 1], label int, valid int)``: a clip of
exactly ``T`` frames (the clip length) whose first ``valid`` frames are real and the rest zero
padding (paper App. G.3: "zero padding for videos shorter than 20 seconds").
:func:`frame_padding` / :func:`token_padding` turn ``valid`` into masks.

* :class:`VideoFolder`: ``root/<Class>/<video files>`` — UCF101 as distributed
  (``UCF-101/<Class>/v_<Class>_gXX_cYY.avi``) with the official split files
  (``classInd.txt``, ``trainlist0N.txt``, ``testlist0N.txt``), or Kinetics-style class folders
  of ``.mp4``. Class ids: ``classInd.txt`` when given (0-based), else the case-insensitive order
  of the folder names (:mod:`djepa.video.classes`). Frames decoded with PyAV at 8 fps
  (:mod:`djepa.video.decode`). Bad videos (truncated, 0 frames, no video stream, unreadable) are
  warned about by name and skipped.
* :class:`MovingDigits`: scikit-learn's real 8×8 handwritten digits moving across small frames;
  class = digit × direction of motion (default 5 digits × 4 directions = 20 classes), clips of
  varied length (zero-padded) in which the digit may leave the frame early.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from djepa.video.classes import read_class_ind, ucf_sorted
from djepa.video.decode import BadVideo, decode_video

__all__ = ["VIDEO_EXTENSIONS", "DIRECTIONS", "VideoFolder", "MovingDigits", "frame_padding", "token_padding",
           "read_split_list", "pad_clip"]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
DIRECTIONS = ("right", "left", "down", "up")
_STEP = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}


def frame_padding(valid: torch.Tensor | Sequence[int], frames: int) -> torch.Tensor:
    """``[B, T] bool``, True = padding frame (frame index ``≥ valid[b]``)."""
    v = torch.as_tensor(valid).reshape(-1, 1)
    return torch.arange(frames)[None, :] >= v


def token_padding(valid: torch.Tensor | Sequence[int], grid: tuple[int, int, int], frames_per_token: int,
                  first_step_frames: int | None = None) -> torch.Tensor:
    """``[B, N] bool``, True = a token whose frames are all padding (row-major ``(t, y, x)`` grid).

    Temporal step ``i`` covers frames ``[s_i, s_i + frames_per_token)`` (``first_step_frames``:
    a shorter first step, e.g. a causal VAE's); it is padding when ``s_i ≥ valid``.
    """
    gt, gh, gw = grid
    first = frames_per_token if first_step_frames is None else first_step_frames
    starts = torch.tensor([0] + [first + (i - 1) * frames_per_token for i in range(1, gt)])
    v = torch.as_tensor(valid).reshape(-1, 1)
    pad_t = starts[None, :] >= v  # [B, gt]
    return pad_t[:, :, None].expand(-1, gt, gh * gw).reshape(v.shape[0], gt * gh * gw)


def pad_clip(frames: np.ndarray, length: int) -> tuple[np.ndarray, int]:
    """``[t, H, W, C] uint8`` → ``([length, H, W, C], valid = min(t, length))`` with zero frames."""
    t = min(len(frames), length)
    out = np.zeros((length,) + frames.shape[1:], dtype=frames.dtype)
    out[:t] = frames[:t]
    return out, t


def read_split_list(path: str | os.PathLike[str]) -> list[str]:
    """Relative paths of a UCF101 ``trainlist0N.txt`` (``Class/v_….avi <id>``) or ``testlist0N.txt``
    (``Class/v_….avi``); forward slashes.

    Raises:
        FileNotFoundError: no such file.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"split file {p} not found")
    return [line.split()[0].replace("\\", "/") for line in p.read_text().splitlines() if line.strip()]


class VideoFolder(torch.utils.data.Dataset):
    """Class-folder videos (UCF101 / Kinetics layout; module docstring).

    Args:
        root: the folder of class folders (``UCF-101``).
        frames: clip length ``T`` at ``fps`` (paper 160 at 8 fps).
        fps: output frame rate.
        size: ``(H, W)`` or None (native; then every video must have the same size).
        mode: ``"crop"`` / ``"resize"`` (see :func:`djepa.video.decode.fit_frame`).
        class_ind: UCF101 ``classInd.txt`` (ids from it) or None (folder order, case-insensitive).
        split_file: a ``trainlist0N.txt`` / ``testlist0N.txt``: only those videos.
        grey: convert to one channel.

    Raises:
        FileNotFoundError: missing root / files. ValueError: no usable video, a video whose class
            is not in ``classInd.txt``, native frames of different sizes.
    """

    def __init__(self, root: str | os.PathLike[str], *, frames: int = 160, fps: float = 8.0,
                 size: tuple[int, int] | None = None, mode: Literal["crop", "resize"] = "crop",
                 class_ind: str | os.PathLike[str] | None = None, split_file: str | os.PathLike[str] | None = None,
                 grey: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"video folder {self.root} does not exist")
        folders = [d.name for d in self.root.iterdir() if d.is_dir()]
        self.class_names = read_class_ind(class_ind) if class_ind else ucf_sorted(folders)
        index = {n: i for i, n in enumerate(self.class_names)}
        lower = {n.lower(): i for i, n in enumerate(self.class_names)}
        if split_file is not None:
            rel = read_split_list(split_file)
            files = [self.root / r for r in rel]
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{len(missing)} video(s) of {split_file} are missing under {self.root}, "
                                        f"e.g. {missing[0]}")
        else:
            files = sorted(f for f in self.root.glob("*/*") if f.suffix.lower() in VIDEO_EXTENSIONS)
        self.frames, self.fps, self.size, self.mode, self.grey = int(frames), float(fps), size, mode, grey
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.valid: list[int] = []
        self._clips: list[np.ndarray] = []
        self.skipped: list[str] = []
        for f in files:
            cls = f.parent.name
            if cls not in index and cls.lower() not in lower:
                raise ValueError(f"{f}: class folder {cls!r} is not in {class_ind}")
            try:
                clip, _ = decode_video(f, fps=self.fps, max_frames=self.frames, size=size, mode=mode)
            except BadVideo as e:
                warnings.warn(f"skipping bad video {e}", stacklevel=2)
                self.skipped.append(f.name)
                continue
            if grey:
                clip = np.round(clip.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
                clip = clip.clip(0, 255).astype(np.uint8)[..., None]
            padded, valid = pad_clip(clip, self.frames)
            if self._clips and padded.shape != self._clips[0].shape:
                raise ValueError(f"{f}: frames {padded.shape[1]}×{padded.shape[2]} differ from "
                                 f"{self._clips[0].shape[1]}×{self._clips[0].shape[2]}; pass a frame size (--frame-size H W)")
            self.files.append(f)
            self.labels.append(index.get(cls, lower.get(cls.lower())))
            self.valid.append(valid)
            self._clips.append(padded)
        if not self.files:
            raise ValueError(f"no usable video under {self.root} ({len(self.skipped)} skipped)")
        self.height, self.width, self.channels = (int(s) for s in self._clips[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.files)

    def item_name(self, i: int) -> str:
        return str(self.files[i].relative_to(self.root))

    def label_of(self, i: int) -> int:
        return self.labels[i]

    def valid_of(self, i: int) -> int:
        return self.valid[i]

    def __getitem__(self, i: int):
        clip = torch.from_numpy(self._clips[i]).permute(3, 0, 1, 2).float() / 255.0  # [C, T, H, W]
        return clip, self.labels[i], self.valid[i]


class MovingDigits(torch.utils.data.Dataset):
    """Class-conditional moving handwritten digits (embedded default, no download).

    Each clip: a real 8×8 scikit-learn digit (values ``d/16``) pasted on a background of
    ``background`` at an integer position that moves 1 or 2 pixels per frame (drawn per clip) in the class's
    direction, clipped at the frame border (the digit may leave early). The clip has ``valid``
    real frames (uniform in ``[min_frames, frames]``), then zero frames (padding; black, darker
    than the background, so padding is recognisable — the sampler's trim rule,
    :func:`djepa.video.media.trim_padding`). Pixel value ``background + (1 − background)·d/16``.

    Class ``c = digit_index · 4 + direction`` with directions ``right, left, down, up``; names
    ``"<digit>-<direction>"``. Split: digit images with ``index % 5 == 0`` are ``test`` (held out),
    the rest ``train``; each image appears once per direction and ``repeats`` times with other
    positions / lengths (deterministic from ``seed`` and the item index).

    Args:
        split: ``"train"`` / ``"test"``.
        digits: which digits (default 0–4).
        frames, size: clip length and square frame side.
        min_frames: the shortest clip.
        repeats: positions / lengths per image and direction.
        background: background intensity.
        seed: the data set's seed.
        start: ``"random"`` (start anywhere along / across the motion, 1 or 2 px per frame:
            about 90 trajectories per class, so the model must read the digit's position from
            its context) or ``"edge"`` (start at the edge the motion comes from, centred across
            it, 1 px per frame: one trajectory per class, the video analogue of the centred
            image digits; at 12×12 the digit has 3 of its 8 columns out of the frame by the 8th
            frame). Lengths and padding are drawn as before in both.
    """

    def __init__(self, split: Literal["train", "test"] = "train", *, digits: Sequence[int] = (0, 1, 2, 3, 4),
                 frames: int = 8, size: int = 16, min_frames: int = 5, repeats: int = 2,
                 background: float = 0.25, seed: int = 0, start: Literal["random", "edge"] = "random") -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 1 <= min_frames <= frames or size < 8:
            raise ValueError(f"need 1 <= min_frames <= frames and size >= 8, got {min_frames}, {frames}, {size}")
        d = load_digits()
        self.digits = tuple(int(x) for x in digits)
        pick = [i for i, t in enumerate(d.target) if int(t) in self.digits
                and ((i % 5 == 0) == (split == "test"))]
        self.images = (d.images[pick] / 16.0).astype(np.float32)  # [M, 8, 8]
        self.digit_index = np.array([self.digits.index(int(t)) for t in d.target[pick]])
        self.frames, self.size, self.min_frames, self.repeats = int(frames), int(size), int(min_frames), int(repeats)
        self.background, self.seed, self.split = float(background), int(seed), split
        if start not in ("random", "edge"):
            raise ValueError(f"start must be 'random' or 'edge', got {start!r}")
        self.start = start
        self.class_names = [f"{g}-{r}" for g in self.digits for r in DIRECTIONS]
        self.height = self.width = self.size
        self.channels = 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images) * len(DIRECTIONS) * self.repeats

    def _parts(self, i: int) -> tuple[int, int, np.random.Generator]:
        img, rest = divmod(i, len(DIRECTIONS) * self.repeats)
        direction = rest % len(DIRECTIONS)
        rng = np.random.default_rng([self.seed, 0 if self.split == "train" else 1, i])
        return img, direction, rng

    def label_of(self, i: int) -> int:
        img, direction, _ = self._parts(i)
        return int(self.digit_index[img]) * len(DIRECTIONS) + direction

    def valid_of(self, i: int) -> int:
        return self._clip(i)[2]

    def item_name(self, i: int) -> str:
        return f"moving-digits/{self.split}/{i}"

    def _clip(self, i: int) -> tuple[np.ndarray, int, int]:
        img, direction, rng = self._parts(i)
        s, t_len = self.size, self.frames
        dy, dx = _STEP[DIRECTIONS[direction]]
        valid = int(rng.integers(self.min_frames, t_len + 1))
        if self.start == "random":
            speed = int(rng.integers(1, 3))
            # start so the digit is (mostly) inside at first; moving 1-2 px/frame it may leave early
            lo, hi = -2, s - 8 + 2
            along = int(rng.integers(lo, hi + 1))
            across = int(rng.integers(0, s - 8 + 1))
        else:  # "edge": enter at the edge the motion starts from, centred across, 1 px/frame
            speed, along, across = 1, 0, (s - 8) // 2
        y0, x0 = (across, along) if dy == 0 else (along, across)
        if dx < 0:
            x0 = s - 8 - x0
        if dy < 0:
            y0 = s - 8 - y0
        digit = self.images[img]
        clip = np.zeros((t_len, s, s), np.float32)
        bg = self.background
        for t in range(valid):
            frame = np.full((s, s), bg, np.float32)
            y, x = y0 + dy * speed * t, x0 + dx * speed * t
            ys, xs = max(y, 0), max(x, 0)
            ye, xe = min(y + 8, s), min(x + 8, s)
            if ys < ye and xs < xe:
                patch = digit[ys - y:ye - y, xs - x:xe - x]
                frame[ys:ye, xs:xe] = bg + (1.0 - bg) * patch
            clip[t] = frame
        return clip, self.label_of(i), valid

    def __getitem__(self, i: int):
        clip, label, valid = self._clip(i)
        return torch.from_numpy(clip).unsqueeze(0), label, valid  # [1, T, H, W]
