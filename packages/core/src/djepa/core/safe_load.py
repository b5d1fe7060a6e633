"""Reading ``torch.save`` files without running code from them.

A pickle can name any importable callable, and ``torch.load(weights_only=False)`` calls it while
reading: a downloaded checkpoint, or a run folder from someone else, would run its author's code.
Everything djepa reads goes through :func:`torch_load` (``weights_only=True``: tensors, plain
containers and numbers, plus an explicit allow-list of classes per call site) or safetensors.

Source: ``torch.serialization`` (``weights_only`` unpickler, ``safe_globals``), PyTorch >= 2.4.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["UnsafeFileError", "torch_load"]

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeFileError(ValueError):
    """A ``torch.save`` file that needs something beyond tensors and allowed classes to load
    (it would run code), or that is not a readable torch file. The message is one line and
    names the file."""


def torch_load(path: str | os.PathLike[str], *, map_location: Any = "cpu",
               allow: Iterable[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allow`` as the only extra classes.

    Args:
        path: a ``torch.save`` file.
        map_location: as in ``torch.load``.
        allow: classes / functions the file may reference (``torch.serialization.safe_globals``);
            keep it to the types the writer is known to store.

    Returns:
        the loaded object.

    Raises:
        UnsafeFileError: the file references another global (it is never called: the
            ``weights_only`` unpickler refuses before anything runs), or is not a torch file.
            One line: the file and the refused global.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        m = _GLOBAL_RE.search(str(e))
        what = f"it references {m.group(1)}" if m else str(e).splitlines()[0][:200]
        raise UnsafeFileError(
            f"{path}: refused to load ({what}; only tensors and known types are read, "
            f"a file that needs code to load is not trusted)") from None
    except (RuntimeError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UnsafeFileError(f"{path}: not a readable torch file ({first})") from None
