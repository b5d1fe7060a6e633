"""Observability on rank 0: progress bar, log lines, TensorBoard scalars and images; the PNG
grid writer of :func:`~djepa.core.train.preview.image_grid_preview`."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["make_grid", "write_png", "Observer"]


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 2) -> Tensor:
    """Tile ``images: [B, C, H, W]`` in [0, 1] into one ``[C, H', W']`` image (C ∈ {1, 3})."""
    if images.ndim != 4:
        raise ValueError(f"sample images must be [B, C, H, W], got shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    ncol = math.ceil(b / nrow)
    grid = images.new_ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def write_png(path: Path, image: Tensor) -> None:
    """Write ``image: [C, H, W]`` in [0, 1] (C = 1 or 3) as an 8-bit PNG (no extra dependency)."""
    img = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    c, h, w = img.shape
    if c not in (1, 3):
        raise ValueError(f"PNG needs 1 or 3 channels, got {c}")
    raw = img.permute(1, 2, 0).contiguous().numpy().reshape(h, w * c)
    data = b"".join(b"\x00" + row.tobytes() for row in raw)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if c == 1 else 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(data)) \
        + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


class Observer:
    """Progress bar + TensorBoard writer; every method is a no-op off rank 0."""

    def __init__(self, output_dir: Path, *, active: bool, start_step: int, max_steps: int,
                 tensorboard: bool, progress_bar: bool) -> None:
        self.active = active
        self.output_dir = output_dir
        self.writer: Any = None
        self.bar: Any = None
        if not active:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"),
                                        purge_step=start_step if start_step > 0 else None)
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            smoothing=0.1)

    def step(self, step: int, postfix: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def log(self, message: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def image(self, step: int, tag: str, image: Tensor) -> None:
        """Add one ``[C, H, W]`` image in ``[0, 1]`` to TensorBoard (no-op without a writer)."""
        if self.writer is not None:
            self.writer.add_image(tag, image.detach().float().cpu().clamp(0, 1), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
