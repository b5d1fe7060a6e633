"""Periodic previews during training: the modality samples from the EMA model and writes its own
media (a PNG grid for images; an mp4 for video, a wav for audio), the engine only schedules the
call and logs what was written (DESIGN.md §7: the core knows no media format).

A :class:`PreviewHook` is any callable ``hook(model, request) -> Preview``:

* ``model``: the EMA module (the sampling model; eval-mode semantics are the hook's business),
  called under ``torch.no_grad()`` on rank 0 only, every ``TrainConfig.sample_every`` steps.
* ``request``: a :class:`PreviewRequest`: the step, the folder to write into
  (``RUN/samples``), the model's device and the run's seed. Row ``i`` of a preview should draw
  its orders and noise from its own generator, ``request.generators(B)[i]`` (seed ``seed + i``,
  :func:`djepa.core.rng.row_generators`), so a preview is the same whatever the preview batch
  size or the other rows (issue 11, item 6).
* returns a :class:`Preview`: the paths it wrote (logged) and, optionally, one ``[C, H, W]``
  image in ``[0, 1]`` that the engine adds to TensorBoard as ``samples`` (an image grid, a
  video's middle frame, a spectrogram, …).

:func:`image_grid_preview` adapts the older contract ``sample_fn(model, step) -> [B, C, H, W]``
images (still accepted by :func:`~djepa.core.train.train` as ``sample_fn``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = ["Preview", "PreviewRequest", "PreviewHook", "image_grid_preview"]


@dataclass(frozen=True)
class PreviewRequest:
    """What a :class:`PreviewHook` is called with, besides the model.

    Attributes:
        step: the optimizer step just finished (1-based).
        samples_dir: ``RUN/samples``; the hook creates it when it writes.
        device: the model's device (generators and inputs go there).
        seed: the run's ``TrainConfig.seed``; row ``i`` uses seed ``seed + i``.
    """

    step: int
    samples_dir: Path
    device: torch.device
    seed: int

    def path(self, suffix: str) -> Path:
        """``samples_dir / step_XXXXXXXX<suffix>`` (e.g. ``.png``, ``.mp4``, ``.wav``)."""
        return self.samples_dir / f"step_{self.step:08d}{suffix}"

    def generators(self, rows: int) -> list[torch.Generator]:
        """One generator per preview row on :attr:`device`, row ``i`` seeded ``seed + i``."""
        from djepa.core.rng import row_generators

        return row_generators(range(self.seed, self.seed + rows), self.device)


@dataclass(frozen=True)
class Preview:
    """What a :class:`PreviewHook` returns.

    Attributes:
        files: the files it wrote (under ``request.samples_dir``), logged by the engine.
        tensorboard_image: ``None`` or one ``[C, H, W]`` float image in ``[0, 1]`` (C = 1 or 3)
            for TensorBoard's ``samples`` tag.
    """

    files: Sequence[Path] = field(default_factory=tuple)
    tensorboard_image: Tensor | None = None


class PreviewHook(Protocol):
    """``hook(model, request) -> Preview`` (module docstring)."""

    def __call__(self, model: nn.Module, request: PreviewRequest) -> Preview: ...


def image_grid_preview(sample_fn: Callable[[nn.Module, int], Tensor]) -> PreviewHook:
    """A :class:`PreviewHook` from ``sample_fn(model, step) -> images [B, C, H, W] in [0, 1]``:
    the images tiled into ``samples/step_XXXXXXXX.png`` (:func:`~djepa.core.train.observe.make_grid`,
    ``ceil(sqrt(B))`` per row, 2-px white padding) and the same grid for TensorBoard.

    Raises (when called):
        ValueError: the images are not ``[B, C, H, W]`` with C = 1 or 3.
    """
    from djepa.core.train.observe import make_grid, write_png

    def hook(model: nn.Module, request: PreviewRequest) -> Preview:
        images = sample_fn(model, request.step)
        grid = make_grid(images.detach().float().cpu().clamp(0, 1))
        path = request.path(".png")
        write_png(path, grid)
        return Preview(files=(path,), tensorboard_image=grid)

    return hook
