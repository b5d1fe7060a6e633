"""The embedded compositional text-to-image set ("shapes"): procedural, fixed seed, no files.

Small RGB images (default 24×24) of 1–3 flat objects on black — shapes × colours at several
sizes — with captions in several phrasings, for CPU-scale text-to-image learning (paper App.
G.2 trains on millions of web images; this set is what a CPU can learn in minutes) and for the
automatic judge (:mod:`djepa.multimodal.judge`), in the spirit of GenEval's single object /
counting / colour / position tasks.

A scene's *meaning* is a :class:`Prompt`:

* ``kind="count"``: ``n`` (1–3) objects of one colour and shape ("two green triangles");
* ``kind="relation"``: two different objects, the first to the left of / above the second
  ("a red circle above a blue square" = "a blue square below a red circle").

:func:`captions` gives every phrasing of a prompt; :func:`parse_caption` maps any of them back to
the same :class:`Prompt` (canonical order: ``objects[0]`` is the left / upper object).

Splits (fixed, version :data:`SPLIT_VERSION`): the colour–shape pairs :data:`UNSEEN_PAIRS` never
occur in training, nor do the (object pair, axis) combinations :func:`unseen_relation_combos`
(both objects seen, but never side by side / stacked on that axis in training). :func:`is_seen`
says whether a prompt's combinations appear in training; the evaluation split
(:func:`eval_prompts`) holds ``seen`` prompts (combinations from training) and ``unseen`` ones.

Rendering (:func:`render`): hard-edged shapes (no anti-aliasing) in saturated palette colours
(:data:`PALETTE`), object half-size ``r`` in ``[r_min, r_max]`` (scaled with the image side),
at least 2 px apart; relation scenes put the objects apart by more than their extents along the
relation axis and within a few pixels across it. Images are ``[3, H, W]`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "COLOURS", "SHAPES", "PALETTE", "UNSEEN_PAIRS", "SPLIT_VERSION", "Prompt", "Placed", "Scene",
    "captions", "parse_caption", "is_seen", "unseen_relation_combos", "all_prompts", "train_prompts",
    "eval_prompts", "sample_scene", "render", "render_scene", "ShapesDataset", "caption_vocabulary",
    "DEFAULT_IMAGE_SIZE", "LAYOUTS",
]

SPLIT_VERSION = 1
DEFAULT_IMAGE_SIZE = 24
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: RGB in [0, 255]; far apart so that the judge's nearest-colour segmentation is unambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (30, 200, 50), "blue": (40, 70, 240), "yellow": (235, 215, 30)}
#: Colour–shape pairs that never appear in training (only in the evaluation split's unseen part).
UNSEEN_PAIRS: frozenset[tuple[str, str]] = frozenset({("blue", "triangle"), ("yellow", "circle")})
_NUM_WORDS = {1: "one", 2: "two", 3: "three"}
_WORD_NUMS = {"a": 1, "an": 1, "one": 1, "a single": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3}
_UNSEEN_RELATION_FRACTION = 0.15
_SPLIT_SEED = 1234

Obj = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class Prompt:
    """The meaning of a caption (see the module docstring).

    Attributes:
        kind: ``"count"`` or ``"relation"``.
        objects: ``count``: one ``(colour, shape)``; ``relation``: two different ones, the
            first left of / above the second.
        count: number of objects of a ``count`` prompt (1–3); 2 for a relation.
        axis: ``"horizontal"`` (objects[0] left of objects[1]) or ``"vertical"`` (above); None
            for ``count``.
    """

    kind: Literal["count", "relation"]
    objects: tuple[Obj, ...]
    count: int = 1
    axis: Literal["horizontal", "vertical"] | None = None

    def __post_init__(self) -> None:
        for c, s in self.objects:
            if c not in COLOURS or s not in SHAPES:
                raise ValueError(f"unknown object {c} {s}; colours {COLOURS}, shapes {SHAPES}")
        if self.kind == "count":
            if len(self.objects) != 1 or not 1 <= self.count <= 3 or self.axis is not None:
                raise ValueError(f"a count prompt has one object kind, 1-3 copies, no axis: {self}")
        elif self.kind == "relation":
            if len(self.objects) != 2 or self.objects[0] == self.objects[1] or self.count != 2 \
                    or self.axis not in ("horizontal", "vertical"):
                raise ValueError(f"a relation prompt has two different objects and an axis: {self}")
        else:
            raise ValueError(f"unknown prompt kind {self.kind!r}")

    @property
    def canonical(self) -> str:
        """The first phrasing of :func:`captions` (a stable name)."""
        return captions(self)[0]


def _name(o: Obj) -> str:
    return f"{o[0]} {o[1]}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _a(o: Obj) -> str:
    return f"{_article(o[0])} {_name(o)}"


def captions(p: Prompt) -> list[str]:
    """Every phrasing of ``p`` (the training captions draw one of them uniformly)."""
    if p.kind == "count":
        (c, s), n = p.objects[0], p.count
        if n == 1:
            return [f"{_article(c)} {c} {s}", f"one {c} {s}", f"a picture of {_article(c)} {c} {s}"]
        return [f"{_NUM_WORDS[n]} {c} {s}s", f"{n} {c} {s}s", f"a picture of {_NUM_WORDS[n]} {c} {s}s"]
    a, b = p.objects
    if p.axis == "horizontal":
        return [f"{_a(a)} to the left of {_a(b)}", f"{_a(b)} to the right of {_a(a)}",
                f"{_a(a)} left of {_a(b)}", f"{_a(b)} right of {_a(a)}"]
    return [f"{_a(a)} above {_a(b)}", f"{_a(b)} below {_a(a)}",
            f"{_a(a)} on top of {_a(b)}", f"{_a(b)} under {_a(a)}"]


_REL = {"to the left of": ("horizontal", False), "left of": ("horizontal", False),
        "to the right of": ("horizontal", True), "right of": ("horizontal", True),
        "above": ("vertical", False), "on top of": ("vertical", False),
        "below": ("vertical", True), "under": ("vertical", True), "beneath": ("vertical", True)}
_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_REL_RE = re.compile(rf"^(?:an?|one) ({_C}) ({_S}) ({'|'.join(sorted(_REL, key=len, reverse=True))}) "
                     rf"(?:an?|one) ({_C}) ({_S})$")
_COUNT_RE = re.compile(rf"^(a single|an?|one|two|three|[123]) ({_C}) ({_S})(s?)$")


def parse_caption(text: str) -> Prompt:
    """The :class:`Prompt` of a caption in any phrasing of :func:`captions` (case, surrounding
    spaces, a trailing period and a leading "a picture of" / "an image of" / "there is" ignored).

    Raises:
        ValueError: not a caption of this set (names the text).
    """
    t = " ".join(text.lower().strip().rstrip(".").split())
    for lead in ("a picture of ", "an image of ", "a photo of ", "there is ", "there are "):
        if t.startswith(lead):
            t = t[len(lead):]
    m = _REL_RE.match(t)
    if m:
        a, rel, b = (m.group(1), m.group(2)), m.group(3), (m.group(4), m.group(5))
        axis, flipped = _REL[rel]
        if a == b:
            raise ValueError(f"caption {text!r} relates an object to itself")
        return Prompt("relation", (b, a) if flipped else (a, b), 2, axis)
    m = _COUNT_RE.match(t)
    if m:
        n = _WORD_NUMS[m.group(1)]
        if (n > 1) != bool(m.group(4)):
            raise ValueError(f"caption {text!r}: number and plural disagree")
        return Prompt("count", ((m.group(2), m.group(3)),), n)
    raise ValueError(f"caption {text!r} is not a caption of the shapes set (e.g. 'two green triangles', "
                     f"'a red circle above a blue square')")


# ------------------------------------------------------------------------------------ splits
def _objects() -> list[Obj]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def unseen_relation_combos() -> frozenset[tuple[frozenset, str]]:
    """(unordered pair of seen objects, axis) combinations never shown in training: a fixed
    :data:`_UNSEEN_RELATION_FRACTION` of them, drawn with a fixed seed."""
    seen = [o for o in _objects() if o not in UNSEEN_PAIRS]
    combos = [(frozenset(pair), axis) for pair in itertools.combinations(seen, 2)
              for axis in ("horizontal", "vertical")]
    rng = random.Random(_SPLIT_SEED)
    k = max(1, round(_UNSEEN_RELATION_FRACTION * len(combos)))
    return frozenset(rng.sample(combos, k))


_UNSEEN_REL = unseen_relation_combos()


def is_seen(p: Prompt) -> bool:
    """True when every combination of ``p`` appears in training: no unseen colour–shape pair and,
    for a relation, not an unseen (pair, axis) combination."""
    if any(o in UNSEEN_PAIRS for o in p.objects):
        return False
    if p.kind == "relation" and (frozenset(p.objects), p.axis) in _UNSEEN_REL:
        return False
    return True


def all_prompts() -> list[Prompt]:
    """Every prompt of the set (count 1–3 of each object; each ordered pair of different
    objects on each axis), in a fixed order."""
    out = [Prompt("count", (o,), n) for o in _objects() for n in (1, 2, 3)]
    out += [Prompt("relation", (a, b), 2, axis) for axis in ("horizontal", "vertical")
            for a in _objects() for b in _objects() if a != b]
    return out


def train_prompts() -> list[Prompt]:
    """The prompts training draws from (:func:`is_seen`)."""
    return [p for p in all_prompts() if is_seen(p)]


def _kind_weighted(prompts: list[Prompt], rng: random.Random) -> Prompt:
    """One prompt: a count scene with probability 0.4 (n = 1, 2, 3 with 0.5 / 0.3 / 0.2), else a
    relation (uniform among those available)."""
    counts = [p for p in prompts if p.kind == "count"]
    rels = [p for p in prompts if p.kind == "relation"]
    if counts and (not rels or rng.random() < 0.4):
        n = rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0]
        pool = [p for p in counts if p.count == n] or counts
        return rng.choice(pool)
    return rng.choice(rels)


def eval_prompts(split: Literal["seen", "unseen"], num: int, seed: int = 0) -> list[tuple[Prompt, str]]:
    """``num`` (prompt, caption) pairs of the evaluation split: ``seen`` draws prompts whose
    combinations appear in training, ``unseen`` prompts with an unseen colour–shape pair or
    (pair, axis) combination; kinds mixed as in training, one phrasing drawn per prompt."""
    if split not in ("seen", "unseen"):
        raise ValueError(f"eval split must be 'seen' or 'unseen', got {split!r}")
    pool = [p for p in all_prompts() if is_seen(p) == (split == "seen")]
    rng = random.Random(10_000 + seed + (0 if split == "seen" else 1))
    out = []
    for _ in range(num):
        p = _kind_weighted(pool, rng)
        out.append((p, rng.choice(captions(p))))
    return out


def caption_vocabulary() -> list[str]:
    """Every caption of every prompt (the text encoder's states are cached for all of them)."""
    seen, out = set(), []
    for p in all_prompts():
        for c in captions(p):
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


# --------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Placed:
    """One object in an image: colour, shape, centre ``(cx, cy)`` in pixels (x right, y down),
    half-size ``r`` in pixels."""

    colour: str
    shape: str
    cx: float
    cy: float
    r: float


@dataclass(frozen=True)
class Scene:
    prompt: Prompt
    objects: tuple[Placed, ...]


def _sizes(image_size: int) -> tuple[float, float]:
    k = image_size / 24.0
    return 3.5 * k, 5.0 * k


def _mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if shape == "square":
        h = r * 0.85
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    if shape == "triangle":  # apex up, base at cy + r, half-width r at the base
        top, bot = cy - r, cy + r
        frac = (y - top) / (2 * r)
        return (y >= top) & (y <= bot) & (np.abs(x - cx) <= r * frac)
    raise ValueError(f"unknown shape {shape!r}")


def render(objects: tuple[Placed, ...] | list[Placed], image_size: int = DEFAULT_IMAGE_SIZE) -> Tensor:
    """Draw ``objects`` on black: ``[3, S, S]`` float32 in ``[0, 1]`` (later objects on top)."""
    img = np.zeros((image_size, image_size, 3), dtype=np.float32)
    for o in objects:
        img[_mask(o.shape, o.cx, o.cy, o.r, image_size)] = np.asarray(PALETTE[o.colour], np.float32) / 255.0
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _separated(a: Placed, b: Placed, gap: float) -> bool:
    return abs(a.cx - b.cx) >= a.r + b.r + gap or abs(a.cy - b.cy) >= a.r + b.r + gap


#: Layouts of :func:`sample_scene`.
LAYOUTS: tuple[str, ...] = ("random", "slots")


def _slot_scene(p: Prompt, rng: random.Random, s: float, lo: float, hi: float) -> Scene:
    """``layout="slots"``: fixed centres (fractions of the side ``s``), a random half-size."""
    r = rng.uniform(lo, hi)
    if p.kind == "count":
        (c, sh), = p.objects
        centres = {1: [(0.5, 0.5)], 2: [(0.25, 0.5), (0.75, 0.5)],
                   3: [(0.25, 0.23), (0.75, 0.23), (0.5, 0.77)]}[p.count]
        return Scene(p, tuple(Placed(c, sh, fx * s, fy * s, r) for fx, fy in centres))
    (ca, sa), (cb, sb) = p.objects
    if p.axis == "horizontal":
        return Scene(p, (Placed(ca, sa, 0.25 * s, 0.5 * s, r), Placed(cb, sb, 0.75 * s, 0.5 * s, r)))
    return Scene(p, (Placed(ca, sa, 0.5 * s, 0.25 * s, r), Placed(cb, sb, 0.5 * s, 0.75 * s, r)))


def sample_scene(p: Prompt, rng: random.Random, image_size: int = DEFAULT_IMAGE_SIZE,
                 layout: str = "random") -> Scene:
    """Sizes and positions for ``p``.

    ``layout="random"`` (module docstring): random sizes and positions; objects inside the
    image, at least 2 px apart; relation scenes offset along the axis by more than the extents,
    at most ``0.1·S`` across it. ``layout="slots"``: the same objects at fixed centres — one
    object in the middle, two side by side at ¼ and ¾ of the width, three in a triangle, a
    relation's first object at ¼ and its second at ¾ along the relation axis, centred across
    it — with one random half-size in ``[r_min, r_max]`` for the scene (at 24 px the objects
    stay ≥ 2 px apart). With slots the picture of a prompt varies only in scale, so a model
    draws it from the caption and the position alone, without having to find the other objects
    in its context (what a 15-minute CPU run does not learn, docs/results/video.md).

    Raises:
        ValueError: an unknown layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    lo, hi = _sizes(image_size)
    s = float(image_size)
    if layout == "slots":
        return _slot_scene(p, rng, s, lo, hi)
    for _ in range(1000):
        if p.kind == "count":
            placed: list[Placed] = []
            (c, sh), ok = p.objects[0], True
            for _k in range(p.count):
                for _t in range(200):
                    r = rng.uniform(lo, hi)
                    o = Placed(c, sh, rng.uniform(r + 1, s - r - 1), rng.uniform(r + 1, s - r - 1), r)
                    if all(_separated(o, q, 2.0) for q in placed):
                        placed.append(o)
                        break
                else:
                    ok = False
                    break
            if ok:
                return Scene(p, tuple(placed))
            continue
        ra, rb = rng.uniform(lo, hi), rng.uniform(lo, hi)
        need = ra + rb + 3.0
        along_a = rng.uniform(ra + 1, s - rb - 1 - need)
        along_b = rng.uniform(along_a + need, s - rb - 1) if along_a + need <= s - rb - 1 else None
        if along_b is None:
            continue
        mid = rng.uniform(max(ra, rb) + 1 + 0.05 * s, s - max(ra, rb) - 1 - 0.05 * s)
        da, db = (rng.uniform(-0.05 * s, 0.05 * s) for _ in range(2))
        (ca, sa), (cb, sb) = p.objects
        if p.axis == "horizontal":
            a, b = Placed(ca, sa, along_a, mid + da, ra), Placed(cb, sb, along_b, mid + db, rb)
        else:
            a, b = Placed(ca, sa, mid + da, along_a, ra), Placed(cb, sb, mid + db, along_b, rb)
        return Scene(p, (a, b))
    raise RuntimeError(f"could not place {p} in a {image_size}px image")


def render_scene(p: Prompt, rng: random.Random, image_size: int = DEFAULT_IMAGE_SIZE,
                 layout: str = "random") -> Tensor:
    """:func:`render` of :func:`sample_scene` (``layout`` as there)."""
    return render(sample_scene(p, rng, image_size, layout).objects, image_size)


class ShapesDataset(Dataset):
    """Training items of the shapes set: item ``i`` is a scene drawn from
    ``random.Random(seed · 1_000_003 + i)`` — a prompt of :func:`train_prompts` (kinds mixed as
    :func:`eval_prompts` says), one phrasing, a rendering — so the set is a pure function of
    ``(seed, i)``, needs no storage and resumes exactly.

    Returns ``(image [3, S, S] float32 in [0, 1], caption_id int64)``; ``caption_id`` indexes
    :attr:`captions` (= :func:`caption_vocabulary`).

    Args:
        size: number of items (an epoch).
        image_size: ``S`` in pixels (default 24).
        seed: the set's seed.
        layout: ``"random"`` or ``"slots"`` (:func:`sample_scene`).
    """

    channels = 3
    num_classes = 1

    def __init__(self, size: int = 50_000, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                 layout: str = "random") -> None:
        if size < 1 or image_size < 12:
            raise ValueError(f"need size >= 1 and image_size >= 12, got {size}, {image_size}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.size, self.image_size, self.seed, self.layout = int(size), int(image_size), int(seed), layout
        self.captions = caption_vocabulary()
        self._index = {c: i for i, c in enumerate(self.captions)}
        self._prompts = train_prompts()

    def __len__(self) -> int:
        return self.size

    def item(self, i: int) -> tuple[Scene, str]:
        """The scene and caption of item ``i``."""
        rng = random.Random(self.seed * 1_000_003 + int(i))
        p = _kind_weighted(self._prompts, rng)
        cap = rng.choice(captions(p))
        return sample_scene(p, rng, self.image_size, self.layout), cap

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        scene, cap = self.item(i)
        return render(scene.objects, self.image_size), torch.tensor(self._index[cap], dtype=torch.long)

