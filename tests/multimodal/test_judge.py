"""The judge on real renders of the set: >= 99 % on ground truth; deliberately wrong renders fail."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import torch

from djepa.multimodal import judge as J
from djepa.multimodal import shapes as S


def _scenes(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        p = S._kind_weighted(S.all_prompts(), rng)
        yield p, S.sample_scene(p, rng), rng


def test_ground_truth_renders_score_at_least_99_percent():
    vs = [J.judge_image(p, S.render(sc.objects)) for p, sc, _ in _scenes(600, 1)]
    s = J.summarise(vs)
    assert s["correct"] >= 0.99, s
    assert s["object_colour"] >= 0.99 and s["count"] >= 0.99 and s["relation"] >= 0.99
    assert s["n_count"] > 100 and s["n_relation"] > 200


def test_ground_truth_survives_png_round_trip_and_upscaling(tmp_path):
    from PIL import Image

    ok = 0
    for k, (p, sc, _) in enumerate(_scenes(100, 2)):
        img = S.render(sc.objects)
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        big = np.kron(arr, np.ones((3, 3, 1), np.uint8))  # 72 px
        Image.fromarray(big).save(tmp_path / f"{k}.png")
        ok += J.judge_image(p, J.load_png(tmp_path / f"{k}.png")).correct
    assert ok >= 99


def _other(value, choices, rng):
    return rng.choice([c for c in choices if c != value])


def test_wrong_renders_fail():
    n_fail = {"colour": 0, "shape": 0, "relation": 0, "count": 0}
    n = {k: 0 for k in n_fail}
    for p, sc, rng in _scenes(400, 3):
        objs = list(sc.objects)
        # a wrong colour on one named object
        i = rng.randrange(len(objs))
        wrong = objs.copy()
        wrong[i] = replace(objs[i], colour=_other(objs[i].colour, S.COLOURS, rng))
        v = J.judge_image(p, S.render(wrong))
        n["colour"] += 1
        n_fail["colour"] += not v.correct
        # a wrong shape
        wrong = objs.copy()
        wrong[i] = replace(objs[i], shape=_other(objs[i].shape, S.SHAPES, rng))
        v = J.judge_image(p, S.render(wrong))
        n["shape"] += 1
        # the object is missing (one object / relation) or the count is wrong (n >= 2)
        n_fail["shape"] += not v.correct and (not v.object_colour or v.count is False)
        if p.kind == "relation":  # the two objects swapped: the relation is reversed
            a, b = objs
            swapped = [replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)]
            v = J.judge_image(p, S.render(swapped))
            n["relation"] += 1
            n_fail["relation"] += (v.relation is False) and not v.correct
        else:  # one object fewer or one more of the same kind
            if len(objs) > 1:
                v = J.judge_image(p, S.render(objs[:-1]))
            else:
                p2 = replace(p, count=2)
                v = J.judge_image(p, S.render(S.sample_scene(p2, rng).objects))
            n["count"] += 1
            n_fail["count"] += (v.count is False) and not v.correct
    for k in n:
        assert n[k] > 50 and n_fail[k] / n[k] >= 0.99, (k, n_fail[k], n[k])


def test_black_and_noise_images_find_nothing():
    assert J.detect(torch.zeros(3, 24, 24)) == []
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(3, 24, 24, generator=g) * 0.2  # dark noise
    assert J.detect(noise) == []
    p = S.parse_caption("a red circle")
    v = J.judge_image(p, torch.zeros(3, 24, 24))
    assert not v.object_colour and v.count is False and not v.correct


def test_summarise_counts():
    p1, p2 = S.parse_caption("a red circle"), S.parse_caption("a red circle above a blue square")
    rng = random.Random(0)
    good1 = J.judge_image(p1, S.render_scene(p1, rng))
    good2 = J.judge_image(p2, S.render_scene(p2, rng))
    bad = J.judge_image(p2, torch.zeros(3, 24, 24))
    s = J.summarise([good1, good2, bad])
    assert s["n"] == 3 and s["n_count"] == 1 and s["n_relation"] == 2
    assert s["relation"] == 0.5 and s["count"] == 1.0 and abs(s["object_colour"] - 2 / 3) < 1e-9


def test_slot_layout_places_objects_at_fixed_centres_and_the_judge_reads_them():
    """layout="slots": centres at the fixed fractions of the side, one scale per scene, objects
    >= 2 px apart at the largest scale; the judge scores every ground-truth slot render."""
    rng = random.Random(5)
    prompts = S.all_prompts()
    centres = {1: [(12, 12)], 2: [(6, 12), (18, 12)], 3: [(6, 5.52), (18, 5.52), (12, 18.48)]}
    for p in prompts:
        sc = S.sample_scene(p, rng, 24, layout="slots")
        got = [(o.cx, o.cy) for o in sc.objects]
        if p.kind == "count":
            want = centres[p.count]
        else:
            want = [(6, 12), (18, 12)] if p.axis == "horizontal" else [(12, 6), (12, 18)]
        np.testing.assert_allclose(got, want, atol=1e-9)
        assert len({o.r for o in sc.objects}) == 1
        big = [replace(o, r=S._sizes(24)[1]) for o in sc.objects]
        assert all(S._separated(a, b, 2.0) for i, a in enumerate(big) for b in big[i + 1:]), p
    vs = [J.judge_image(p, S.render(S.sample_scene(p, rng, 24, layout="slots").objects)) for p in prompts]
    assert J.summarise(vs)["correct"] == 1.0
    ds = S.ShapesDataset(50, seed=0, layout="slots")
    assert all((round(o.cx, 6), round(o.cy, 6)) in [(6.0, 12.0), (18.0, 12.0), (12.0, 6.0), (12.0, 18.0), (12.0, 12.0), (6.0, 5.52),
                                (18.0, 5.52), (12.0, 18.48)] for i in range(50) for o in ds.item(i)[0].objects)
    import pytest

    with pytest.raises(ValueError, match="layout"):
        S.sample_scene(prompts[0], rng, 24, layout="grid")
