"""Sampling videos (Algorithm 1 on the 3-D grid) and the training preview of ``video-train``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from djepa.core.config import SamplerConfig
from djepa.core.train.preview import Preview, PreviewRequest
from djepa.video.media import DEFAULT_PAD_THRESHOLD, to_uint8_frames, trim_padding, write_frame_strip, write_mp4

__all__ = ["sample_videos", "VideoPreview"]


def sample_videos(model: nn.Module, tokenizer: Any, labels: Tensor, sampler: SamplerConfig,
                  generators: list[torch.Generator], *, known_tokens: Tensor | None = None,
                  known_mask: Tensor | None = None, pad_threshold: float = DEFAULT_PAD_THRESHOLD,
                  ) -> tuple[Tensor, list[int]]:
    """Generate clips for ``labels [B]`` (row ``i`` draws from ``generators[i]``: batched = alone).

    Returns:
        ``(videos [B, C, T, H, W] in [0, 1] (full length), kept [B])``: ``kept[i]`` frames survive
        the trailing-padding trim (:func:`djepa.video.media.trim_padding`).
    """
    from djepa.core.sampler import generate

    device = next(model.parameters()).device
    tokens = generate(model, labels.to(device), sampler, generators=generators,
                      known_tokens=known_tokens, known_mask=known_mask,
                      clip_range=tokenizer.value_range).float().cpu()
    videos = tokenizer.decode(tokens).clamp(0, 1)
    kept = [trim_padding(v, pad_threshold) for v in videos]
    return videos, kept


@dataclass
class VideoPreview:
    """One clip per class (up to ``num_videos``) as a PNG frame strip (a row per class, trimmed)
    plus the first clip as mp4, under ``RUN/samples``; row ``i`` is seeded ``seed + i``."""

    tokenizer: Any
    class_names: Sequence[str]
    sampler: SamplerConfig
    fps: float = 8.0
    num_videos: int = 20

    def __call__(self, model: nn.Module, request: PreviewRequest) -> Preview:
        n = min(self.num_videos, len(self.class_names))
        labels = torch.arange(n)
        videos, kept = sample_videos(model, self.tokenizer, labels, self.sampler, request.generators(n))
        frames = [to_uint8_frames(v[:, :k]) for v, k in zip(videos, kept)]
        strip = write_frame_strip(request.path(".png"), frames, scale=2)
        mp4 = request.path(".mp4")
        write_mp4(mp4, frames[0], self.fps)
        import numpy as np
        from PIL import Image

        img = torch.from_numpy(np.asarray(Image.open(strip).convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0
        return Preview(files=(strip, mp4), tensorboard_image=img)
