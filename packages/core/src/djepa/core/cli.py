"""Shared plumbing for the modality CLIs: dataclass → command line (tyro), config files, and
one-line errors.

Every CLI is a frozen dataclass of flags; it may nest the core's own dataclasses (e.g. a
:class:`~djepa.core.train.TrainConfig` field and a :class:`~djepa.core.config.ModelSpec` field)
instead of re-declaring their fields. :func:`parse` builds the parser from it with tyro
(``--data-dir`` style flags, ``--help`` from the field docstrings) with the nesting prefixes
omitted (``tyro.conf.OmitArgPrefixes``: ``--max-steps``, not ``--train.max-steps``), and accepts
``--config FILE.{yaml,yml,json}`` whose flat keys (the flag names) become the defaults (flags on
the command line win). :func:`flag_fields` / :func:`flat_dict` give the same flat view in code.
:func:`run_main` turns expected failures into one ``prog: error: …`` line on stderr and exit
status 2, with no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin, get_type_hints

__all__ = ["UserError", "parse", "load_config_file", "run_main", "with_cpu_speed", "flag_fields", "flat_dict"]

T = TypeVar("T")


class UserError(Exception):
    """A problem with the user's input that the CLI reports as one line (no traceback)."""


def is_rank_zero() -> bool:
    """True in the process a launcher (torchrun, ``deepspeed``) started as global rank 0, or when
    no launcher set ``RANK`` (a plain ``python``/``uv run``): the one that prints and writes a
    run's summary files. Launcher plumbing, read here once for every CLI."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


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


def flag_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """Flat flag key (``max_steps``; the flag is ``--max-steps``) → attribute path in ``cls``
    (``("train", "max_steps")``), recursing into nested dataclass fields, whose prefixes are
    omitted. A field annotated ``Annotated[T, tyro.conf.arg(name=...)]`` uses that name
    (``TrainConfig.micro_batch_size`` is ``batch_size``).

    Raises:
        TypeError: two fields would get the same flag.
    """
    import tyro

    arg_type = type(tyro.conf.arg())
    hints = get_type_hints(cls, include_extras=True)
    out: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        base, meta = (get_args(typ)[0], get_args(typ)[1:]) if get_origin(typ) is Annotated else (typ, ())
        if isinstance(base, type) and dataclasses.is_dataclass(base):
            items = [(k, (f.name, *path)) for k, path in flag_fields(base).items()]
        else:
            name = next((m.name for m in meta if isinstance(m, arg_type) and m.name), f.name)
            items = [(name.replace("-", "_"), (f.name,))]
        for key, path in items:
            if key in out:
                raise TypeError(f"{cls.__name__}: flag --{key.replace('_', '-')} is declared twice "
                                f"({'.'.join(out[key])} and {'.'.join(path)})")
            out[key] = path
    return out


def flat_dict(cfg: Any) -> dict[str, Any]:
    """The flat ``{flag key: value}`` view of a (nested) CLI config: the keys a ``--config``
    file uses; tuples become lists (JSON-safe)."""
    out = {}
    for key, path in flag_fields(type(cfg)).items():
        value = cfg
        for name in path:
            value = getattr(value, name)
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


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
    are type-checked the same way and flags given on the command line win. Nested dataclass
    fields are parsed without their prefix (:func:`flag_fields`).

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
        known = set(flag_fields(cls))
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"config file {path} has unknown keys {unknown}")
        rest = _file_values_as_args(values) + rest
    desc = (description or (cls.__doc__ or "")).strip()
    desc += "\n\nAll flags can also come from a YAML/JSON file: --config FILE (flags given win)."
    return tyro.cli(cls, args=rest, prog=prog, description=desc, config=(tyro.conf.OmitArgPrefixes,))


def with_cpu_speed(cfg: T) -> T:
    """Install the CPU speed paths of a parsed CLI config's ``speed`` field (a
    :class:`~djepa.core.cpu_speed.CpuSpeedFlags`, the ``--cpu-speed`` flag) and return ``cfg``:
    ``run_main(prog, lambda: run(with_cpu_speed(parse(Config, argv))))``.

    Raises:
        TypeError: ``cfg`` has no ``speed`` field of that type.
    """
    from djepa.core import cpu_speed

    flags = getattr(cfg, "speed", None)
    if not isinstance(flags, cpu_speed.CpuSpeedFlags):
        raise TypeError(f"{type(cfg).__name__} has no `speed: CpuSpeedFlags` field")
    cpu_speed.install(flags.settings())
    return cfg


def run_main(prog: str, fn: Callable[[], int | None]) -> int:
    """Run ``fn``; expected errors become ``prog: error: message`` on stderr and exit status 2.

    Expected errors: :class:`UserError`, ``ValueError``, ``OSError`` (missing files, existing
    folders, permissions), ``KeyError`` and ``RuntimeError`` (the engine's checkpoint and
    non-finite-loss errors); only the message's first line is printed.
    Set ``DJEPA_DEBUG=1`` to get the traceback instead. ``KeyboardInterrupt`` exits 130.

    ``fn`` installs the CPU speed paths of its ``--cpu-speed`` flag (:func:`with_cpu_speed`);
    when it returns, the paths installed before are put back (so in-process callers such as
    tests see no leftover; the malloc setting stays).
    """
    import os

    from djepa.core import cpu_speed

    before = cpu_speed.installed()
    try:
        return _run_reporting(prog, fn, debug=bool(os.environ.get("DJEPA_DEBUG")))
    finally:
        cpu_speed.install(dataclasses.replace(before, malloc="system"))


def _run_reporting(prog: str, fn: Callable[[], int | None], *, debug: bool) -> int:
    if debug:
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
