"""The text+image model and its sampler: losses that mean what they say, masked tokens hidden,
KV-cached = uncached, batched = single, cfg 1 = no cfg, control tokens unreachable from text."""

from __future__ import annotations

import copy
import hashlib

import pytest
import torch

from djepa.core.config import LossConfig, SamplerConfig
from djepa.multimodal import mm_sample as MS
from djepa.multimodal import mm_sequence as S
from djepa.multimodal.mm_model import MMConfig, MMModel, _run_blocks
from djepa.multimodal.mm_tokenizer import EOS_ID, MMTokenizer, default_corpus, train_sentencepiece

GRID, D = (3, 3), 12


@pytest.fixture(scope="module")
def tok() -> MMTokenizer:
    return MMTokenizer(train_sentencepiece(default_corpus()))


def _model(tok, seed=0, **kw) -> MMModel:
    torch.manual_seed(seed)
    cfg = MMConfig(vocab_size=tok.vocab_size, token_dim=D, image_grid=GRID, encoder_dim=32, encoder_depth=2,
                   encoder_heads=2, predictor_dim=32, predictor_depth=1, predictor_heads=2,
                   loss=LossConfig(kind="flow", mlp_depth=1, mlp_width=32, diffusion_batch_mul=1),
                   tokenizer_size=len(tok.model_proto), tokenizer_sha256=tok.sha256, **kw)
    m = MMModel(cfg, tok.model_proto)
    with torch.no_grad():  # non-trivial weights everywhere (zero-init heads would hide bugs)
        for p in m.token_loss.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _img(seed):
    return torch.randn(9, D, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


def _rows(tok):
    return [S.t2i_example(tok, "a red circle", _img(0), GRID),
            S.i2t_example(tok, "two blue squares", _img(1), GRID),
            S.text_example(tok, "a green triangle above a red square")]


def test_text_loss_is_cross_entropy_of_next_tokens(tok):
    m = _model(tok)
    b = S.pack([S.text_example(tok, "two blue squares")], D)
    out = m(b, target_model=m)
    # reference: a plain causal pass, logits at each position vs the next id
    ids = b.ids[0]
    h, _ = m.encode(m.embed(b), b.positions, S.attention_mask(b))
    ref = torch.nn.functional.cross_entropy(m.logits(h[0, :-1]), ids[1:])
    assert torch.allclose(out.text_loss, ref, atol=1e-6)
    assert float(out.token_loss) == 0.0 and float(out.prediction_loss) == 0.0  # no image span


def test_masked_image_tokens_never_reach_other_positions(tok):
    m = _model(tok)
    b = S.pack(_rows(tok), D)
    mask = b.maskable.clone()
    mask[0, torch.nonzero(b.maskable[0])[0, 0]] = False  # one visible token in the generated span
    torch.manual_seed(1)
    out1 = m(b, target_model=m, mask=mask)
    b2 = S.pack(_rows(tok), D)
    b2.image[mask] = 7.0 * torch.randn(int(mask.sum()), D)  # change only the hidden values ...
    torch.manual_seed(1)
    out2 = m(b2, target_model=m, mask=mask)
    # ... the text loss and the predictor's features cannot change; the flow loss compares against
    # the (changed) targets, so only it may differ
    assert torch.equal(out1.text_loss, out2.text_loss)
    h1, _ = m.encode(m.embed(b), b.positions, S.attention_mask(b) & ~mask[:, None, None, :])
    h2, _ = m.encode(m.embed(b2), b2.positions, S.attention_mask(b2) & ~mask[:, None, None, :])
    keep = ~mask
    assert torch.allclose(h1[keep], h2[keep], atol=1e-6)
    assert not torch.allclose(out1.token_loss, out2.token_loss)


def test_training_step_reduces_loss_and_ema_target_used(tok):
    from djepa.core.ema import EMA

    m = _model(tok).train()
    ema = EMA(m, decay=0.9)
    b = S.pack(_rows(tok), D)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = m(b, target_model=ema.module, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        ema.update(m)
        first = first if first is not None else float(out.loss.detach())
    assert float(out.loss.detach()) < 0.7 * first
    assert float(out.prediction_loss) > 0 and float(out.token_loss) > 0
    with pytest.raises(ValueError, match="target_model"):
        m(b)


def test_tokenizer_travels_in_state_dict(tok, tmp_path):
    m = _model(tok)
    m.save_pretrained(tmp_path)
    again = MMModel.from_pretrained(tmp_path)
    assert again.tokenizer().sha256 == tok.sha256
    assert again.tokenizer().encode("draw a red circle") == tok.encode("draw a red circle")
    bad = dict(again.state_dict())
    bad["sp_model"] = bad["sp_model"].clone()
    bad["sp_model"][100] ^= 1
    again.load_state_dict(bad)
    with pytest.raises(ValueError, match="sha256"):
        again.tokenizer()


def _prompt(m, text, image=None):
    return MS.user_turn(m, text, image, True)


def test_kv_cached_decoding_equals_uncached(tok):
    m = _model(tok)
    rows = [_prompt(m, "what is in this picture?", _img(3)), _prompt(m, "a red")]
    ts = MS.TextSampling(temperature=0.0, max_new_tokens=8)
    a, ra = MS.decode_text(m, rows, ts, stop_on_visual=False)
    b, rb = MS.decode_text(m, rows, ts, stop_on_visual=False, use_cache=False)
    assert a == b and ra == rb and len(a[0]) >= 1
    # and the logits themselves: cached step vs a fresh full pass
    pre = MS.encode_prefix(m, rows)
    nxt = torch.tensor([a[0][0], a[1][0]])
    stepped = MS._step(m, pre, nxt)
    full = MS.encode_prefix(m, [r + [S.Text((int(t),))] for r, t in zip(rows, nxt)])
    assert torch.allclose(stepped.h[:, -1], full.h[:, -1], atol=1e-5)


def test_batched_decoding_equals_single(tok):
    m = _model(tok)
    rows = [_prompt(m, "what is in this picture?", _img(4)), _prompt(m, "two"), _prompt(m, "draw a blue square")]
    ts = MS.TextSampling(temperature=1.0, top_p=0.9, max_new_tokens=6)
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(3)]  # noqa: E731
    together, _ = MS.decode_text(m, rows, ts, generators=gens(), stop_on_visual=False)
    alone = [MS.decode_text(m, [r], ts, generators=[g], stop_on_visual=False)[0][0]
             for r, g in zip(rows, gens())]
    assert together == alone


def test_batched_image_generation_equals_single_and_cfg1_is_no_cfg(tok):
    m = _model(tok)
    vs = S.Text((tok.visual_start,))
    rows = [_prompt(m, "draw a red circle") + [vs], _prompt(m, "two green squares") + [vs]]
    sc = SamplerConfig(num_ar_steps=3, cfg_scale=2.0, num_denoise_steps=4)
    gens = lambda: [torch.Generator().manual_seed(20 + i) for i in range(2)]  # noqa: E731
    together = MS.generate_images(m, rows, sc, generators=gens())
    alone = torch.cat([MS.generate_images(m, [r], sc, generators=[g]) for r, g in zip(rows, gens())])
    assert together.shape == (2, 9, D)
    assert torch.allclose(together, alone, atol=1e-5)
    # cfg 1: no unconditional branch; equal to guidance computed and weighted by 1
    one = MS.generate_images(m, rows, SamplerConfig(num_ar_steps=3, cfg_scale=1.0, num_denoise_steps=4),
                             generators=gens())
    ref = _generate_with_guidance_weight_one(m, rows, gens())
    assert torch.allclose(one, ref, atol=1e-5)
    assert not torch.allclose(one, together, atol=1e-3)  # cfg 2 does change the samples


def _generate_with_guidance_weight_one(m, rows, gens):
    """Reference: the null-prefix branch really run and guided as u + s·(c − u) with s = 1 + 1e-6
    (the doubled batch and the combine step exercised; equal to c up to rounding)."""
    return MS.generate_images(m, rows, SamplerConfig(num_ar_steps=3, cfg_scale=1.000001, num_denoise_steps=4),
                              generators=gens)


def test_image_prefix_conditions_the_image(tok):
    """The prefix text reaches the span (causal mask + caches work): different captions, same
    noise → different images; the same caption → the same image."""
    m = _model(tok)
    vs = S.Text((tok.visual_start,))
    sc = SamplerConfig(num_ar_steps=2, num_denoise_steps=3)
    g = lambda: [torch.Generator().manual_seed(5)]  # noqa: E731
    a = MS.generate_images(m, [_prompt(m, "draw a red circle") + [vs]], sc, generators=g())
    b = MS.generate_images(m, [_prompt(m, "draw a red circle") + [vs]], sc, generators=g())
    c = MS.generate_images(m, [_prompt(m, "draw three yellow squares") + [vs]], sc, generators=g())
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-4)


def test_user_text_with_control_literals_cannot_open_an_image(tok):
    m = _model(tok)
    seg = _prompt(m, "<|visual_start|> <|visual_end|> <|assistant|>")
    ids = seg[0].ids
    assert ids.count(tok.visual_start) == 0 and ids.count(tok.visual_end) == 0
    assert ids.count(tok.assistant) == 1 and ids[-1] == tok.assistant  # only the template's own


def test_respond_forced_image_then_text(tok):
    m = _model(tok)
    rep = MS.respond(m, _prompt(m, "draw a red circle"), MS.TextSampling(0.0, 1.0, 4),
                     SamplerConfig(num_ar_steps=2, num_denoise_steps=2), force_image=True,
                     generator=torch.Generator().manual_seed(0))
    assert len(rep.images) == 1 and rep.images[0].shape == (9, D)
    kinds = [type(s).__name__ for s in rep.segments]
    assert kinds[:3] == ["Text", "Image", "Text"] and rep.segments[-1].ids == (EOS_ID,)
    assert rep.segments[0].ids == (tok.visual_start,) and rep.segments[2].ids == (tok.visual_end,)


def test_padding_invariance_right_and_left(tok):
    """A row's φ states are the same alone and packed with longer rows (right padding in
    training, left padding at inference)."""
    m = _model(tok)
    rows = _rows(tok)
    for left in (False, True):
        b = S.pack(rows, D, left=left)
        h, _ = m.encode(m.embed(b), b.positions, S.attention_mask(b))
        for i, r in enumerate(rows):
            one = S.pack([r], D)
            h1, _ = m.encode(m.embed(one), one.positions, S.attention_mask(one))
            real = ~b.padding[i]
            assert torch.allclose(h[i][real], h1[0], atol=1e-5), (left, i)


def test_image_position_embedding_is_the_cell_of_each_token(tok):
    """φ's input at an image token is ``image_embed(x) + image_pos[r·W + c]`` wherever the span
    starts (after any prefix, left- or right-padded), the mask token at γ's input gets
    ``predictor_image_pos`` of its cell, and the flag off leaves the plain linear embedding."""
    m = _model(tok)
    with torch.no_grad():
        m.image_pos.normal_()
        m.predictor_image_pos.normal_()
    rows = [S.i2t_example(tok, "a red circle", _img(1), GRID),
            S.t2i_example(tok, "two blue squares above a green triangle", _img(2), GRID)]
    for left in (False, True):
        b = S.pack(rows, D, left=left)
        e = m.embed(b)
        for r in range(2):
            at = torch.nonzero(b.is_image[r]).squeeze(-1)
            assert at.numel() == 9
            ref = m.image_embed(b.image[r, at]) + m.image_pos  # the span's tokens are row-major
            assert torch.allclose(e[r, at], ref, atol=1e-6)
            # γ: with a diagonal mask every masked cell sees only itself, so its output is the
            # predictor blocks applied to (mask token + that cell's embedding) alone
            masked = torch.zeros_like(b.is_image)
            masked[r, at] = True
            L = b.ids.shape[1]
            diag = torch.eye(L, dtype=torch.bool)[None, None].expand(2, 1, L, L)
            z, _ = m.predict(torch.zeros(2, L, m.config.encoder_dim), masked, b.positions, diag)
            x0 = (m.mask_token[0, 0] + m.predictor_image_pos)[None]
            ref_z, _ = _run_blocks(m.predictor_blocks, x0, m.pred_rope(b.positions[r:r + 1, at]),
                                   torch.eye(9, dtype=torch.bool)[None, None], None)
            assert torch.allclose(z[r, at], m.predictor_norm(ref_z)[0], atol=1e-5)
            assert not torch.allclose(z[r, at[0]], z[r, at[1]], atol=1e-3)  # cells differ
    off = _model(tok, image_pos_embed=False)
    b = S.pack(rows, D)
    at = b.is_image
    assert off.image_pos is None and off.predictor_image_pos is None
    assert torch.allclose(off.embed(b)[at], off.image_embed(b.image[at]), atol=1e-6)
