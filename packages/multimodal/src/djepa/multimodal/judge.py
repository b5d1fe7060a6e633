"""A weight-free judge for the shapes set (``t2i-eval``), in the spirit of GenEval (Ghosh et al.
2023: object, counting, colour and position tasks scored by a detector), with colour
segmentation and shape features instead of a learned detector.

Detection (:func:`detect`), on an ``[3, H, W]`` image in ``[0, 1]`` (any size; it is resized to
the set's 24 px side first when different, nearest-neighbour):

1. each pixel whose brightest channel is at least :data:`DARK` is given the nearest
   :data:`~djepa.multimodal.shapes.PALETTE` colour (Euclidean RGB) when within
   :data:`MAX_COLOUR_DIST`; others are background;
2. connected components per colour (8-connectivity, ``scipy.ndimage.label``); components smaller
   than ``min_area`` pixels (noise) are dropped;
3. shape from features of the component's bounding box (:func:`classify_shape`): how much of
   its upper and lower corner regions is filled (a square fills all four, a disc none, an
   upward triangle the lower two) and the taper ``width of the top third / width of the bottom
   third`` (triangle ≪ 1, circle and square ≈ 1); the fill ratio ``area / bbox area`` is
   reported beside.

Scores per prompt (:func:`score`; :class:`Verdict`):

* ``object_colour``: every object the prompt names is found with its colour and shape;
* ``count`` (count prompts): exactly ``n`` objects of that colour and shape;
* ``relation`` (relation prompts): both objects found and the first lies on the named side of the
  second: along the axis its centroid is before the other's by more than the offset across it;
* ``extra``: an object of another colour/shape than the prompt names is present;
* ``correct``: all of the above that apply hold and nothing extra is present.

:func:`summarise` averages them per group (e.g. seen / unseen). Validated on real renders of the
set (``tests/multimodal/test_judge.py``: ≥ 99 % on ground truth, and wrong renders fail).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from djepa.multimodal.shapes import COLOURS, DEFAULT_IMAGE_SIZE, PALETTE, Prompt

__all__ = ["Detection", "Verdict", "detect", "classify_shape", "score", "judge_image", "summarise",
           "DARK", "MAX_COLOUR_DIST"]

DARK = 0.3
MAX_COLOUR_DIST = 0.5


@dataclass(frozen=True)
class Detection:
    """One object found: colour, shape, centroid ``(cx, cy)`` in pixels of the judged 24 px image,
    area in pixels, fill ratio, taper and the corner fills (``top``, ``bottom``)."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    fill: float
    taper: float
    top: float
    bottom: float


@dataclass(frozen=True)
class Verdict:
    """The judge's scores of one image (module docstring). ``count`` / ``relation`` are None when
    the prompt has no count / relation to check."""

    object_colour: bool
    count: bool | None
    relation: bool | None
    extra: bool
    correct: bool
    detections: tuple[Detection, ...]


def classify_shape(top: float, bottom: float, taper: float) -> str:
    """Shape from the fill of the bounding box's corner regions (``top`` / ``bottom``: mean fill of
    the two upper / lower corner triangles ``u + v < 0.25`` in box coordinates) and the taper:
    ``"square"`` when the upper and lower corners are filled (≥ 0.5), ``"triangle"`` when the
    upper ones are empty but the lower ones are not (≥ 0.4) or the shape tapers (< 0.5), else
    ``"circle"`` (a disc leaves every corner region empty)."""
    if top >= 0.5 and bottom >= 0.5:
        return "square"
    if top < 0.5 and (bottom >= 0.4 or taper < 0.5):
        return "triangle"
    return "circle"


def _to_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    x = image.detach().float().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image, np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected an image [3, H, W] or [H, W, 3], got shape {list(x.shape)}")
    if x.shape[0] == 3 and x.shape[-1] != 3:
        x = x.transpose(1, 2, 0)
    if x.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got shape {list(x.shape)}")
    if x.max() > 1.5:  # uint8 values
        x = x / 255.0
    h, w = x.shape[:2]
    if (h, w) != (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE):
        ys = (np.arange(DEFAULT_IMAGE_SIZE) * h // DEFAULT_IMAGE_SIZE)
        xs = (np.arange(DEFAULT_IMAGE_SIZE) * w // DEFAULT_IMAGE_SIZE)
        x = x[ys][:, xs]
    return np.clip(x, 0.0, 1.0)


def detect(image: Tensor | np.ndarray, min_area: int = 5) -> list[Detection]:
    """The objects in ``image`` (module docstring), largest first.

    Args:
        image: ``[3, H, W]`` (or ``[H, W, 3]``) float in ``[0, 1]`` or uint8 values.
        min_area: smallest component kept, in pixels of the 24 px image.

    Raises:
        ValueError: not an RGB image.
    """
    from scipy import ndimage

    x = _to_hwc(image)
    pal = np.asarray([PALETTE[c] for c in COLOURS], np.float32) / 255.0  # [K, 3]
    dist = np.linalg.norm(x[:, :, None, :] - pal[None, None], axis=-1)  # [H, W, K]
    nearest = dist.argmin(-1)
    ok = (x.max(-1) >= DARK) & (dist.min(-1) <= MAX_COLOUR_DIST)
    out: list[Detection] = []
    for k, colour in enumerate(COLOURS):
        labels, n = ndimage.label(ok & (nearest == k), structure=np.ones((3, 3), bool))
        for j in range(1, n + 1):
            ys, xs = np.nonzero(labels == j)
            area = len(ys)
            if area < min_area:
                continue
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            bh, bw = y1 - y0 + 1, x1 - x0 + 1
            fill = area / float(bh * bw)
            u = (xs - x0 + 0.5) / bw
            v = (ys - y0 + 0.5) / bh
            grid_u = (np.arange(bw) + 0.5) / bw
            grid_v = (np.arange(bh) + 0.5) / bh
            gu, gv = np.meshgrid(grid_u, grid_v)

            def corner(fu, fv):  # fill of the corner region u' + v' < 0.25
                region = (fu(gu) + fv(gv)) < 0.25
                inside = (fu(u) + fv(v)) < 0.25
                return inside.sum() / max(1, region.sum())

            same, flip = (lambda a: a), (lambda a: 1 - a)
            top = (corner(same, same) + corner(flip, same)) / 2
            bottom = (corner(same, flip) + corner(flip, flip)) / 2
            third = max(1, bh // 3)
            w_top = np.ptp(xs[ys < y0 + third]) + 1 if (ys < y0 + third).any() else 0
            w_bot = np.ptp(xs[ys > y1 - third]) + 1 if (ys > y1 - third).any() else 1
            taper = w_top / float(w_bot)
            out.append(Detection(colour, classify_shape(top, bottom, taper), float(xs.mean() + 0.5),
                                 float(ys.mean() + 0.5), int(area), round(float(fill), 4), round(float(taper), 4),
                                 round(float(top), 4), round(float(bottom), 4)))
    return sorted(out, key=lambda d: -d.area)


def score(prompt: Prompt, detections: Iterable[Detection]) -> Verdict:
    """The :class:`Verdict` of ``detections`` for ``prompt`` (module docstring)."""
    dets = tuple(detections)
    named = set(prompt.objects)
    found = {o: [d for d in dets if (d.colour, d.shape) == o] for o in named}
    object_colour = all(found[o] for o in named)
    extra = any((d.colour, d.shape) not in named for d in dets)
    count = relation = None
    if prompt.kind == "count":
        count = len(found[prompt.objects[0]]) == prompt.count
        ok = object_colour and count
    else:
        a_o, b_o = prompt.objects
        relation = False
        if found[a_o] and found[b_o]:
            a, b = found[a_o][0], found[b_o][0]  # the largest of each
            along, across = ((b.cx - a.cx), (b.cy - a.cy)) if prompt.axis == "horizontal" \
                else ((b.cy - a.cy), (b.cx - a.cx))
            relation = along > 0 and along > abs(across)
        ok = object_colour and relation and all(len(found[o]) == 1 for o in named)
    return Verdict(object_colour, count, relation, extra, bool(ok and not extra), dets)


def judge_image(prompt: Prompt, image: Tensor | np.ndarray) -> Verdict:
    """:func:`score` of :func:`detect`."""
    return score(prompt, detect(image))


def summarise(verdicts: Iterable[Verdict]) -> dict:
    """Accuracies over ``verdicts``: ``n``, ``object_colour``, ``count`` (over count prompts),
    ``relation`` (over relation prompts), ``correct``, ``extra`` (fractions; None when no prompt
    of that kind), and ``n_count`` / ``n_relation``."""
    vs = list(verdicts)

    def mean(vals):
        vals = [bool(v) for v in vals if v is not None]
        return None if not vals else sum(vals) / len(vals)

    return dict(n=len(vs), object_colour=mean(v.object_colour for v in vs),
                count=mean(v.count for v in vs), relation=mean(v.relation for v in vs),
                correct=mean(v.correct for v in vs), extra=mean(v.extra for v in vs),
                n_count=sum(v.count is not None for v in vs), n_relation=sum(v.relation is not None for v in vs))


def verdict_dict(v: Verdict) -> dict:
    """JSON-safe form of a verdict (detections as dicts)."""
    d = asdict(v)
    d["detections"] = [asdict(x) for x in v.detections]
    return d


def load_png(path) -> Tensor:
    """A PNG → ``[3, H, W]`` float in ``[0, 1]`` (RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)
