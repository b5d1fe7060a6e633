"""Pre-LN Block and SD3-style JointBlock (djepa.core.blocks)."""

import math

import pytest
import torch

from djepa.core.blocks import Block, JointBlock
from djepa.core.rope import AxialRoPE


# ----------------------------------------------------------------------------- float64 reference
def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _rms(x, w, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rotate(x, cos, sin):
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2).contiguous())
    z = z * torch.complex(cos.double(), sin.double())
    return torch.view_as_real(z).reshape(x.shape)


def _mlp(x, p, pre):
    h = x @ p[pre + "fc1.weight"].T + p[pre + "fc1.bias"]
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return h @ p[pre + "fc2.weight"].T + p[pre + "fc2.bias"]


def reference_joint(module, streams, num_heads, pads=None, ropes=None):
    """Hand-written pre-LN (joint) transformer block in float64.

    streams: list of (x [B, L, D], prefix) where prefix names that stream's weights, e.g.
    ("x_", "c_") for JointBlock or ("",) for Block (attention submodule 'attn' / 'x_attn').
    All streams' q/k/v are concatenated along the sequence and go through ONE softmax.
    """
    p = {n: t.detach().double() for n, t in module.named_parameters()}
    qs, ks, vs, lens = [], [], [], []
    for i, (x, pre) in enumerate(streams):
        x = x.double()
        B, L, _ = x.shape
        h = _ln(x, p[pre + "norm1.weight"], p[pre + "norm1.bias"])
        qkv = h @ p[pre + "attn.qkv.weight"].T + p[pre + "attn.qkv.bias"]
        W = qkv.shape[-1] // 3
        d = W // num_heads
        q, k, v = (t.reshape(B, L, num_heads, d).transpose(1, 2) for t in qkv.split(W, dim=-1))
        if pre + "attn.q_norm.weight" in p:
            q = _rms(q, p[pre + "attn.q_norm.weight"])
            k = _rms(k, p[pre + "attn.k_norm.weight"])
        if ropes is not None and ropes[i] is not None:
            q, k = _rotate(q, *ropes[i]), _rotate(k, *ropes[i])
        qs.append(q), ks.append(k), vs.append(v), lens.append(L)
    q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if pads is not None:
        logits = logits.masked_fill(torch.cat(pads, 1)[:, None, None, :], float("-inf"))
    o = torch.softmax(logits, -1) @ v
    outs = []
    for (x, pre), oi in zip(streams, o.split(lens, dim=2)):
        B, H, L, d = oi.shape
        y = x.double() + oi.transpose(1, 2).reshape(B, L, H * d) @ p[pre + "attn.proj.weight"].T + p[pre + "attn.proj.bias"]
        y = y + _mlp(_ln(y, p[pre + "norm2.weight"], p[pre + "norm2.bias"]), p, pre + "mlp.")
        outs.append(y)
    return outs


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.2 + (1.0 if "norm" in name else 0.0))


# ----------------------------------------------------------------------------- Block
@pytest.mark.parametrize(
    "dim,heads,expected", [(768, 12, 7_088_000), (1024, 16, 12_596_352), (1280, 16, 19_677_600)]
)
def test_block_parameter_count(dim, heads, expected):
    with torch.device("meta"):
        block = Block(dim, heads, qk_norm=True)
    assert sum(p.numel() for p in block.parameters()) == expected
    # Without qk-norm: 2·head_dim fewer.
    with torch.device("meta"):
        plain = Block(dim, heads)
    assert sum(p.numel() for p in plain.parameters()) == expected - 2 * dim // heads


def test_block_matches_reference_with_rope_and_padding():
    torch.manual_seed(0)
    block = Block(32, 4, qk_norm=True).eval()
    _randomize(block, 1)
    assert block.norm1.eps == 1e-6 and block.mlp.fc1.out_features == 128
    x = torch.randn(2, 12, 32)
    pad = torch.zeros(2, 12, dtype=torch.bool)
    pad[1, 9:] = True
    rope = AxialRoPE(8, 2)(torch.randint(0, 6, (12, 2)))
    out = block(x, rope=rope, key_padding_mask=pad)
    (ref,) = reference_joint(block, [(x, "")], 4, pads=[pad], ropes=[rope])
    torch.testing.assert_close(out.double(), ref, atol=5e-5, rtol=1e-4)


def test_block_query_rows_equal_the_float64_reference_at_those_rows():
    # The query-rows path (Algorithm 1 needs the last predictor block only at the revealed
    # tokens) against the hand-written float64 block evaluated on all rows, then gathered.
    torch.manual_seed(0)
    block = Block(32, 4, qk_norm=True).eval()
    _randomize(block, 1)
    x = torch.randn(2, 12, 32)
    pad = torch.zeros(2, 12, dtype=torch.bool)
    pad[1, 9:] = True
    rope = AxialRoPE(8, 2)(torch.randint(0, 6, (12, 2)))
    rows = torch.tensor([[11, 0, 5], [3, 8, 2]])  # different rows per sample, unsorted
    out = block(x, rope=rope, key_padding_mask=pad, query_idx=rows)
    assert out.shape == (2, 3, 32)
    (ref,) = reference_joint(block, [(x, "")], 4, pads=[pad], ropes=[rope])
    ref_rows = torch.stack([ref[i, rows[i]] for i in range(2)])
    torch.testing.assert_close(out.double(), ref_rows, atol=5e-5, rtol=1e-4)
    # and, in float64, the very same numbers as the full block
    block64, x64 = block.double(), x.double()
    full = block64(x64, rope=rope, key_padding_mask=pad)
    part = block64(x64, rope=rope, key_padding_mask=pad, query_idx=rows)
    torch.testing.assert_close(part, torch.stack([full[i, rows[i]] for i in range(2)]), atol=1e-12, rtol=0)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_block_bf16_autocast_forward_backward_finite(qk_norm):
    torch.manual_seed(0)
    block = Block(32, 4, qk_norm=qk_norm, attn_drop=0.1, proj_drop=0.1).train()
    x = torch.randn(2, 16, 32, requires_grad=True)
    rope = AxialRoPE(8, 1)(torch.arange(16)[:, None])
    pad = torch.zeros(2, 16, dtype=torch.bool)
    pad[0, 12:] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x, rope=rope, key_padding_mask=pad)
        inner = block.attn(block.norm1(x), rope=rope, key_padding_mask=pad)
    assert inner.dtype == torch.bfloat16  # the matmuls really ran in bf16
    assert y.dtype == torch.float32  # the residual stream keeps the input dtype
    y.float().square().mean().backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- JointBlock
def _joint(dim=32, cdim=48, heads=4, seed=0, **kw):
    torch.manual_seed(seed)
    jb = JointBlock(dim, heads, context_dim=cdim, qk_norm=True, **kw).eval()
    _randomize(jb, seed + 10)
    return jb


def test_joint_block_matches_hand_written_joint_attention():
    jb = _joint()
    B, Lx, Lc = 2, 9, 5
    x, c = torch.randn(B, Lx, 32), torch.randn(B, Lc, 48)
    xpad = torch.zeros(B, Lx, dtype=torch.bool)
    xpad[0, 7:] = True
    cpad = torch.zeros(B, Lc, dtype=torch.bool)
    cpad[1, 3:] = True
    rope_x = AxialRoPE(8, 2)(torch.randint(0, 4, (Lx, 2)))
    rope_c = AxialRoPE(8, 1)(torch.arange(Lc)[:, None])
    yx, yc = jb(x, c, x_rope=rope_x, c_rope=rope_c, x_padding_mask=xpad, c_padding_mask=cpad)
    assert yx.shape == (B, Lx, 32) and yc.shape == (B, Lc, 48)
    rx, rc = reference_joint(jb, [(x, "x_"), (c, "c_")], 4, pads=[xpad, cpad], ropes=[rope_x, rope_c])
    torch.testing.assert_close(yx.double(), rx, atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(yc.double(), rc, atol=5e-5, rtol=1e-4)
    # Only one mask given: the other stream is unpadded.
    yx1, _ = jb(x, c, c_padding_mask=cpad)
    rx1, _ = reference_joint(jb, [(x, "x_"), (c, "c_")], 4, pads=[torch.zeros_like(xpad), cpad])
    torch.testing.assert_close(yx1.double(), rx1, atol=5e-5, rtol=1e-4)


def test_joint_block_cross_stream_attention():
    jb = _joint()
    x, c = torch.randn(2, 6, 32), torch.randn(2, 4, 48)
    yx, yc = jb(x, c)
    yx2, _ = jb(x, c + torch.randn_like(c))
    assert (yx2 - yx).abs().max() > 1e-2  # x attends to c
    _, yc2 = jb(x + torch.randn_like(x), c)
    assert (yc2 - yc).abs().max() > 1e-2  # c attends to x


def test_joint_block_with_all_context_padded_equals_single_stream_block():
    jb = _joint(cdim=32)  # same width so the x-weights load into a Block 1:1
    block = Block(32, 4, qk_norm=True).eval()
    state = {k[2:]: v for k, v in jb.state_dict().items() if k.startswith("x_")}
    block.load_state_dict(state)
    x, c = torch.randn(2, 7, 32), torch.randn(2, 3, 32)
    cpad = torch.ones(2, 3, dtype=torch.bool)
    yx, _ = jb(x, c, c_padding_mask=cpad)
    torch.testing.assert_close(yx, block(x), atol=1e-5, rtol=1e-5)
    # Not trivially true: without the c padding the two differ.
    assert (jb(x, c)[0] - block(x)).abs().max() > 1e-3


def test_joint_block_per_stream_parameters_are_distinct():
    jb = JointBlock(32, 4, qk_norm=True)  # same widths, still separate weights
    names = {n for n, _ in jb.named_parameters()}
    for part in ["norm1.weight", "attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight",
                 "attn.proj.weight", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight"]:
        assert "x_" + part in names and "c_" + part in names
    ptrs = [p.data_ptr() for p in jb.parameters()]
    assert len(ptrs) == len(set(ptrs))
    # Two full stream-sets of a Block's parameters.
    n_block = sum(p.numel() for p in Block(32, 4, qk_norm=True).parameters())
    assert sum(p.numel() for p in jb.parameters()) == 2 * n_block
    jb2 = JointBlock(32, 4, context_dim=48)
    assert jb2.c_attn.qkv.weight.shape == (96, 48) and jb2.c_attn.proj.weight.shape == (48, 32)
    assert jb2.c_mlp.fc1.weight.shape == (192, 48)


def test_joint_block_gradients_reach_both_streams():
    jb = _joint()
    x, c = torch.randn(2, 6, 32), torch.randn(2, 4, 48)
    yx, _ = jb(x, c)
    yx.square().mean().backward()  # loss on x only
    # c's keys/values feed x through the joint attention.
    assert jb.c_attn.qkv.weight.grad.abs().sum() > 0
    assert jb.c_norm1.weight.grad.abs().sum() > 0
    assert jb.x_mlp.fc1.weight.grad.abs().sum() > 0
    jb.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yx, yc = jb(x, c)
    (yx.float().square().mean() + yc.float().square().mean()).backward()
    for name, p in jb.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
