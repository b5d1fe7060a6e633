"""Sampling images for prompts (Algorithm 1, paper §3.5, with the text condition) and the
training preview of ``t2i-train``: a PNG grid, one row per prompt, the prompt written beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from djepa.core.config import SamplerConfig
from djepa.core.train.preview import Preview, PreviewRequest

__all__ = ["sample_images", "T2IGridPreview", "save_prompt_grid"]


@torch.no_grad()
def sample_images(model: nn.Module, tokenizer: Any, text: Any, prompts: Sequence[str],
                  sampler: SamplerConfig, generators: Sequence[torch.Generator],
                  device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Images for ``prompts`` (row ``i`` draws from ``generators[i]``: batched = one by one).

    Args:
        model: a sequence-conditioned :class:`~djepa.core.model.DJEPA`.
        tokenizer: the image tokenizer (``decode``, ``value_range``).
        text: a :class:`~djepa.multimodal.text_encoder.TextEncoder` or ``TextStateCache``.
        prompts: one per image; an empty prompt is the unconditional sample (null text).
        sampler: AR steps, cfg, temperature, denoising steps.

    Returns:
        ``(images [B, 3, H, W] float32 in [0, 1], tokens [B, N, D] float32 before decoding)``.
    """
    from djepa.core.sampler import generate
    from djepa.multimodal.text_encoder import condition_for

    cond = condition_for(model, prompts, text)
    tokens = generate(model, cond, sampler, generators=list(generators),
                      clip_range=tokenizer.value_range).float().cpu()
    return tokenizer.decode(tokens).clamp(0, 1), tokens


def save_prompt_grid(images: Tensor, prompts: Sequence[str], per_prompt: int, path) -> Any:
    """``images`` (``len(prompts) · per_prompt``, prompt-major) as one grid: a row per prompt,
    the prompt in the left margin ("(empty: unconditional)" for an empty one)."""
    from djepa.image.grid import save_image_grid

    labels = [p if p.strip() else "(empty: unconditional)" for p in prompts]
    return save_image_grid(images, path, nrow=per_prompt, labels=labels)


@dataclass
class T2IGridPreview:
    """A :class:`~djepa.core.train.preview.PreviewHook`: ``per_prompt`` samples of each prompt
    as a captioned grid ``RUN/samples/step_XXXXXXXX.png`` plus the prompts in
    ``step_XXXXXXXX.txt``; image ``i`` (prompt-major) uses the request's generator ``i``."""

    tokenizer: Any
    text: Any
    prompts: Sequence[str]
    sampler: SamplerConfig
    per_prompt: int = 4

    def __call__(self, model: nn.Module, request: PreviewRequest) -> Preview:
        from torchvision.utils import make_grid

        rows = [p for p in self.prompts for _ in range(self.per_prompt)]
        images, _ = sample_images(model, self.tokenizer, self.text, rows, self.sampler,
                                  request.generators(len(rows)), request.device)
        path = save_prompt_grid(images, list(self.prompts), self.per_prompt, request.path(".png"))
        txt = request.path(".txt")
        txt.write_text("\n".join(self.prompts) + "\n")
        return Preview(files=(path, txt), tensorboard_image=make_grid(images, nrow=self.per_prompt, padding=2,
                                                                      pad_value=0.5))
