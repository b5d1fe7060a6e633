"""Checkpoints that resume exactly and are never half-trusted.

Layout of ``<output_dir>/checkpoints/``::

    step_00001000/                 one checkpoint (tag)
        mp_rank_00_model_states.pt, *optim_states.pt, …   DeepSpeed engine state
        ema.safetensors            EMA weights (fp32) + num_updates in the metadata
        trainer_state.json         step, data position, skip counters, config
        rng/rank_00000.safetensors torch / CUDA / numpy / python RNG states, one file per rank
                                   (tensors + JSON metadata: no pickle)
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
previous complete checkpoint (:func:`choose_checkpoint`). When no checkpoint verifies but the
folder holds a confirmed one (``latest`` or a manifest exists), the run is refused: it never
restarts from step 0 over checkpoints it did not write.

A run folder is data, not code (trust boundary): the manifest is unsigned and sits next to the
files, so it detects accidents (truncation, bit rot, interrupted writes), not tampering. What
keeps a tampered folder from running code is how files are read: DeepSpeed's files through
:func:`safe_checkpoint_engine` (``torch.load(weights_only=True)`` with the allow-list
:func:`deepspeed_safe_globals`), the EMA and RNG states as safetensors + JSON, ``latest`` only as
a plain ``step_N`` naming a real (non-symlink) folder inside ``checkpoints/``, manifest entries
only as regular files inside their checkpoint folder. A folder has one writer
(:func:`run_folder_lock`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import socket
import stat
import time
import warnings
from collections.abc import Callable, Iterator
import functools
import inspect
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from djepa.core.pretrained import atomic_write_text

__all__ = ["CheckpointError", "RunFolderBusy", "tag_for_step", "step_of_tag", "sha256_file",
           "write_manifest", "verify", "read_latest", "write_latest", "candidate_tags",
           "choose_checkpoint", "read_trainer_state", "set_aside", "prune", "writing", "rng_state", "set_rng_state",
           "save_rng", "load_rng", "atomic_write_text", "run_folder_lock",
           "one_writer", "safe_checkpoint_engine", "deepspeed_safe_globals"]

MANIFEST = "manifest.json"
LATEST = "latest"
LOCK = "run.lock"
_TAG_RE = re.compile(r"^step_(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (incomplete, truncated, corrupt, missing, or holding
    something that would run code when loaded)."""


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock (one writer per folder)."""


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
        CheckpointError: no (readable) manifest; a symlink anywhere in ``ckpt_dir`` (the
            folder itself, a sub-folder or a file: DeepSpeed opens its files by name, so an
            unlisted link would be read too); a listed file missing, of the wrong size
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
    if ckpt_dir.is_symlink():
        raise CheckpointError(f"{ckpt_dir} is a symlink; a checkpoint must be a real folder of its run")
    for dirpath, dirnames, filenames in os.walk(ckpt_dir):
        for name in dirnames + filenames:
            q = Path(dirpath) / name
            if q.is_symlink():
                raise CheckpointError(f"{q} is a symlink; nothing in a checkpoint may point outside it")
    for rel, meta in sorted(listed.items()):
        p = ckpt_dir / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or p.is_symlink():
            raise CheckpointError(f"{mpath}: entry {rel!r} is not a file inside {ckpt_dir}")
        if not p.is_file():
            raise CheckpointError(f"{p}: file listed in the manifest is missing")
        size = p.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"{p}: size {size} bytes, manifest says {meta['size']} (truncated or rewritten)")
        if checksums and meta.get("sha256") and sha256_file(p) != meta["sha256"]:
            raise CheckpointError(f"{p}: sha256 does not match the manifest (corrupt)")


def read_latest(root: Path) -> str | None:
    """The tag named by ``root/latest`` (``None``: no such file).

    Raises:
        CheckpointError: ``latest`` is not a plain ``step_N`` (e.g. a path such as
            ``../../elsewhere/step_…``), or is a symlink: a run resumes only from its own folder.
    """
    p = root / LATEST
    if p.is_symlink():
        raise CheckpointError(f"{p} is a symlink; it must be a file naming a step_N folder")
    if not p.is_file():
        return None
    text = p.read_text(errors="replace").strip()
    if not text:
        return None
    if not _TAG_RE.match(text):
        raise CheckpointError(f"{p} names {text[:80]!r}, not a checkpoint of this folder "
                              f"(expected step_NNNNNNNN); repair or remove it")
    return text


def write_latest(root: Path, tag: str) -> None:
    atomic_write_text(root / LATEST, tag + "\n")


def candidate_tags(root: Path) -> list[str]:
    """Tags to try on resume, best first: ``latest``, then older checkpoints, newest first.

    Checkpoints newer than ``latest`` were never confirmed and are not offered.

    Raises:
        CheckpointError: a ``latest`` that is not a plain ``step_N`` (:func:`read_latest`).
    """
    if not root.is_dir():
        return []
    tags = _tags(root)
    latest = read_latest(root)
    if latest is None:
        return tags
    if latest not in tags:
        q = root / latest
        why = "a symlink" if q.is_symlink() else ("not a folder" if q.exists() else "missing")
        raise CheckpointError(f"{root / LATEST} names {latest}, which is {why}: a run resumes only "
                              f"from a real step_N folder inside {root}; repair or remove it")
    limit = step_of_tag(latest)
    rest = [t for t in tags if t != latest and step_of_tag(t) < limit]
    return [latest] + rest


def _tags(root: Path) -> list[str]:
    """``step_N`` folders of ``root`` (real folders, not symlinks), newest first."""
    return sorted((d.name for d in root.iterdir()
                   if _TAG_RE.match(d.name) and d.is_dir() and not d.is_symlink()),
                  key=step_of_tag, reverse=True)


def choose_checkpoint(root: Path, resume: bool | str, *, checksums: bool = True,
                      log: Callable[[str], None] = print) -> tuple[str | None, str | None]:
    """The checkpoint to resume from: ``(tag, None)``, ``(None, None)`` for a fresh start, or
    ``(None, one-line refusal)``. Rank 0 only; reads nothing but manifests and file hashes.

    ``resume`` is ``False`` (refuse a folder that holds checkpoints), ``True`` (a verified
    checkpoint is required) or ``"auto"``. The best candidate (:func:`candidate_tags`) that
    verifies wins; each rejected one is warned about. When none verifies, a fresh start is
    allowed only if none was ever confirmed (no ``latest``, no manifest: writes that never
    finished); otherwise the run is refused naming the newest checkpoint's problem and the
    ways out — it must not start at step 0 and later prune checkpoints it did not write.

    Warns:
        RuntimeWarning: each rejected checkpoint (the message names the bad file).
    """
    try:
        tags = candidate_tags(root)
    except CheckpointError as e:
        return None, str(e)
    if resume is False:
        if tags:
            return None, (f"{root} already holds checkpoints ({tags[0]} …) and resume=False; "
                          "use resume='auto' / True or a new output_dir")
        return None, None
    if resume is True and not tags:
        return None, (f"resume=True but {root} holds no checkpoint; use resume='auto' to start "
                      f"a new run there")
    problems: list[tuple[str, CheckpointError]] = []
    for i, tag in enumerate(tags):
        try:
            verify(root / tag, checksums=checksums)
            return tag, None
        except CheckpointError as e:
            problems.append((tag, e))
            then = f"trying {tags[i + 1]}" if i + 1 < len(tags) else "no older checkpoint left"
            msg = f"checkpoint {tag} rejected: {e}; {then}"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log("WARNING: " + msg)
    confirmed = (root / LATEST).is_file() or any((root / t / MANIFEST).exists() for t in tags)
    if problems and (confirmed or resume is True):
        tag, err = problems[0]
        return None, (f"{root} holds no complete, verified checkpoint (newest {tag}: {err}); "
                      f"repair or restore it, move {root} away to start over, "
                      f"or use a new --output-dir")
    if problems:
        log(f"ignoring unfinished checkpoint folder(s) {', '.join(tags)} (no manifest, never "
            f"confirmed); starting at step 0")
    return None, None


def set_aside(root: Path, tag: str, log: Callable[[str], None] = print) -> None:
    """Make room for a new ``root/tag``: an unfinished folder (no manifest) is removed; one
    with a manifest (a checkpoint that once completed but was rejected on resume) is renamed
    to ``tag.rejected.<unix time>`` (ignored from then on) — never deleted."""
    d = root / tag
    if not d.exists() and not d.is_symlink():
        return
    if d.is_symlink() or not (d / MANIFEST).exists():
        if d.is_symlink():
            d.unlink()
        else:
            shutil.rmtree(d)
        return
    dest = root / f"{tag}.rejected.{int(time.time())}"
    os.replace(d, dest)
    log(f"WARNING: {d} (rejected on resume) moved to {dest}; delete it when no longer needed")


def prune(root: Path, keep_last: int, protect: str) -> list[str]:
    """Delete checkpoint folders *older* than ``protect`` (the one just written) beyond the
    newest ``keep_last`` (``protect`` included). Folders newer than ``protect`` (unconfirmed
    or rejected ones this run did not write) are never touched."""
    limit = step_of_tag(protect)
    older = [t for t in _tags(root) if step_of_tag(t) < limit]
    removed = []
    for t in older[max(keep_last - 1, 0):]:
        shutil.rmtree(root / t, ignore_errors=True)
        removed.append(t)
    return removed


def _no_space(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    # torch's zip writer (PyTorchStreamWriter) reports a short write as "unexpected pos"
    return "No space left" in text or "unexpected pos" in text or "file write failed" in text


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


@contextlib.contextmanager
def writing(ckpt_dir: Path, rank: int) -> Iterator[None]:
    """Around the writing of one checkpoint: on any error rank 0 removes the partial
    ``ckpt_dir`` (it has no manifest yet, so it was never a checkpoint); a full disk becomes one
    line naming the folder and the free space.

    Raises:
        CheckpointError: no space left on the device (the cause is chained).
    """
    try:
        yield
    except Exception as e:
        if rank == 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if _no_space(e):
            try:
                free = _bytes(shutil.disk_usage(ckpt_dir.parent).free)
            except OSError:
                free = "unknown"
            raise CheckpointError(
                f"no space left on the device writing checkpoint {ckpt_dir} ({free} free); "
                f"the partial folder was removed, the previous checkpoint "
                f"({read_latest(ckpt_dir.parent)}) is intact") from e
        raise


def _dropout_stream() -> str:
    """What decides CPU dropout masks (``djepa.core.cpu_speed``: ``numpy`` or ``torch``) and the
    NumPy version (PCG64 streams are not promised stable across NumPy versions, NEP 19)."""
    from djepa.core.cpu_speed import dropout_mask_source

    return f"{dropout_mask_source()} (numpy {np.__version__})"


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
                      f"(--cpu-speed on draws numpy masks, off torch's)", stacklevel=2)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


TRAINER_STATE = "trainer_state.json"
_STATE_INTS = ("step", "epoch", "batch_index", "skipped_total", "consecutive_nonfinite",
               "samples_seen")


def read_trainer_state(ckpt_dir: Path) -> dict[str, Any]:
    """``ckpt_dir/trainer_state.json`` with its counters checked (non-negative ints).

    Raises:
        CheckpointError: unreadable JSON, not an object, or a counter missing / of the wrong
            type (the message names the file and the field).
    """
    p = ckpt_dir / TRAINER_STATE
    try:
        state = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}: unreadable ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not a JSON object")
    for key in _STATE_INTS:
        v = state.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CheckpointError(f"{p}: field {key!r} must be a non-negative integer, got {v!r}")
    return state


def _rng_file(ckpt_dir: Path, rank: int) -> Path:
    return ckpt_dir / "rng" / f"rank_{rank:05d}.safetensors"


def rng_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`rng_state` as safetensors tensors + string metadata (JSON), exactly.

    Tensors: ``torch`` (uint8 torch CPU generator state), ``cuda.<i>`` (uint8, per device),
    ``numpy.key`` (int64 [624], MT19937 key), ``python.state`` (int64 [625], Mersenne Twister
    state of ``random``). Metadata: ``numpy`` (JSON: bit generator name, pos, has_gauss,
    cached_gaussian), ``python`` (JSON: version, gauss_next), ``cpu_dropout`` (str). Floats are
    stored with ``repr``-exact JSON, so a round trip is bit-identical.
    """
    name, key, pos, has_gauss, cached = state["numpy"]
    version, internal, gauss_next = state["python"]
    tensors = {"torch": state["torch"].contiguous(),
               "numpy.key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
               "python.state": torch.tensor(internal, dtype=torch.int64)}
    for i, t in enumerate(state.get("cuda", [])):
        tensors[f"cuda.{i}"] = t.cpu().contiguous()
    meta = {"numpy": json.dumps({"name": name, "pos": int(pos), "has_gauss": int(has_gauss),
                                 "cached_gaussian": float(cached)}),
            "python": json.dumps({"version": version, "gauss_next": gauss_next}),
            "cpu_dropout": str(state.get("cpu_dropout", ""))}
    return tensors, meta


def rng_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`rng_to_tensors`.

    Raises:
        CheckpointError: a missing tensor / metadata field or a wrongly typed value.
    """
    try:
        np_meta, py_meta = json.loads(meta["numpy"]), json.loads(meta["python"])
        state: dict[str, Any] = {
            "torch": tensors["torch"].to(torch.uint8),
            "numpy": (str(np_meta["name"]), tensors["numpy.key"].numpy().astype(np.uint32),
                      int(np_meta["pos"]), int(np_meta["has_gauss"]),
                      float(np_meta["cached_gaussian"])),
            "python": (int(py_meta["version"]), tuple(int(v) for v in tensors["python.state"].tolist()),
                       None if py_meta["gauss_next"] is None else float(py_meta["gauss_next"])),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"RNG state incomplete or malformed ({type(e).__name__}: {e})") from e
    if meta.get("cpu_dropout"):
        state["cpu_dropout"] = meta["cpu_dropout"]
    cuda = sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
    if cuda:
        state["cuda"] = [tensors[k].to(torch.uint8) for k in cuda]
    return state


def save_rng(ckpt_dir: Path, rank: int) -> None:
    """Write this rank's :func:`rng_state` to ``rng/rank_NNNNN.safetensors`` (no pickle)."""
    from safetensors.torch import save_file

    p = _rng_file(ckpt_dir, rank)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors, meta = rng_to_tensors(rng_state())
    save_file(tensors, str(p), metadata=meta)


def load_rng(ckpt_dir: Path, rank: int) -> bool:
    """Restore this rank's RNG states; False when the file does not exist (world size grew, or a
    checkpoint from before the safetensors format: its pickled ``rank_NNNNN.pt`` is never read).

    Raises:
        CheckpointError: an unreadable or malformed RNG file (named in the message).
    """
    from safetensors import safe_open

    p = _rng_file(ckpt_dir, rank)
    if not p.is_file():
        return False
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = rng_from_tensors(tensors, meta)
    except CheckpointError as e:
        raise CheckpointError(f"{p}: {e}") from None
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{p}: unreadable RNG state ({e})") from None
    set_rng_state(state)
    return True


# --- one writer per run folder ---------------------------------------------------------------

def _lock(out: Path) -> Any:
    """Open and ``flock`` ``out/run.lock`` (exclusive, non-blocking); record pid and host."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    # O_NOFOLLOW: a run folder from someone else may ship run.lock as a link to one of the
    # user's files, which would then be truncated and written
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunFolderBusy(f"{path} is a symlink; remove it (a run folder's lock must be a "
                                f"plain file)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFolderBusy(f"{path} is not a regular file; remove it")
    f = os.fdopen(fd, "r+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip()[:120] or "a process that has not written its pid yet"
        f.close()
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunFolderBusy(f"{out} is in use by another run ({holder}; lock {path}); wait for "
                            f"it to finish or stop it, or use another --output-dir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


_HELD: set[str] = set()


@contextlib.contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the block (call on every rank; rank 0 takes it, before anything
    is written to ``out``).

    ``fcntl.flock`` on ``out/run.lock``: the kernel releases it when the holder exits or is
    killed, so a stale lock file never blocks; the file is left in place (its content is the
    last holder's pid and host). On a shared file system across nodes this relies on the file
    system's lock support (NFSv4, Lustre and GPFS have it).

    Raises:
        RunFolderBusy: (on every rank) another live process holds the lock; one line naming its
            pid and host.
    """
    from djepa.core.train import distributed as D

    D.init_distributed()
    key = str(Path(out).resolve())
    if key in _HELD:  # nested (a CLI holds it around train()): flock is per open file
        yield
        return
    f, err = None, None
    if D.rank() == 0:
        try:
            f = _lock(out)
        except RunFolderBusy as e:
            err = str(e)
    err = D.broadcast_object(err)
    if err is not None:
        raise RunFolderBusy(err)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        if f is not None:
            f.close()  # releases the flock


def one_writer(arg: str = "cfg") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: run the function holding :func:`run_folder_lock` on ``<arg>.output_dir``
    (``arg`` names the parameter holding a config with an ``output_dir``, optionally followed by
    attributes, e.g. ``"cfg.train"`` for a CLI config that nests the engine's)."""
    name, *attrs = arg.split(".")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            cfg = sig.bind_partial(*args, **kwargs).arguments[name]
            for a in attrs:
                cfg = getattr(cfg, a)
            with run_folder_lock(Path(cfg.output_dir)):
                return fn(*args, **kwargs)

        return locked

    return deco


# --- DeepSpeed's files, read without pickle globals --------------------------------------------

def deepspeed_safe_globals() -> list[Any]:
    """The non-tensor types DeepSpeed 0.19 writes into its checkpoint files (ZeRO 0/1/2,
    fp32 / bf16-autocast / fp16), found by saving real checkpoints and loading them with
    ``weights_only=True``: the loss scalers (plain attribute objects), ``ZeroStageEnum`` and the
    ``fragment_address`` dataclass. None of them runs code when rebuilt (``__dict__`` update /
    enum lookup)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@cache
def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from djepa.core.safe_load import UnsafeFileError, torch_load

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):  # type: ignore[misc]
        """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""

        def load(self, path: str, map_location: Any = None) -> Any:
            try:
                return torch_load(path, map_location=map_location, allow=deepspeed_safe_globals())
            except (UnsafeFileError, FileNotFoundError) as e:
                raise CheckpointError(str(e)) from None

    return SafeTorchCheckpointEngine


def safe_checkpoint_engine(engine: Any) -> Any:
    """Replace ``engine.checkpoint_engine`` (a DeepSpeed engine's; by default it loads with
    ``torch.load(weights_only=False)``) with one that reads through
    :func:`djepa.core.safe_load.torch_load` and :func:`deepspeed_safe_globals`; saving is
    unchanged. Returns the new checkpoint engine.

    Its ``load`` raises :class:`CheckpointError` (one line naming the file) for a file that
    references anything else.
    """
    ce = _safe_engine_class()(engine._config)
    engine.checkpoint_engine = ce
    return ce
