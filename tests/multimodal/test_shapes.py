"""The shapes set: phrasings parse back to one scene, the split really holds unseen combinations,
renders are deterministic and inside the image."""

from __future__ import annotations

import random

import pytest
import torch

from djepa.multimodal import shapes as S


def test_every_phrasing_parses_back_to_its_prompt():
    n = 0
    for p in S.all_prompts():
        caps = S.captions(p)
        assert len(set(caps)) == len(caps) >= 3
        for c in caps:
            assert S.parse_caption(c) == p, c
            assert S.parse_caption("  " + c.upper() + ". ") == p
            n += 1
    assert n == len(S.caption_vocabulary())


def test_inverse_relations_are_the_same_scene():
    a = S.parse_caption("a red circle above a blue square")
    assert a == S.parse_caption("a blue square below a red circle") == S.parse_caption("a blue square under a red circle")
    assert a.objects == (("red", "circle"), ("blue", "square")) and a.axis == "vertical"
    b = S.parse_caption("a green triangle to the right of a yellow square")
    assert b.objects == (("yellow", "square"), ("green", "triangle")) and b.axis == "horizontal"
    c = S.parse_caption("two green triangles")
    assert c == S.parse_caption("2 green triangles") and c.count == 2 and c.kind == "count"
    assert S.parse_caption("a picture of three red squares").count == 3


@pytest.mark.parametrize("bad", ["a red dog", "two green triangle", "a green triangles",
                                 "a red circle above a red circle", "", "four blue squares"])
def test_unparseable_captions_raise(bad):
    with pytest.raises(ValueError):
        S.parse_caption(bad)


def test_training_never_shows_an_unseen_combination():
    ds = S.ShapesDataset(size=3000, seed=0)
    rel = S.unseen_relation_combos()
    seen_pairs, seen_rel = set(), set()
    for i in range(len(ds)):
        scene, cap = ds.item(i)
        p = S.parse_caption(cap)
        assert p == scene.prompt
        assert S.is_seen(p)
        assert not any(o in S.UNSEEN_PAIRS for o in p.objects)
        assert tuple((o.colour, o.shape) for o in scene.objects if (o.colour, o.shape) in S.UNSEEN_PAIRS) == ()
        seen_pairs.update(p.objects)
        if p.kind == "relation":
            assert (frozenset(p.objects), p.axis) not in rel
            seen_rel.add((frozenset(p.objects), p.axis))
    # the training objects are exactly the non-held-out pairs, and the held-out relation combos
    # are made of objects that training does show
    assert seen_pairs == {(c, s) for c in S.COLOURS for s in S.SHAPES} - S.UNSEEN_PAIRS
    assert all(set(pair) <= seen_pairs for pair, _ in rel)
    assert len(seen_rel) > 50


def test_eval_split_parts():
    unseen = S.eval_prompts("unseen", 300)
    seen = S.eval_prompts("seen", 300)
    assert all(not S.is_seen(p) and S.parse_caption(c) == p for p, c in unseen)
    assert all(S.is_seen(p) and S.parse_caption(c) == p for p, c in seen)
    rel = S.unseen_relation_combos()
    # both kinds of held-out combination occur in the unseen part
    assert any(any(o in S.UNSEEN_PAIRS for o in p.objects) for p, _ in unseen)
    assert any(p.kind == "relation" and (frozenset(p.objects), p.axis) in rel
               and not any(o in S.UNSEEN_PAIRS for o in p.objects) for p, _ in unseen)
    assert {p.kind for p, _ in seen} == {"count", "relation"}
    assert S.eval_prompts("seen", 20) == seen[:20]  # fixed


def test_dataset_items_are_a_function_of_seed_and_index():
    a, b = S.ShapesDataset(100, seed=3), S.ShapesDataset(100, seed=3)
    x1, c1 = a[17]
    x2, c2 = b[17]
    assert torch.equal(x1, x2) and int(c1) == int(c2)
    assert a.captions[int(c1)] == a.item(17)[1]
    assert x1.shape == (3, 24, 24) and x1.min() >= 0 and x1.max() <= 1
    assert not torch.equal(S.ShapesDataset(100, seed=4)[17][0], x1)


def test_relation_renders_respect_the_relation():
    rng = random.Random(0)
    for _ in range(200):
        p = S.Prompt("relation", (("red", "circle"), ("blue", "square")), 2, rng.choice(["horizontal", "vertical"]))
        a, b = S.sample_scene(p, rng).objects
        along = (b.cx - a.cx) if p.axis == "horizontal" else (b.cy - a.cy)
        across = (b.cy - a.cy) if p.axis == "horizontal" else (b.cx - a.cx)
        assert along >= a.r + b.r + 3 and abs(across) < along
        for o in (a, b):
            assert o.r <= o.cx <= 24 - o.r and o.r <= o.cy <= 24 - o.r


def test_render_scene_follows_the_layout():
    """``render_scene(layout="slots")`` puts a single object's ink centroid at the image centre
    (12, 12) and a vertical relation's first object's in the upper half, whatever the seed."""
    p1 = S.Prompt("count", (("red", "circle"),), 1)
    pv = S.Prompt("relation", (("red", "circle"), ("blue", "square")), 2, "vertical")
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")

    def centroid(img, channel):
        w = (img[channel] > 0.5) & (img.sum(0) < 1.5)  # pure red (0) / blue (2) pixels
        return float((xs * w).sum() / w.sum()), float((ys * w).sum() / w.sum())

    off_centre = 0
    for seed in range(10):
        cx, cy = centroid(S.render_scene(p1, random.Random(seed), layout="slots"), 0)
        assert abs(cx - 11.5) < 1.0 and abs(cy - 11.5) < 1.0
        rx, ry = centroid(S.render_scene(p1, random.Random(seed)), 0)  # default: random placement
        off_centre += abs(rx - 11.5) + abs(ry - 11.5) > 2.0
        img = S.render_scene(pv, random.Random(seed), layout="slots")
        assert centroid(img, 0)[1] < 11.5 < centroid(img, 2)[1]
    assert off_centre >= 5
