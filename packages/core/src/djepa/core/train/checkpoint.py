"""Checkpoints that resume exactly and are never half-trusted.

Layout of ``<output_dir>/checkpoints/``::

    step_00001000/                 one checkpoint (tag)
        mp_rank_00_model_states.pt, *optim_states.pt, …   DeepSpeed engine state
        ema.safetensors            EMA weights (fp32) + num_updates in the metadata
        trainer_state.json         step, data position, skip counters, config
        rng/rank_00000.pt …        torch / CUDA / numpy / python RNG states, one file per rank
        manifest.json              size and sha256 of every file above — written LAST
    latest                         name of the newest complete, verified checkpoint

Writing order: every rank writes its files → barrier → rank 0 hashes everything into
``manifest.json`` (tmp + ``os.replace``) → re-verifies → replaces ``latest`` (tmp +
``os.replace``) → deletes checkpoints beyond the last K. DeepSpeed's own ``latest`` file is
disabled (``save_latest=False``). A checkpoint without a manifest is incomplete.

Multi-node runs need ``output_dir`` on a shared file system: rank 0 hashes the files every
rank wrote.

On resume the manifest is verified; a missing, truncated or corrupt file raises
:class:`CheckpointError` naming the file, and the engine falls back (with a warning) to the
previous complete checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from djepa.core.pretrained import atomic_write_text

__all__ = ["CheckpointError", "tag_for_step", "step_of_tag", "sha256_file", "write_manifest", "verify",
           "read_latest", "write_latest", "candidate_tags", "prune", "rng_state",
           "set_rng_state", "save_rng", "load_rng", "atomic_write_text"]

MANIFEST = "manifest.json"
LATEST = "latest"
_TAG_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (incomplete, truncated, corrupt or missing)."""


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def step_of_tag(tag: str) -> int:
    m = _TAG_RE.match(tag)
    if m is None:
        raise CheckpointError(f"not a checkpoint tag: {tag!r}")
    return int(m.group(1))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(ckpt_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt_dir)) for p in ckpt_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST and ".tmp." not in p.name)


def write_manifest(ckpt_dir: Path, *, checksums: bool = True) -> dict[str, Any]:
    """Record size (and sha256) of every file of ``ckpt_dir`` in ``manifest.json``."""
    entries = {}
    for rel in _files(ckpt_dir):
        p = ckpt_dir / rel
        entries[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p) if checksums else None}
    manifest = {"version": 1, "files": entries}
    atomic_write_text(ckpt_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def verify(ckpt_dir: Path, *, checksums: bool = True, files: tuple[str, ...] | None = None) -> None:
    """Check ``ckpt_dir`` against its manifest.

    Args:
        files: check only these manifest entries (e.g. ``("ema.safetensors",)`` to sample from a
            checkpoint without reading the DeepSpeed state); each must be listed. ``None``: all.

    Raises:
        CheckpointError: no (readable) manifest, or a listed file missing, of the wrong size
            (truncated) or with the wrong sha256 — the message names the file.
    """
    mpath = ckpt_dir / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {MANIFEST} (checkpoint incomplete)")
    try:
        manifest = json.loads(mpath.read_text())
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from e
    if not listed:
        raise CheckpointError(f"{mpath}: manifest lists no files")
    if files is not None:
        unlisted = [f for f in files if f not in listed]
        if unlisted:
            raise CheckpointError(f"{mpath}: lists no {unlisted[0]}")
        listed = {f: listed[f] for f in files}
    for rel, meta in sorted(listed.items()):
        p = ckpt_dir / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: file listed in the manifest is missing")
        size = p.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"{p}: size {size} bytes, manifest says {meta['size']} (truncated or rewritten)")
        if checksums and meta.get("sha256") and sha256_file(p) != meta["sha256"]:
            raise CheckpointError(f"{p}: sha256 does not match the manifest (corrupt)")


def read_latest(root: Path) -> str | None:
    p = root / LATEST
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag or None


def write_latest(root: Path, tag: str) -> None:
    atomic_write_text(root / LATEST, tag + "\n")


def candidate_tags(root: Path) -> list[str]:
    """Tags to try on resume, best first: ``latest``, then older checkpoints, newest first.

    Checkpoints newer than ``latest`` were never confirmed and are not offered.
    """
    if not root.is_dir():
        return []
    tags = sorted((d.name for d in root.iterdir() if d.is_dir() and _TAG_RE.match(d.name)),
                  key=step_of_tag, reverse=True)
    latest = read_latest(root)
    if latest is None:
        return tags
    limit = step_of_tag(latest) if _TAG_RE.match(latest) else None
    rest = [t for t in tags if t != latest and (limit is None or step_of_tag(t) < limit)]
    return [latest] + rest


def prune(root: Path, keep_last: int, protect: str) -> list[str]:
    """Delete all but the newest ``keep_last`` checkpoint directories (never ``protect``)."""
    tags = sorted((d.name for d in root.iterdir() if d.is_dir() and _TAG_RE.match(d.name)),
                  key=step_of_tag, reverse=True)
    removed = []
    for t in tags[keep_last:]:
        if t != protect:
            shutil.rmtree(root / t, ignore_errors=True)
            removed.append(t)
    return removed


def _dropout_stream() -> str:
    """What decides CPU dropout masks (``djepa.core.dropout``): source and NumPy version (PCG64
    streams are not promised stable across NumPy versions, NEP 19)."""
    from djepa.core.dropout import cpu_dropout_rng

    return f"{cpu_dropout_rng()} (numpy {np.__version__})"


def rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and every CUDA device), numpy and python, and the CPU dropout
    mask source."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate(), "cpu_dropout": _dropout_stream()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`. Warns (and goes on: the masks have the same distribution) when
    the checkpoint's CPU dropout mask source differs from this process's, since the resumed run
    then draws other masks than an uninterrupted one would have."""
    saved, now = state.get("cpu_dropout"), _dropout_stream()
    if saved is not None and saved != now:
        import warnings

        warnings.warn(f"checkpoint drew CPU dropout masks from {saved}, this run from {now}: "
                      f"the resumed run is not bit-identical to an uninterrupted one "
                      f"(set DJEPA_CPU_DROPOUT_RNG to match)", stacklevel=2)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(ckpt_dir: Path, rank: int) -> None:
    d = ckpt_dir / "rng"
    d.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), d / f"rank_{rank:05d}.pt")


def load_rng(ckpt_dir: Path, rank: int) -> bool:
    """Restore this rank's RNG states; False when the file does not exist (world size grew)."""
    p = ckpt_dir / "rng" / f"rank_{rank:05d}.pt"
    if not p.is_file():
        return False
    set_rng_state(torch.load(p, weights_only=False))
    return True
