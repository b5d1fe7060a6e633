"""The tokenizer protocol every modality implements, and the registry of tokenizer kinds.

D-JEPA (paper §3) models any data as a set of ``N`` continuous tokens of dimension ``D_tok`` on
a grid: image patches or VAE latents (2-D), video latents (3-D), audio frames (1-D). A
:class:`Tokenizer` turns a modality's data into tokens ``[B, N, D_tok]`` (row-major over
``grid``) and back, says which values the tokens occupy (so the sampler may clip its ``x0``
estimate, :func:`djepa.core.sampler.generate`'s ``clip_range``), and writes itself as a JSON
mapping that a run folder keeps (``tokenizer.json``) so sampling rebuilds the same tokenizer.

The mapping's ``"kind"`` names the tokenizer class in a registry: :func:`register_tokenizer`
(a class decorator the modality applies) or, for a kind whose module was not imported yet, an
entry point of the installed packages in the group ``djepa.tokenizers``
(``pixel = "djepa.image.tokenizer:PixelTokenizer"``). Only installed, registered code is ever
imported: a ``tokenizer.json`` names a kind, never a module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from torch import Tensor

__all__ = ["Tokenizer", "register_tokenizer", "tokenizer_class", "tokenizer_from_config",
           "registered_kinds", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "djepa.tokenizers"


@runtime_checkable
class Tokenizer(Protocol):
    """Data ↔ tokens for one modality (n-D grid).

    * ``kind``: the registry name (class attribute), written as ``"kind"`` by :meth:`to_config`.
    * ``encode(data)``: the modality's data batch (e.g. images ``[B, C, H, W]`` float in
      ``[0, 1]``) → tokens ``[B, N, D_tok]`` float, ``N = prod(grid)`` in row-major grid order.
    * ``decode(tokens)``: ``[B, N, D_tok]`` → the data batch (the inverse of ``encode`` up to the
      tokenizer's loss; valid data, e.g. clamped to ``[0, 1]``).
    * ``grid``: the token grid ``(L,)``, ``(H, W)`` or ``(T, H, W)``; ``token_dim``: ``D_tok``.
    * ``value_range``: ``(lo, hi)`` that encoded data occupy exactly, or ``None`` when unbounded
      (VAE latents).
    * ``to_config()`` → a JSON-safe mapping with ``"kind"``; ``from_config(mapping)``
      (classmethod) rebuilds an equal tokenizer (it ignores keys it does not read, such as the
      run's ``class_names``).
    """

    kind: ClassVar[str]

    @property
    def grid(self) -> tuple[int, ...]: ...

    @property
    def token_dim(self) -> int: ...

    @property
    def value_range(self) -> tuple[float, float] | None: ...

    def encode(self, data: Any) -> Tensor: ...

    def decode(self, tokens: Tensor) -> Any: ...

    def to_config(self) -> dict[str, Any]: ...

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Tokenizer: ...


_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_tokenizer(cls: T) -> T:
    """Class decorator: register ``cls`` under ``cls.kind``.

    Raises:
        TypeError: no ``kind`` string, or another class already holds that kind.
    """
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__} needs a class attribute kind: str to be registered")
    other = _REGISTRY.get(kind)
    if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"tokenizer kind {kind!r} is already registered by {other.__module__}.{other.__qualname__}")
    _REGISTRY[kind] = cls
    return cls


def _entry_point(kind: str):
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == kind]
    return found[0] if found else None


def registered_kinds() -> list[str]:
    """Kinds known now: registered classes and installed entry points."""
    from importlib.metadata import entry_points

    return sorted(set(_REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def tokenizer_class(kind: str) -> type:
    """The class registered for ``kind`` (importing the installed entry point if needed).

    Raises:
        ValueError: an unknown kind (the message lists the known ones).
    """
    if kind not in _REGISTRY:
        ep = _entry_point(kind)
        if ep is not None:
            cls = ep.load()
            if kind not in _REGISTRY:  # the entry point's module did not register it itself
                _REGISTRY[kind] = cls
    if kind not in _REGISTRY:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {registered_kinds()}")
    return _REGISTRY[kind]


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def tokenizer_from_config(config: Mapping[str, Any], *, source: str = "tokenizer config") -> Tokenizer:
    """Rebuild the tokenizer a :meth:`Tokenizer.to_config` mapping describes, and check it.

    The rebuilt tokenizer's own ``to_config()`` must agree with every key it shares with
    ``config`` (a recorded ``value_range`` or grid that the code would now compute differently
    is refused rather than silently used).

    Args:
        config: the mapping (e.g. a run's ``tokenizer.json``); extra keys are allowed.
        source: named in error messages (e.g. the file path).

    Raises:
        ValueError: not a mapping, no ``"kind"``, an unknown kind, missing or bad fields (the
            class's own errors, as one line naming ``source``), or a disagreeing key.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{source}: a tokenizer config must be a JSON object, got {type(config).__name__}")
    kind = config.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"{source}: no tokenizer 'kind' (known kinds: {registered_kinds()})")
    try:
        cls = tokenizer_class(kind)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    try:
        tok = cls.from_config(config)
    except KeyError as e:
        raise ValueError(f"{source}: {kind} tokenizer config lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: bad {kind} tokenizer config: {e}") from None
    now, recorded = _plain(tok.to_config()), _plain(dict(config))
    bad = sorted(k for k in now if k in recorded and now[k] != recorded[k])
    if bad:
        raise ValueError(f"{source}: the rebuilt {kind} tokenizer disagrees with the recorded "
                         f"{bad[0]!r} ({now[bad[0]]!r} vs {recorded[bad[0]]!r})")
    return tok
