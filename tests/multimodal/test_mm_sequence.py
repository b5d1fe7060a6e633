"""Sequence packing and the one attention mask, checked against a mask built by hand."""

from __future__ import annotations

import pytest
import torch

from djepa.multimodal import mm_sequence as S
from djepa.multimodal.mm_tokenizer import MMTokenizer, default_corpus, train_sentencepiece


@pytest.fixture(scope="module")
def tok() -> MMTokenizer:
    return MMTokenizer(train_sentencepiece(default_corpus()))


def _hand_mask(kinds: list[str], span: list[int], n_real: int, L: int) -> torch.Tensor:
    """kinds[i] in {'t', 'i'}; span[i] = image span id (or -1); real tokens first, then padding."""
    m = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(n_real):  # padding is never a key
            if k <= q:
                m[q, k] = True
            elif kinds[q] == "i" and span[q] == span[k] and span[q] >= 0:
                m[q, k] = True  # bidirectional inside an image span
    return m


def test_mask_matches_hand_built_two_images_and_padding():
    D, grid = 3, (2, 2)
    img = torch.arange(4 * D, dtype=torch.float32).reshape(4, D)
    rows = [[S.Text((2, 6, 9, 10)), S.Image(img, grid, generate=True), S.Text((5, 11)),
             S.Image(img + 1, grid), S.Text((5, 3))],
            [S.Text((2, 9, 3))]]
    b = S.pack(rows, D)
    L = b.ids.shape[1]
    assert L == 4 + 4 + 2 + 4 + 2
    kinds = list("tttt" + "iiii" + "tt" + "iiii" + "tt")
    span = [-1] * 4 + [0] * 4 + [-1] * 2 + [1] * 4 + [-1] * 2
    got = S.attention_mask(b)
    assert got.shape == (2, 1, L, L)
    assert torch.equal(got[0, 0], _hand_mask(kinds, span, L, L))
    assert torch.equal(got[1, 0], _hand_mask(["t"] * L, [-1] * L, 3, L))
    # an image token sees a later token of its own span, never the text after it
    assert bool(got[0, 0, 4, 7]) and not bool(got[0, 0, 4, 8]) and not bool(got[0, 0, 7, 10])
    # maskable only on the generated span; image values land in place
    assert b.maskable[0].nonzero().squeeze(-1).tolist() == [4, 5, 6, 7]
    assert torch.equal(b.image[0, 10:14], img + 1) and b.is_image[0].sum() == 8
    assert b.padding[1].tolist() == [False] * 3 + [True] * (L - 3)


def test_positions_1d_text_2d_span_and_targets():
    D, grid = 2, (2, 3)
    rows = [[S.Text((2, 4)), S.Image(torch.zeros(6, D), grid, generate=True), S.Text((5, 3))]]
    b = S.pack(rows, D)
    assert b.positions[0].tolist() == [[0, 0, 0], [1, 1, 1],
                                       [2, 2, 2], [2, 2, 3], [2, 2, 4], [2, 3, 2], [2, 3, 3], [2, 3, 4],
                                       [5, 5, 5], [6, 6, 6]]  # after the span: 2 + max(H, W) = 5
    # <bos> predicts <|visual_start|>; nothing predicted from <|visual_start|> or image tokens;
    # <|visual_end|> predicts <eos>; the last token nothing
    assert b.targets[0].tolist() == [4] + [S.IGNORE] * 7 + [3, S.IGNORE]


def test_wrong_image_shape_raises():
    with pytest.raises(ValueError, match="image span must be"):
        S.pack([[S.Text((2,)), S.Image(torch.zeros(5, 2), (2, 3))]], 2)


def test_training_examples_layout(tok):
    img = torch.zeros(36, 48)
    t2i = S.pack([S.t2i_example(tok, "a red circle", img, (6, 6))], 48)
    ids = t2i.ids[0].tolist()
    assert ids[:2] == [2, tok.user] and ids[ids.index(tok.assistant) + 1] == tok.visual_start
    assert ids[-2:] == [tok.visual_end, 3] and int(t2i.maskable.sum()) == 36
    null = S.pack([S.t2i_example(tok, "a red circle", img, (6, 6), drop_text=True)], 48)
    assert null.ids[0, :2].tolist() == [2, tok.visual_start] and null.ids.shape[1] == 2 + 36 + 2
    i2t = S.pack([S.i2t_example(tok, "a red circle", img, (6, 6))], 48)
    assert int(i2t.maskable.sum()) == 0 and int(i2t.is_image.sum()) == 36
    answer = tok.encode("a red circle") + [3]
    tgt = i2t.targets[0][i2t.targets[0] != S.IGNORE].tolist()
    assert tgt[-len(answer):] == answer
    txt = S.pack([S.text_example(tok, "two blue squares")], 48)
    assert txt.targets[0, :-1].tolist() == txt.ids[0, 1:].tolist()


def test_training_set_kinds_and_image_to_text_phrasing():
    """``MMTrainSet``: the example kinds follow the mix; an image → caption answer is the
    prompt's reading-order caption with ``i2t_phrasing="canonical"`` (and parses back to the
    pictured prompt), a random phrasing with ``"any"``; items are a function of (seed, index)."""
    from djepa.multimodal import shapes
    from djepa.multimodal.mm_sequence import ExampleMix
    from djepa.multimodal.mm_train import MMTrainSet

    mix = ExampleMix(0.45, 0.4, 0.15, 0.1)
    canon = MMTrainSet(400, 3, mix, "slots", "canonical")
    anyp = MMTrainSet(400, 3, mix, "slots", "any")
    kinds, differ = [], 0
    for i in range(400):
        img, cap, kind, drop, _ = canon[i]
        img2, cap2, kind2, _, _ = anyp[i]
        assert kind == kind2 and torch.equal(img, img2)  # same scene and kind, only the answer differs
        scene, _ = canon.shapes.item(i)
        kinds.append(kind)
        if kind == "i2t":
            assert cap == scene.prompt.canonical and shapes.parse_caption(cap) == scene.prompt
            assert shapes.parse_caption(cap2) == scene.prompt
            differ += cap2 != cap
        else:
            assert cap == cap2
        assert not drop or kind == "t2i"
    n_i2t = kinds.count("i2t")
    assert 120 <= n_i2t <= 200 and 130 <= kinds.count("t2i") <= 230  # 0.4 / 0.45 of 400
    assert differ >= n_i2t // 3  # "any": most captions have several phrasings
    assert canon[7][1] == MMTrainSet(400, 3, mix, "slots", "canonical")[7][1]
    with pytest.raises(ValueError, match="i2t_phrasing"):
        MMTrainSet(4, 0, mix, "slots", "sometimes")
