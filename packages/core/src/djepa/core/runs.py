"""Loading a trained D-JEPA for sampling or evaluation: one place for every modality.

A path may be

* a training run folder ``RUN/`` (its ``pretrained/`` export: EMA weights, written at the end),
* a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``; ``RUN/pretrained``), or
* one checkpoint of a run, ``RUN/checkpoints/step_XXXXXXXX``: its ``ema.safetensors``, verified
  against the checkpoint's ``manifest.json`` (size and sha256, :func:`djepa.core.train.checkpoint.verify`)
  before anything is read; the model config comes from ``RUN/config.json`` (its ``model``
  section). The DeepSpeed files are neither needed nor read.

The tokenizer comes from ``tokenizer.json`` next to the weights (or in ``RUN/`` for
``RUN/pretrained`` and checkpoints), rebuilt through the registry of
:mod:`djepa.core.tokenizer` by its ``kind``, and must fit the model (token dim and grid).
Weights are safetensors only: nothing a file carries is executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedRun", "load_run", "resolve_run", "resumed_model_config", "TOKENIZER_FILE",
           "RUN_CONFIG_FILE"]

TOKENIZER_FILE = "tokenizer.json"
RUN_CONFIG_FILE = "config.json"
EMA_FILE = "ema.safetensors"


@dataclass
class LoadedRun:
    """What :func:`load_run` returns.

    Attributes:
        model: the :class:`~djepa.core.model.DJEPA` with the EMA weights, eval mode, on the
            requested device.
        tokenizer: the rebuilt :class:`~djepa.core.tokenizer.Tokenizer` (``None`` when not asked).
        tokenizer_config: ``tokenizer.json`` as recorded, with the run's extra keys (e.g.
            ``class_names``).
        run_config: ``RUN/config.json`` (sections ``model``, ``train``, the modality's …) or
            ``{}`` for a bare ``save_pretrained`` folder.
        weights: the weights file that was read.
        run_dir: the training run folder, or ``None`` for a bare export.
        step: the checkpoint's step, or ``None`` for an export.
    """

    model: Any
    tokenizer: Any
    tokenizer_config: dict[str, Any]
    run_config: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    run_dir: Path | None = None
    step: int | None = None


def _is_checkpoint(p: Path) -> bool:
    return p.name.startswith("step_") and p.parent.name == "checkpoints" \
        and (p.parent.parent / RUN_CONFIG_FILE).is_file()


def resolve_run(path: str | Path) -> tuple[str, Path]:
    """``("checkpoint", step_dir)`` or ``("pretrained", export_dir)`` for ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds neither an export (``config.json`` +
            ``model.safetensors``, itself or in ``pretrained/``) nor is a run's checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint folder {p} does not exist")
    if _is_checkpoint(p):
        return "checkpoint", p
    for cand in (p, p / "pretrained"):
        if (cand / RUN_CONFIG_FILE).is_file() and (cand / "model.safetensors").is_file():
            return "pretrained", cand
    raise FileNotFoundError(
        f"{p} holds no exported model (config.json + model.safetensors, or pretrained/ inside a "
        f"training folder); if training was interrupted, resume it with the same training command "
        f"and --output-dir {p}")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing ({what})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({what}): {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what})")
    return data


def _fill_predated(cfg: Any, saved: dict[str, Any], where: str, changed: list[str]) -> Any:
    """``cfg`` with every field that ``saved`` predates (missing there, listed in the dataclass'
    ``SAVED_BEFORE``) set to the value the old run used; recursive into nested dataclasses."""
    import dataclasses

    updates: dict[str, Any] = {}
    old = getattr(type(cfg), "SAVED_BEFORE", {})
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and isinstance(saved.get(f.name), dict):
            new = _fill_predated(value, saved[f.name], f"{where}{f.name}.", changed)
            if new is not value:
                updates[f.name] = new
        elif f.name in old and f.name not in saved and value != old[f.name]:
            updates[f.name] = old[f.name]
            changed.append(f"{where}{f.name}={old[f.name]!r}")
    return dataclasses.replace(cfg, **updates) if updates else cfg


def resumed_model_config(run_dir: str | Path, model_cfg: Any, *, section: str = "model",
                         log: Any = print) -> Any:
    """The model config to build when ``run_dir`` is about to be resumed: ``model_cfg`` (built
    from today's flags and defaults) with every field the run's saved ``config.json`` predates
    set to the value the run was trained with (the dataclasses' ``SAVED_BEFORE`` maps; e.g.
    ``LossConfig.projector_order = "norm_first"`` for a run written before that field existed),
    so that resuming never silently switches the architecture. Fields the saved config does hold
    are left to the engine's resume check (a different value is refused there).

    Only applies when ``run_dir/checkpoints`` holds a ``step_N`` checkpoint (a fresh start
    writes a new ``config.json`` and takes today's defaults); otherwise, or when the saved
    config has no ``section`` object, ``model_cfg`` is returned unchanged.

    Args:
        run_dir: the run folder (``--output-dir``).
        model_cfg: a config dataclass instance (e.g. :class:`~djepa.core.config.DJEPAConfig`).
        section: the key of the model config in ``config.json``.
        log: called with one line naming the fields taken from the old run.

    Raises:
        ValueError / FileNotFoundError: ``config.json`` exists but is not a JSON object.
    """
    from djepa.core.train.checkpoint import _tags

    run_dir = Path(run_dir)
    path = run_dir / RUN_CONFIG_FILE
    root = run_dir / "checkpoints"
    if not path.is_file() or not root.is_dir() or not _tags(root):
        return model_cfg
    saved = _read_json(path, "the run's configuration").get(section)
    if not isinstance(saved, dict):
        return model_cfg
    changed: list[str] = []
    out = _fill_predated(model_cfg, saved, "", changed)
    if changed:
        log(f"{path} predates {', '.join(c.split('=')[0] for c in changed)}: resuming with "
            f"{', '.join(changed)}, as the run was trained")
    return out


def _load_checkpoint_ema(step_dir: Path, device):
    from safetensors.torch import load_file

    from djepa.core.config import DJEPAConfig, config_from_dict
    from djepa.core.model import DJEPA
    from djepa.core.pretrained import load_state_dict_strict
    from djepa.core.train import checkpoint as ckpt

    run_dir = step_dir.parent.parent
    weights = step_dir / EMA_FILE
    if (step_dir / ckpt.MANIFEST).is_file() and not weights.is_file():  # the message users know
        raise ckpt.CheckpointError(f"{weights}: missing")
    ckpt.verify(step_dir, files=(EMA_FILE,))
    meta = _read_json(run_dir / RUN_CONFIG_FILE, "the run's configuration")
    if not isinstance(meta.get("model"), dict):
        raise ValueError(f"{run_dir / RUN_CONFIG_FILE} has no 'model' section (not a D-JEPA training run)")
    try:
        model_cfg = config_from_dict(DJEPAConfig, meta["model"])
    except ValueError as e:
        raise ValueError(f"{run_dir / RUN_CONFIG_FILE} 'model' section: {e}") from None
    model = DJEPA(model_cfg)
    load_state_dict_strict(model, load_file(str(weights)), source=str(weights))
    try:
        step = ckpt.step_of_tag(step_dir.name)
    except ckpt.CheckpointError:
        step = None
    return model.to(device).eval(), run_dir, meta, weights, step


def load_run(path: str | Path, device: torch.device | str = "cpu", *, tokenizer: bool = True) -> LoadedRun:
    """Load a run folder, an export or one checkpoint (module docstring) for sampling / eval.

    Args:
        path: ``RUN``, ``RUN/pretrained`` (any ``save_pretrained`` folder) or
            ``RUN/checkpoints/step_XXXXXXXX``.
        device: where the model goes.
        tokenizer: rebuild the tokenizer (``False``: only read its record, if there is one;
            building a VAE tokenizer loads the VAE's weights).

    Raises:
        FileNotFoundError: a missing path, export, ``tokenizer.json`` or run ``config.json``.
        djepa.core.train.checkpoint.CheckpointError: a checkpoint with no manifest, no EMA file,
            or an EMA file that does not match the manifest (truncated, corrupt).
        djepa.core.pretrained.CheckpointMismatchError: weights that do not fit the config.
        ValueError: unreadable JSON, no model section, a tokenizer record the registry refuses,
            or a tokenizer that does not fit the model. Every message is one line naming the file.
    """
    from djepa.core.model import DJEPA

    kind, folder = resolve_run(path)
    run_dir: Path | None
    run_config: dict[str, Any] = {}
    step = None
    if kind == "checkpoint":
        model, run_dir, run_config, weights, step = _load_checkpoint_ema(folder, device)
        tok_file = run_dir / TOKENIZER_FILE
    else:
        model = DJEPA.from_pretrained(folder, map_location=device).eval()
        weights = folder / "model.safetensors"
        run_dir = folder.parent if folder.name == "pretrained" and (folder.parent / RUN_CONFIG_FILE).is_file() \
            else None
        if run_dir is not None:
            run_config = _read_json(run_dir / RUN_CONFIG_FILE, "the run's configuration")
        tok_file = folder / TOKENIZER_FILE
        if not tok_file.is_file() and run_dir is not None:  # RUN/pretrained: RUN's file
            tok_file = run_dir / TOKENIZER_FILE
    if not tok_file.is_file() and tokenizer:
        raise FileNotFoundError(f"{folder} has no {TOKENIZER_FILE} describing its tokenizer")
    info = _read_json(tok_file, "the tokenizer record") if tok_file.is_file() else {}
    tok = None
    if tokenizer:
        from djepa.core.tokenizer import tokenizer_from_config

        tok = tokenizer_from_config(info, source=str(tok_file))
        if int(tok.token_dim) != model.config.token_dim or tuple(tok.grid) != tuple(model.config.grid):
            raise ValueError(
                f"{tok_file} does not match the model in {folder} (tokens {tok.token_dim}×{tuple(tok.grid)} "
                f"vs {model.config.token_dim}×{model.config.grid})")
    return LoadedRun(model=model, tokenizer=tok, tokenizer_config=info, run_config=run_config,
                     weights=weights, run_dir=run_dir, step=step)
