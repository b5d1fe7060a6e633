"""Shared plumbing for the modality CLIs: dataclass → command line (tyro), config files, and
one-line errors.

Every CLI is a frozen dataclass of flags. :func:`parse` builds the parser from it with tyro
(``--data-dir`` style flags, ``--help`` from the field docstrings) and accepts
``--config FILE.{yaml,yml,json}`` whose keys become the defaults (flags on the command line win).
:func:`run_main` turns expected failures into one ``prog: error: …`` line on stderr and exit
status 2, with no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["UserError", "parse", "load_config_file", "run_main"]

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input that the CLI reports as one line (no traceback)."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of flag values (keys with ``-`` or ``_`` both work).

    Raises:
        UserError: missing file, unparsable content, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml / json errors carry the position
        raise UserError(f"cannot parse config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of flag: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _file_values_as_args(values: dict[str, Any]) -> list[str]:
    """Config-file values → command-line tokens, so tyro type-checks them like flags."""
    args: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, "None" if value is None else str(value)]
    return args


def _drop_launcher_args(argv: list[str]) -> list[str]:
    """Remove ``--local_rank=N`` / ``--local-rank N`` that the ``deepspeed`` launcher (and old
    ``torch.distributed.launch``) append; the rank is also in the ``LOCAL_RANK`` variable."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--local_rank", "--local-rank"):
            skip = True
        elif not a.startswith(("--local_rank=", "--local-rank=")):
            out.append(a)
    return out


def parse(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
          description: str | None = None) -> T:
    """Parse ``argv`` into the dataclass ``cls``; ``--config FILE`` supplies defaults.

    Values from the file are turned into flags placed before the command line's own, so they
    are type-checked the same way and flags given on the command line win.

    Raises:
        UserError: bad config file, or keys in it that ``cls`` does not have.
        SystemExit: from tyro for ``--help`` and malformed flags (its own clear message).
    """
    import tyro

    argv = _drop_launcher_args(list(sys.argv[1:] if argv is None else argv))
    rest, path = [], None
    it = iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
            if path is None:
                raise UserError("--config needs a file path")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    if path is not None:
        values = load_config_file(path)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"config file {path} has unknown keys {unknown}")
        rest = _file_values_as_args(values) + rest
    desc = (description or (cls.__doc__ or "")).strip()
    desc += "\n\nAll flags can also come from a YAML/JSON file: --config FILE (flags given win)."
    return tyro.cli(cls, args=rest, prog=prog, description=desc)


def run_main(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; expected errors become ``prog: error: message`` on stderr and exit status 2.

    Expected errors: :class:`UserError`, ``ValueError``, ``OSError`` (missing files, existing
    folders, permissions), ``KeyError`` and ``RuntimeError`` (the engine's checkpoint and
    non-finite-loss errors); only the message's first line is printed.
    Set ``DJEPA_DEBUG=1`` to get the traceback instead. ``KeyboardInterrupt`` exits 130.

    Before ``fn`` it keeps freed host memory mapped (:func:`djepa.core.cpu_malloc.keep_freed_memory`;
    ``DJEPA_MALLOC=system`` keeps glibc's defaults).
    """
    import os

    from djepa.core.cpu_malloc import keep_freed_memory

    keep_freed_memory()
    if os.environ.get("DJEPA_DEBUG"):
        return int(fn() or 0)
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError, KeyError, RuntimeError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        msg = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
