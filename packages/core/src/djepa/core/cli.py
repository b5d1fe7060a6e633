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


def parse(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
          description: str | None = None) -> T:
    """Parse ``argv`` into the dataclass ``cls``; ``--config FILE`` supplies defaults.

    Raises:
        UserError: bad config file, or keys in it that ``cls`` does not have.
        SystemExit: from tyro for ``--help`` and malformed flags (its own clear message).
    """
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    default = None
    if "--config" in argv or any(a.startswith("--config=") for a in argv):
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
        values = load_config_file(path)  # type: ignore[arg-type]
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"config file {path} has unknown keys {unknown}")
        base = cls()  # type: ignore[call-arg]
        default = dataclasses.replace(base, **values)  # type: ignore[type-var]
        argv = rest
    desc = (description or (cls.__doc__ or "")).strip()
    desc += "\n\nAll flags can also come from a YAML/JSON file: --config FILE (flags given win)."
    return tyro.cli(cls, args=argv, default=default, prog=prog, description=desc)


def run_main(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; expected errors become ``prog: error: message`` on stderr and exit status 2.

    Expected errors: :class:`UserError`, ``ValueError``, ``FileNotFoundError``, ``KeyError``,
    ``NotADirectoryError``, ``PermissionError`` and the checkpoint errors (all subclasses of
    these, ``RuntimeError`` included: the engine's checkpoint and non-finite-loss errors).
    Set ``DJEPA_DEBUG=1`` to get the traceback instead. ``KeyboardInterrupt`` exits 130.
    """
    import os

    if os.environ.get("DJEPA_DEBUG"):
        return int(fn() or 0)
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            KeyError, RuntimeError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
