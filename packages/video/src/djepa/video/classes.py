"""Class ids of video data sets: UCF101's ``classInd.txt``, folder-name classes, and resolving a
class given by index or name (issue 13; MODALITIES.md "UCF101 class ids").

UCF101's ``classInd.txt`` lists ``<id> <Name>`` with 1-based ids in **case-insensitive** order of
the folder names (``36 Hammering``, ``37 HammerThrow``: ``hammeri`` < ``hammert``; likewise
``JumpingJack`` before ``JumpRope``). Python's case-sensitive ``sorted()`` puts every upper-case
letter before every lower-case one (``HammerT`` < ``Hammeri``) and swaps such pairs (a known bug of repos that rebuild the ids with ``sorted(os.listdir(...))``). Here the
ids are always *read* from ``classInd.txt`` when it exists, stored 0-based (``id − 1``), and
saved with the run; without the file, folder names are ordered with :func:`ucf_sorted` (the
case-insensitive order ``classInd.txt`` uses).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["read_class_ind", "ucf_sorted", "resolve_class"]


def ucf_sorted(names: Iterable[str]) -> list[str]:
    """Names in UCF101's ``classInd.txt`` order: case-insensitive, ties by the exact string."""
    return sorted(names, key=lambda s: (s.lower(), s))


def read_class_ind(path: str | os.PathLike[str]) -> list[str]:
    """Class names by 0-based id from a UCF101 ``classInd.txt`` (lines ``<1-based id> <Name>``).

    Returns:
        ``names`` with ``names[id − 1] = Name``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed line, duplicate ids or names, or ids that are not exactly
            ``1 … K`` (the message names the file and the line).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class index file {p} not found")
    ids: dict[int, str] = {}
    for lineno, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{p}:{lineno}: expected '<id> <ClassName>', got {line.strip()!r}")
        i, name = int(parts[0]), parts[1]
        if i in ids or name in ids.values():
            raise ValueError(f"{p}:{lineno}: duplicate class id or name {line.strip()!r}")
        ids[i] = name
    if not ids:
        raise ValueError(f"{p} lists no classes")
    if sorted(ids) != list(range(1, len(ids) + 1)):
        raise ValueError(f"{p}: class ids must be 1..{len(ids)} (1-based, no gaps), got "
                         f"{min(ids)}..{max(ids)} with {len(ids)} entries")
    return [ids[i] for i in range(1, len(ids) + 1)]


def resolve_class(spec: str | int, names: Sequence[str]) -> int:
    """A class given as a 0-based index (``"12"``) or a name (exact, else case-insensitive) → id.

    Raises:
        ValueError: an index out of range or an unknown name; one line that names the valid range
            (and a few names).
    """
    k = len(names)
    s = str(spec).strip()
    head = ", ".join(f"{i}={n}" for i, n in enumerate(names[:5])) + (", …" if k > 5 else "")
    if s.lstrip("-").isdigit():
        i = int(s)
        if 0 <= i < k:
            return i
        raise ValueError(f"class index {i} is out of range: valid 0..{k - 1} ({head})")
    if s in names:
        return list(names).index(s)
    low = [n.lower() for n in names]
    if s.lower() in low:
        return low.index(s.lower())
    raise ValueError(f"unknown class name {s!r}: give an index 0..{k - 1} or a name ({head})")
