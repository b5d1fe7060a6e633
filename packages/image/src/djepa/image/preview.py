"""The training preview of ``image-train``: a labelled PNG grid of class-conditional samples from
the EMA model (a :class:`~djepa.core.train.preview.PreviewHook`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from djepa.core.config import SamplerConfig
from djepa.core.train.preview import Preview, PreviewRequest

__all__ = ["ImageGridPreview"]


@dataclass
class ImageGridPreview:
    """Sample about ``num_images`` class-conditional images with Algorithm 1 (§3.5) and write
    them as one grid to ``RUN/samples/step_XXXXXXXX.png``: ``num_images // num_classes`` per
    class, a row per class labelled with its name; with more classes than ``num_images``, one
    image of each of the first ``num_images`` classes, labelled under each cell.

    Image ``i`` of the grid (row-major) draws its orders and noise from its own generator seeded
    ``TrainConfig.seed + i`` (:meth:`PreviewRequest.generators`), so a preview does not depend on
    the number of classes or images per class sampled with it.

    Attributes:
        tokenizer: the run's image tokenizer (``decode`` → ``[B, C, H, W]`` in [0, 1],
            ``value_range`` for the sampler's clamp).
        class_names: one name per class id.
        sampler: the :class:`~djepa.core.config.SamplerConfig` of the preview.
        num_images: the grid's size (100: 10 × 10 for ten classes).
    """

    tokenizer: Any
    class_names: Sequence[str]
    sampler: SamplerConfig
    num_images: int = 100

    @property
    def per_class(self) -> int:
        return max(1, self.num_images // len(self.class_names))

    def labels(self) -> Tensor:
        """``[B]`` int64, ``B <= num_images``: class ``c`` repeated :attr:`per_class` times, in order."""
        return torch.arange(len(self.class_names)).repeat_interleave(self.per_class)[:self.num_images]

    def __call__(self, model: nn.Module, request: PreviewRequest) -> Preview:
        """Returns:
            :class:`Preview` with the PNG's path and the same images tiled (2-px mid-gray
            padding, the PNG's layout) as the TensorBoard image ``[C, H', W']`` in [0, 1].
        """
        import math

        from torchvision.utils import make_grid

        from djepa.core.sampler import generate
        from djepa.image.grid import save_image_grid

        labels = self.labels()
        tokens = generate(model, labels.to(request.device), self.sampler,
                          generators=request.generators(len(labels)),
                          clip_range=self.tokenizer.value_range)
        images = self.tokenizer.decode(tokens.float().cpu()).clamp(0, 1)
        names = [f"{c}: {self.class_names[c]}" for c in labels.unique_consecutive().tolist()]
        if self.per_class > 1:  # a row per class
            nrow = self.per_class
        else:  # one image per class: a square grid, each cell labelled
            nrow = max(1, math.ceil(math.sqrt(len(labels))))
        path = save_image_grid(images, request.path(".png"), nrow=nrow, labels=names)
        grid = make_grid(images, nrow=nrow, padding=2, pad_value=0.5)
        return Preview(files=(path,), tensorboard_image=grid)
