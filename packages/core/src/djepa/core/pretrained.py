"""``save_pretrained`` / ``from_pretrained`` (diffusers/transformers style): safetensors weights
plus a JSON config, loadable without DeepSpeed, never a silent partial load.

Directory layout::

    DIR/config.json          {"model_type": "djepa", "format_version": 1, "config": {...}}
    DIR/model.safetensors    fp32 (or the saved dtype) state dict, no pickles
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

__all__ = ["PretrainedMixin", "CheckpointMismatchError", "atomic_write_text", "atomic_write_bytes"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1

M = TypeVar("M", bound="PretrainedMixin")


class CheckpointMismatchError(ValueError):
    """The weights on disk do not fit the model/config (missing, unexpected or reshaped keys)."""


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temp file in the same folder + ``os.replace``
    (a reader sees the old file or the new one, never a partial one)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PretrainedMixin:
    """Adds :meth:`save_pretrained` / :meth:`from_pretrained` to a module whose ``config`` is a
    frozen dataclass and whose ``__init__`` takes that config.
    """

    model_type: str = "djepa"

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically, each) into ``directory``.

        Returns:
            The directory as a ``Path``.
        """
        from djepa.core.config import config_to_dict

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"format": "pt", "model_type": self.model_type})
            os.replace(tmp, directory / WEIGHTS_NAME)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        meta = {"model_type": self.model_type, "format_version": FORMAT_VERSION,
                "config": config_to_dict(self.config)}  # type: ignore[attr-defined]
        atomic_write_text(directory / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load_config(cls, directory: str | os.PathLike[str]) -> Any:
        """Read and validate ``DIR/config.json`` into the model's config dataclass.

        Raises:
            FileNotFoundError: no ``config.json`` in ``directory``.
            ValueError: unreadable JSON, another model type, unknown config fields, or a value
                of the wrong type (the message names the file and the field).
        """
        from djepa.core.config import DJEPAConfig, config_from_dict

        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a save_pretrained directory")
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e
        if not isinstance(meta, dict) or "config" not in meta:
            raise ValueError(f"{path} has no 'config' object: not a save_pretrained directory")
        if meta.get("model_type") != cls.model_type:
            raise ValueError(f"{path} holds model_type {meta.get('model_type')!r}, expected {cls.model_type!r}")
        try:
            return config_from_dict(DJEPAConfig, meta["config"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike[str], *, config: Any = None,
                        map_location: str | torch.device = "cpu") -> M:
        """Build the model from ``DIR/config.json`` and load ``DIR/model.safetensors`` strictly.

        Args:
            directory: a folder written by :meth:`save_pretrained`.
            config: optional expected config; a different one raises (no silent reinterpretation).
            map_location: device for the weights (the model is built on the CPU, also inside a
                ``with torch.device(...)`` block such as ``"meta"``, then moved here).

        Raises:
            FileNotFoundError: config or weights missing.
            CheckpointMismatchError: config differs from ``config``, or missing / unexpected /
                differently shaped tensors (all listed in the message).
        """
        directory = Path(directory)
        saved = cls.load_config(directory)
        if config is not None and config != saved:
            raise CheckpointMismatchError(
                f"config mismatch: {directory / CONFIG_NAME} holds {saved}, expected {config}")
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found")
        try:
            state = load_file(str(weights), device=str(map_location))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointMismatchError(f"cannot read {weights}: {e}") from e
        # built on the CPU whatever the caller's default device is: under
        # ``with torch.device("meta")`` the parameters would hold no data to load into
        with torch.device("cpu"):
            model = cls(saved)  # type: ignore[call-arg]
        load_state_dict_strict(model, state, source=str(weights))  # type: ignore[arg-type]
        return model.to(map_location)  # type: ignore[attr-defined,return-value]


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or reshaped key on failure.

    Raises:
        CheckpointMismatchError: on any mismatch; the model is left untouched.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or reshaped:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        if reshaped:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in reshaped[:8]))
        raise CheckpointMismatchError(f"{source} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
