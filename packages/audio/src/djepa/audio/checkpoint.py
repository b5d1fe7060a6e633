"""Loading a trained TTS model: ``RUN`` (its ``pretrained/`` export), a ``save_pretrained``
folder, or one checkpoint ``RUN/checkpoints/step_N`` (its ``ema.safetensors``, verified against
the checkpoint's manifest before it is read). Safetensors only; another modality's run is
refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from djepa.audio.model import TTSConfig, TTSModel

__all__ = ["load_tts"]


def load_tts(path: str | Path, device: str | torch.device = "cpu") -> tuple[TTSModel, int | None]:
    """``(model in eval mode on device, step or None)``.

    Raises:
        FileNotFoundError: nothing loadable at ``path``. ValueError: not a TTS model (e.g. an
        image run), or a damaged file / config.
    """
    from safetensors.torch import load_file

    from djepa.core.config import config_from_dict
    from djepa.core.pretrained import load_state_dict_strict
    from djepa.core.runs import resolve_run
    from djepa.core.train import checkpoint as ckpt

    kind, where = resolve_run(path)
    if kind == "pretrained":
        return TTSModel.from_pretrained(where, map_location=device).eval(), None
    run_dir = where.parent.parent
    meta = json.loads((run_dir / "config.json").read_text())
    if not isinstance(meta.get("tts"), dict):
        raise ValueError(f"{run_dir / 'config.json'} has no 'tts' section: not a tts-train run")
    cfg = config_from_dict(TTSConfig, meta["tts"])
    ckpt.verify(where, files=("ema.safetensors",))
    model = TTSModel(cfg)
    load_state_dict_strict(model, load_file(str(where / "ema.safetensors")), source=str(where))
    return model.to(device).eval(), ckpt.step_of_tag(where.name)
