"""The CPU speed corner: every speed path that is not the maths itself, switched by one setting.

The model's layers read as the maths (:mod:`djepa.core.ops`: ``F.dropout``, ``F.layer_norm``
on the float32 upcast, ``F.scaled_dot_product_attention``). This package holds the faster CPU
implementations of the same maths and the process settings around them
(``docs/results/speed.md`` has the measurements):

* :mod:`~djepa.core.cpu_speed.dropout` — dropout masks from NumPy's PCG64, seeded from torch's
  generator (same distribution, another random stream; reproducible under ``torch.manual_seed``
  and across a resume), also for the attention-probability dropout;
* :mod:`~djepa.core.cpu_speed.layer_norm` — ATen's mixed-dtype kernel for the bf16 LayerNorm of
  inference;
* :mod:`~djepa.core.cpu_speed.malloc` — glibc keeps freed memory mapped (``mallopt``);
* :mod:`~djepa.core.cpu_speed.compile` — ``torch.compile`` of the backbone for sampling
  (opt-in per model by the samplers' ``--compile``; not part of :class:`SpeedSettings`).

One explicit setting switches the first three: :func:`install` with a :class:`SpeedSettings`
(the CLIs' ``--cpu-speed {on,off}``, :class:`CpuSpeedFlags`, default ``on``; the benchmarks map
``--dropout-rng`` and ``--malloc`` onto its fields). Library code that never calls
:func:`install` computes with plain PyTorch (``SpeedSettings.off()``): torch's dropout stream,
as the official code. Nothing here or in the model reads ``DJEPA_*`` environment variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from djepa.core import ops
from djepa.core.cpu_speed.dropout import numpy_dropout, numpy_mask_sdpa
from djepa.core.cpu_speed.layer_norm import bf16_inference_layer_norm

__all__ = ["SpeedSettings", "CpuSpeedFlags", "install", "installed", "using", "dropout_mask_source"]

_malloc_kept = False


@dataclass(frozen=True)
class SpeedSettings:
    """Which CPU speed paths are plugged in (each computes the same maths as the plain path).

    Attributes:
        dropout_masks: ``"numpy"`` — CPU dropout masks (also on attention probabilities) from
            NumPy PCG64 seeded by torch's generator; ``"torch"`` — torch's own ``F.dropout`` /
            SDPA dropout, the official code's random stream.
        layer_norm: the bf16 inference LayerNorm kernel (values equal to one bf16 rounding).
        malloc: ``"keep"`` — glibc keeps freed memory mapped (process-wide, cannot be undone;
            skipped off glibc or when the user set glibc's own malloc variables); ``"system"``.

    Raises:
        ValueError: a value outside those listed.
    """

    dropout_masks: Literal["numpy", "torch"] = "numpy"
    layer_norm: bool = True
    malloc: Literal["keep", "system"] = "keep"

    def __post_init__(self) -> None:
        if self.dropout_masks not in ("numpy", "torch"):
            raise ValueError(f"dropout_masks must be 'numpy' or 'torch', got {self.dropout_masks!r}")
        if self.malloc not in ("keep", "system"):
            raise ValueError(f"malloc must be 'keep' or 'system', got {self.malloc!r}")

    @classmethod
    def on(cls) -> SpeedSettings:
        """Every path on (the CLIs' default)."""
        return cls()

    @classmethod
    def off(cls) -> SpeedSettings:
        """Plain PyTorch (what library use gets without :func:`install`)."""
        return cls(dropout_masks="torch", layer_norm=False, malloc="system")

    @classmethod
    def from_flag(cls, flag: str) -> SpeedSettings:
        """``"on"`` / ``"off"`` (the ``--cpu-speed`` value) → settings.

        Raises:
            ValueError: another value.
        """
        if flag not in ("on", "off"):
            raise ValueError(f"--cpu-speed must be 'on' or 'off', got {flag!r}")
        return cls.on() if flag == "on" else cls.off()


@dataclass(frozen=True)
class CpuSpeedFlags:
    """The ``--cpu-speed`` flag every ``djepa`` CLI nests (``djepa.core.cli``: no prefix)."""

    cpu_speed: Literal["on", "off"] = "on"
    """CPU speed paths (djepa.core.cpu_speed): on = dropout masks from NumPy PCG64, bf16
    inference LayerNorm kernel, glibc keeps freed memory; off = plain PyTorch (torch's dropout
    stream, as the official code). Same maths either way; a resumed run should keep it."""

    def settings(self) -> SpeedSettings:
        return SpeedSettings.from_flag(self.cpu_speed)


def install(settings: SpeedSettings) -> SpeedSettings:
    """Plug the paths of ``settings`` into :mod:`djepa.core.ops` (process-wide) and, for
    ``malloc="keep"``, apply :func:`~djepa.core.cpu_speed.malloc.keep_freed_memory`.

    Returns:
        The settings in effect before (``install(previous)`` undoes the ops; malloc stays).
    """
    global _malloc_kept
    previous = installed()
    numpy_masks = settings.dropout_masks == "numpy"
    ops.override(dropout=numpy_dropout if numpy_masks else None,
                 sdpa=numpy_mask_sdpa if numpy_masks else None,
                 layer_norm_fp32=bf16_inference_layer_norm if settings.layer_norm else None)
    if settings.malloc == "keep" and not _malloc_kept:
        from djepa.core.cpu_speed.malloc import keep_freed_memory

        _malloc_kept = keep_freed_memory()
    return previous


def installed() -> SpeedSettings:
    """The settings in effect now (``malloc="keep"`` only where glibc took the setting)."""
    impl = ops.overridden()
    return SpeedSettings(dropout_masks="numpy" if impl.get("dropout") is numpy_dropout else "torch",
                         layer_norm=impl.get("layer_norm_fp32") is bf16_inference_layer_norm,
                         malloc="keep" if _malloc_kept else "system")


@contextlib.contextmanager
def using(settings: SpeedSettings) -> Iterator[SpeedSettings]:
    """``install(settings)`` for the ``with`` block, then the previous ops back (malloc stays)."""
    previous = install(settings)
    try:
        yield settings
    finally:
        install(dataclasses.replace(previous, malloc="system"))


def dropout_mask_source() -> str:
    """``"numpy"`` or ``"torch"``: where CPU dropout masks come from now (checkpoints record it)."""
    return installed().dropout_masks
