"""The D-JEPA network: official parameter counts, masking semantics, losses, serialisation."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from djepa.core.config import DJEPAConfig, preset
from djepa.core.masking import mask_from_orders, num_masked_tokens, random_orders, sample_mask_ratio
from djepa.core.model import DJEPA
from djepa.core.pretrained import CheckpointMismatchError


@pytest.mark.parametrize("name,expected", [
    ("B", 212_017_440), ("L", 687_421_984), ("H", 1_426_730_784)])
def test_official_parameter_counts(name, expected):
    """ImageNet-256, KL-16 latents (256 tokens × 16 ch, patch 1), 1000 classes, 64 buffer tokens,
    qk-norm, RoPE (no position tables), diffusion loss with learned variance, projector."""
    cfg = preset(name, token_dim=16, grid=(16, 16), num_classes=1000, buffer_size=64,
                 pos_embed="rope", qk_norm=True, loss=dict(kind="diffusion", learn_sigma=True))
    with torch.device("meta"):
        model = DJEPA(cfg)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"D-JEPA-{name}: {count:,} trainable parameters (official {expected:,})")
    assert count == expected


def tiny(**kw) -> DJEPA:
    torch.manual_seed(0)
    return DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10, **kw))


def test_mask_ratio_is_the_truncated_normal():
    g = torch.Generator().manual_seed(0)
    r = torch.tensor([sample_mask_ratio(g) for _ in range(20000)], dtype=torch.float64)
    assert r.min() >= 0.7 and r.max() <= 1.0
    # closed-form mean of N(1, 0.25²) truncated to [0.7, 1.0]
    a, b = (0.7 - 1) / 0.25, 0.0
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
    mean = 1 + 0.25 * (pdf(a) - pdf(b)) / (cdf(b) - cdf(a))
    assert float(r.mean()) == pytest.approx(mean, abs=3e-3)
    assert num_masked_tokens(256, 0.7) == math.ceil(256 * 0.7)
    assert num_masked_tokens(16, 0.0) == 1 and num_masked_tokens(16, 1.0) == 16


def test_orders_are_permutations_and_mask_polarity():
    orders = random_orders(3, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(orders.sort(1).values, torch.arange(10).expand(3, 10))
    mask = mask_from_orders(orders, 4)
    assert mask.sum(1).tolist() == [4, 4, 4]
    for b in range(3):
        assert mask[b, orders[b, :4]].all() and not mask[b, orders[b, 4:]].any()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_encoder_sees_only_visible_tokens(pos):
    model = tiny(pos_embed=pos).eval()
    tokens = torch.randn(2, 16, 4)
    cond = model.condition(torch.tensor([1, 2]))
    visible = torch.tensor([[0, 3, 5, 9], [1, 2, 8, 15]])
    z = model.features(tokens, cond, visible)
    hidden = torch.ones(2, 16, dtype=torch.bool)
    hidden.scatter_(1, visible, False)
    changed = tokens.clone()
    changed[hidden] += 5.0  # masked tokens must not matter
    assert torch.allclose(model.features(changed, cond, visible), z, atol=1e-6)
    changed = tokens.clone()
    changed[0, 3] += 1.0  # a visible one must
    assert not torch.allclose(model.features(changed, cond, visible)[0], z[0], atol=1e-4)


@pytest.mark.parametrize("embed_norm", [True, False])
def test_embed_norm_and_the_token_scale(embed_norm):
    """MAR's LayerNorm after the linear token embedding (``embed_norm=True``, no bias, nothing
    added before it as with RoPE) cannot tell a token ``x`` from ``3x`` — a uniform background
    patch from a uniform ink patch of pixel video; ``embed_norm=False`` keeps the scale."""
    model = tiny(pos_embed="rope", embed_norm=embed_norm).eval()
    assert isinstance(model.encoder.embed_norm, torch.nn.Identity) != embed_norm
    with torch.no_grad():
        model.encoder.token_embed.bias.zero_()
    tokens = torch.rand(2, 16, 4) + 0.1
    cond = model.condition(torch.tensor([1, 2]))
    a, b = model.features(tokens, cond, None), model.features(3.0 * tokens, cond, None)
    assert torch.allclose(a, b, atol=1e-4) == embed_norm


def test_forward_loss_breakdown_and_weights():
    model = tiny()
    ema = copy.deepcopy(model).eval()
    tokens, labels = torch.randn(4, 16, 4), torch.randint(0, 10, (4,))
    out = model(tokens, labels, target_model=ema, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.prediction_loss > 0 and out.token_loss > 0
    assert out.loss.item() == pytest.approx(out.token_loss.item() + out.prediction_loss.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in ema.parameters())  # stop-gradient on the target encoder
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.prediction_loss.projector[0].weight.grad.abs().sum() > 0

    mar = tiny(loss=dict(prediction_weight=0.0))
    assert mar.prediction_loss is None
    out = mar(tokens, labels)  # no target model needed for the MAR baseline
    assert out.prediction_loss.item() == 0.0 and out.loss.item() == pytest.approx(out.token_loss.item())
    with pytest.raises(ValueError, match="target_model"):
        model(tokens, labels)


def test_target_is_the_ema_encoder_on_all_tokens_without_dropout_or_label_drop():
    model = tiny(attn_dropout=0.3, proj_dropout=0.3, label_drop_prob=1.0)
    model.train()  # a target model left in train mode must still be deterministic
    tokens, labels = torch.randn(2, 16, 4), torch.tensor([3, 4])
    g = model.encode_target(tokens, labels)
    assert model.training  # mode restored
    assert torch.equal(g, model.encode_target(tokens, labels))
    model.eval()
    full = model.encoder(tokens, model.condition.class_embed(labels), None)[:, model.config.buffer_size:]
    assert torch.equal(g, full) and g.shape == (2, 16, 64) and not g.requires_grad


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_features_match_the_official_data_flow(pos):
    """Reference written the way the official code does it: position table on all tokens,
    buffer (+ condition) prepended, masked rows dropped with a boolean mask, predictor input
    padded with mask tokens through nonzero(), positions on the non-buffer slots, buffer dropped."""
    model = tiny(pos_embed=pos).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # make every parameter matter
    b, n, nb = 2, 16, model.config.buffer_size
    x, y = torch.randn(b, n, 4), torch.tensor([3, 7])
    mask = torch.zeros(b, n)
    for i in range(b):
        mask[i, torch.randperm(n)[:11]] = 1
    e, p = model.encoder, model.predictor
    cond = model.condition(y)
    keep = (1 - torch.cat([torch.zeros(b, nb), mask], 1)).nonzero(as_tuple=True)
    h = e.token_embed(x) + (e.pos_embed if pos == "learned" else 0)
    h = torch.cat([e.buffer + cond[:, None], h], 1)[keep].reshape(b, -1, 64)
    vis = (mask == 0).nonzero()[:, 1].reshape(b, -1)
    enc_rope = None if pos == "learned" else e.rope.with_buffer(nb, vis, x.device)
    h = e.embed_norm(h)
    for blk in e.blocks:
        h = blk(h, rope=enc_rope)
    h = e.norm(h)
    d = p.embed(h)
    pad = p.mask_token.repeat(b, nb + n, 1).clone()
    pad[keep] = d.reshape(-1, d.shape[-1])
    if pos == "learned":
        pad[:, nb:] += p.pos_embed
    dec_rope = None if pos == "learned" else p.rope.with_buffer(nb, None, x.device)
    for blk in p.blocks:
        pad = blk(pad, rope=dec_rope)
    ref = p.norm(pad)[:, nb:]
    assert torch.allclose(model.features(x, cond, vis), ref, atol=1e-5)


@pytest.mark.parametrize("pos,predictor_depth", [("learned", None), ("rope", None), ("learned", 0)])
def test_features_at_query_rows_equal_all_features_gathered(pos, predictor_depth):
    kw = {} if predictor_depth is None else dict(predictor_depth=predictor_depth)
    model = tiny(pos_embed=pos, **kw).double().eval()
    b, n = 3, model.num_tokens
    x = torch.randn(b, n, 4, dtype=torch.float64)
    cond = model.condition(torch.tensor([1, 4, 9]))
    orders = torch.stack([torch.randperm(n) for _ in range(b)])
    vis = orders[:, :5].sort(1).values
    query = orders[:, 5:9]  # masked positions, a different set per sample
    full = model.features(x, cond, vis)
    part = model.features(x, cond, vis, query)
    assert part.shape == (b, 4, full.shape[-1])
    torch.testing.assert_close(part, torch.stack([full[i, query[i]] for i in range(b)]), atol=1e-12, rtol=0)


def test_token_loss_sees_exactly_the_masked_rows_repeated():
    model = tiny()
    seen = {}
    orig = model.token_loss.forward
    model.token_loss.forward = lambda target, z, mask, generator=None: seen.update(t=target) or orig(target, z, mask)
    tokens = torch.randn(3, 16, 4)
    g = torch.Generator().manual_seed(11)
    model(tokens, torch.tensor([0, 1, 2]), target_model=model, generator=g)
    g = torch.Generator().manual_seed(11)  # replay the same draws
    r = sample_mask_ratio(g)
    orders = random_orders(3, 16, generator=g)
    mask = mask_from_orders(orders, math.ceil(16 * r))
    assert torch.equal(seen["t"], tokens[mask].repeat(4, 1))


def test_backbone_init_follows_the_official_code():
    model = DJEPA(preset("tiny", token_dim=4, grid=(8, 8), num_classes=100, encoder_dim=256, encoder_heads=4))
    w = model.encoder.blocks[0].attn.qkv.weight  # xavier-uniform bound sqrt(6/(fan_in+fan_out))
    assert w.abs().max() <= math.sqrt(6 / (256 + 768)) + 1e-6 and w.std() > 0.5 * math.sqrt(2 / (256 + 768))
    assert model.encoder.blocks[0].attn.qkv.bias.abs().max() == 0
    for p in (model.condition.class_embed.weight, model.encoder.pos_embed, model.predictor.mask_token):
        assert abs(p.std().item() - 0.02) < 0.006


def test_bad_inputs_are_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, 16, 4\]"):
        model(torch.randn(2, 15, 4), torch.tensor([0, 1]), target_model=model)
    with pytest.raises(ValueError, match="class id 10 is out of range"):
        model(torch.randn(2, 16, 4), torch.tensor([0, 10]), target_model=model)
    with pytest.raises(ValueError, match="class id -1"):
        model.condition(torch.tensor([-1]))


def test_label_dropout_uses_null_class():
    model = tiny(label_drop_prob=1.0)
    emb = model.condition(torch.tensor([1, 2, 3]), drop_labels=True)
    assert torch.equal(emb, model.condition.null_embed.expand(3, -1))
    assert not torch.equal(model.condition(torch.tensor([1])), model.condition.null(1))


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_bf16_autocast_forward_backward_finite(kind):
    model = tiny(loss=dict(kind=kind))
    ema = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(4, 16, 4), torch.randint(0, 10, (4,)), target_model=ema)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_reduces_loss_on_fixed_batch():
    model = tiny(loss=dict(kind="flow"))
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(8, 16, 4, generator=g).sign() * 0.5
    labels = torch.arange(8) % 10
    losses = []
    for _ in range(25):
        out = model(tokens, labels, target_model=ema)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.token_loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = tiny(pos_embed="rope")
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["model_type"] == "djepa" and meta["config"]["grid"] == [4, 4]
    loaded = DJEPA.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


@pytest.mark.parametrize("edit,field", [
    (("qk_norm", "no"), "qk_norm"),                       # a string is not a bool
    (("encoder_depth", "2"), "encoder_depth"),
    (("encoder_depth", 2.5), "encoder_depth"),
    (("encoder_depth", True), "encoder_depth"),           # a bool is not an int
    (("grid", [4, "4"]), "grid[1]"),
    (("grid", 4), "grid"),
    (("pos_embed", "sinusoidal"), "pos_embed"),
    (("loss", {"kind": "flow", "prediction_beta": "2"}), "loss.prediction_beta"),
    (("loss", [1]), "loss"),
])
def test_hand_edited_config_with_wrong_types_names_the_file_and_field(tmp_path, edit, field):
    tiny().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    meta = json.loads(path.read_text())
    key, value = edit
    meta["config"][key] = value
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError) as e:
        DJEPA.from_pretrained(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and f"field '{field}'" in msg



def test_hand_edited_config_with_right_types_loads(tmp_path):
    tiny().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["qk_norm"] = False
    meta["config"]["loss"]["prediction_beta"] = 2            # an int for a float is fine
    path.write_text(json.dumps(meta))
    cfg = DJEPA.load_config(tmp_path)
    assert cfg.qk_norm is False and cfg.loss.prediction_beta == 2.0
    assert isinstance(cfg.loss.prediction_beta, float) and isinstance(cfg.grid, tuple)


def test_from_pretrained_rejects_mismatches(tmp_path):
    tiny().save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="config mismatch"):
        DJEPA.from_pretrained(tmp_path, config=preset("tiny", token_dim=4, grid=(4, 4), num_classes=11))
    # weights from another config: every problem is named
    other = DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=12))
    other.save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tmp_path / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError, match="condition.class_embed.weight: file \\(12, 64\\)"):
        DJEPA.from_pretrained(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="config.json"):
        DJEPA.from_pretrained(tmp_path / "nothing")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointMismatchError, match="cannot read"):
        DJEPA.from_pretrained(tmp_path)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        DJEPAConfig(encoder_dim=30, encoder_heads=4)
    with pytest.raises(ValueError, match="pos_embed"):
        DJEPAConfig(pos_embed="sincos")
    with pytest.raises(ValueError, match="diffusion_batch_mul"):
        preset("tiny", loss=dict(diffusion_batch_mul=0))
    with pytest.raises(KeyError, match="unknown preset"):
        preset("XL")


def test_from_pretrained_inside_a_meta_device_block_loads_the_weights(tmp_path, recwarn):
    model = tiny()
    model.save_pretrained(tmp_path)
    with torch.device("meta"):
        loaded = DJEPA.from_pretrained(tmp_path)
    assert not recwarn.list
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and b.device.type == "cpu" and torch.equal(a, b)
