"""Attention kernels, qk-norm, RoPE inside attention, padding, MLP (djepa.core.attention)."""

import math

import pytest
import torch
import torch.nn.functional as F

from djepa.core.attention import MLP, Attention, attention_kernel
from djepa.core.rope import AxialRoPE


def _rms(x, w, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rotate(x, cos, sin):
    """float64 interleaved-pair rotation written independently of djepa (complex product)."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2).contiguous())
    z = z * torch.complex(cos, sin)
    return torch.view_as_real(z).reshape(x.shape)


def reference_attention(attn: Attention, x, rope=None, key_padding_mask=None):
    """softmax(QKᵀ/√d)V in float64 from the module's weights; padded keys get -inf logits."""
    p = {n: t.detach().double() for n, t in attn.named_parameters()}
    x = x.double()
    B, L, _ = x.shape
    H, d = attn.num_heads, attn.head_dim
    qkv = x @ p["qkv.weight"].T + (p["qkv.bias"] if "qkv.bias" in p else 0.0)
    q, k, v = (t.reshape(B, L, H, d).transpose(1, 2) for t in qkv.split(H * d, dim=-1))
    if "q_norm.weight" in p:
        q, k = _rms(q, p["q_norm.weight"]), _rms(k, p["k_norm.weight"])
    if rope is not None:
        cos, sin = (t.double() for t in rope)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    o = torch.softmax(logits, dim=-1) @ v
    o = o.transpose(1, 2).reshape(B, L, H * d)
    return o @ p["proj.weight"].T + p["proj.bias"]


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.3 + (1.0 if "norm" in name else 0.0))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_sdpa_matches_reference(qk_norm, qkv_bias):
    torch.manual_seed(0)
    attn = Attention(32, 4, qkv_bias=qkv_bias, qk_norm=qk_norm).eval()
    _randomize(attn, 1)
    x = torch.randn(2, 10, 32)
    out = attn(x)
    torch.testing.assert_close(out.double(), reference_attention(attn, x), atol=2e-5, rtol=1e-4)
    if qk_norm:
        # qk-norm weights matter (i.e. they are really used).
        with torch.no_grad():
            attn.q_norm.weight.mul_(3.0)
        assert (attn(x) - out).abs().max() > 1e-3


def test_sdpa_with_rope_matches_reference():
    torch.manual_seed(0)
    attn = Attention(32, 2, qk_norm=True).eval()
    _randomize(attn, 2)
    x = torch.randn(2, 12, 32)
    rope = AxialRoPE(16, 2)(torch.randint(0, 8, (12, 2)))
    out = attn(x, rope=rope)
    torch.testing.assert_close(out.double(), reference_attention(attn, x, rope), atol=2e-5, rtol=1e-4)
    assert (out - attn(x)).abs().max() > 1e-3  # RoPE changes the result


def test_key_padding_mask():
    torch.manual_seed(0)
    attn = Attention(32, 4, qk_norm=True).eval()
    _randomize(attn, 3)
    B, L = 3, 9
    x = torch.randn(B, L, 32)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, 6:] = True
    pad[1, :2] = True
    pad[1, 5] = True  # sample 2: no padding
    out = attn(x, key_padding_mask=pad)
    torch.testing.assert_close(
        out.double(), reference_attention(attn, x, key_padding_mask=pad), atol=2e-5, rtol=1e-4
    )
    # Padded keys have zero weight: changing the inputs at padded positions changes nothing at
    # non-padded query positions.
    x2 = x.clone()
    x2[pad] = torch.randn(int(pad.sum()), 32) * 100.0
    out2 = attn(x2, key_padding_mask=pad)
    torch.testing.assert_close(out2[~pad], out[~pad], atol=1e-6, rtol=0.0)
    # ...whereas without the mask they do matter (so the check above can fail).
    assert (attn(x2)[~pad] - attn(x)[~pad]).abs().max() > 1e-2


def test_all_padding_sample_is_finite_zero_attention():
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    _randomize(attn, 4)
    x = torch.randn(2, 5, 16)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0] = True  # every key of sample 0 is padding
    out = attn(x, key_padding_mask=pad)
    assert torch.isfinite(out).all()
    # Documented: the kernel output is zero there, so the module output is proj.bias.
    torch.testing.assert_close(out[0], attn.proj.bias.detach().expand(5, 16))
    # The other sample is unaffected.
    torch.testing.assert_close(out[1], attn(x[1:])[0], atol=1e-6, rtol=1e-5)
    # Gradients stay finite too.
    x.requires_grad_(True)
    attn(x, key_padding_mask=pad).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_attention_kernel_function_reference():
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g) for _ in range(3))
    pad = torch.tensor([[False] * 5 + [True] * 2, [True] + [False] * 6])
    out = attention_kernel(q, k, v, pad, 0.0, "sdpa")
    logits = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8)
    logits = logits.masked_fill(pad[:, None, None, :], float("-inf"))
    ref = torch.softmax(logits, -1) @ v.double()
    torch.testing.assert_close(out.double(), ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError):
        attention_kernel(q, k, v, pad[:, :5], 0.0, "sdpa")


def test_xformers_on_cpu_raises_clear_error():
    attn = Attention(16, 2, kernel="xformers")
    with pytest.raises(RuntimeError, match="needs a CUDA device and the xformers package; use kernel='sdpa'"):
        attn(torch.randn(1, 4, 16))
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="kernel='sdpa'"):
        attention_kernel(q, q, q, None, 0.0, "xformers")


def test_unknown_kernel_raises_at_construction():
    with pytest.raises(ValueError, match="flash"):
        Attention(16, 2, kernel="flash")
    with pytest.raises(ValueError):
        Attention(18, 4)  # not divisible by heads


def test_submodule_names_and_shapes():
    attn = Attention(24, 3, qk_norm=True)
    names = dict(attn.named_parameters())
    assert set(names) == {"qkv.weight", "qkv.bias", "q_norm.weight", "k_norm.weight", "proj.weight", "proj.bias"}
    assert names["qkv.weight"].shape == (72, 24) and names["q_norm.weight"].shape == (8,)
    plain = Attention(24, 3, qkv_bias=False)
    assert isinstance(plain.q_norm, torch.nn.Identity) and plain.qkv.bias is None


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    attn = Attention(16, 2, attn_drop=0.5, proj_drop=0.0)
    x = torch.randn(2, 6, 16)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x), atol=0, rtol=0)
    attn.train()
    torch.manual_seed(1)
    a = attn(x)
    torch.manual_seed(2)
    b = attn(x)
    assert (a - b).abs().max() > 1e-3


def test_mlp_is_exact_gelu():
    torch.manual_seed(0)
    mlp = MLP(8, 32, drop=0.0)
    _randomize(mlp, 6)
    x = torch.randn(4, 8) * 3
    p = {n: t.detach().double() for n, t in mlp.named_parameters()}
    h = x.double() @ p["fc1.weight"].T + p["fc1.bias"]
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))  # exact GELU
    ref = h @ p["fc2.weight"].T + p["fc2.bias"]
    torch.testing.assert_close(mlp(x).double(), ref, atol=1e-5, rtol=1e-5)
    # Tanh-approximate GELU would be measurably different here.
    h_tanh = F.gelu(x.double() @ p["fc1.weight"].T + p["fc1.bias"], approximate="tanh")
    assert ((h_tanh @ p["fc2.weight"].T + p["fc2.bias"]) - ref).abs().max() > 1e-4


# ----------------------------------------------------------------------------- general masks
def _loop_reference(q, k, v, kpm=None, allowed=None):
    """Plain float64 loop: for each (b, h, i) softmax over the keys allowed by both masks;
    a row with no allowed key gives zeros."""
    B, H, Lq, d = q.shape
    Lk = k.shape[2]
    out = torch.zeros(B, H, Lq, d, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                keys = [j for j in range(Lk)
                        if (kpm is None or not bool(kpm[b, j]))
                        and (allowed is None or bool(allowed[b, h, i, j]))]
                if not keys:
                    continue
                s = torch.stack([q[b, h, i].double() @ k[b, h, j].double() for j in keys]) / math.sqrt(d)
                w = torch.softmax(s, 0)
                out[b, h, i] = sum(w[n] * v[b, h, j].double() for n, j in enumerate(keys))
    return out


def _mask_cases(B, H, Lq, Lk, g):
    from djepa.core.attention import block_causal_mask

    full = lambda *shape: torch.rand(*shape, generator=g) > 0.4  # noqa: E731
    am2 = full(Lq, Lk)
    am2[1] = False  # a row with no allowed key
    am3 = full(B, Lq, Lk)
    am4h = full(B, H, Lq, Lk)
    am4h[0, 1, 2] = False
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 2], [0, 0, 1, 1, 1, 1, 1]])[:, :Lk]
    causal = torch.tensor([[True, True, True, False, False, False, True],
                           [False, False, True, True, True, True, True]])[:, :Lk]
    kpm = torch.zeros(B, Lk, dtype=torch.bool)
    kpm[0, -2:] = True
    kpm_all = kpm.clone()
    kpm_all[1] = True  # every key of sample 1 is padding
    return {
        "kpm": (kpm, None),
        "kpm_all_padding": (kpm_all, None),
        "2d": (None, am2),
        "3d": (None, am3),
        "4d_1head": (None, am3[:, None]),
        "4d_heads": (None, am4h),
        "kpm_and_4d": (kpm, am4h),
        "block_causal": (None, block_causal_mask(seg, causal) if Lq == Lk else None),
    }


_CASES = ["kpm", "kpm_all_padding", "2d", "3d", "4d_1head", "4d_heads", "kpm_and_4d"]


@pytest.mark.parametrize("case,lq", [(c, lq) for c in _CASES for lq in (7, 3)] + [("block_causal", 7)])
def test_every_mask_shape_matches_the_loop_reference(case, lq):
    from djepa.core.attention import allowed_keys, xformers_bias
    from djepa.core.cpu_speed.dropout import math_attention

    B, H, Lk, d = 2, 2, 7, 4
    g = torch.Generator().manual_seed(11)
    q = torch.randn(B, H, lq, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, H, Lk, d, generator=g, dtype=torch.float64) for _ in range(2))
    kpm, am = _mask_cases(B, H, lq, Lk, g)[case]
    if am is not None and am.shape[-2] != lq:
        am = am[..., :lq, :]
    full_allowed = None if am is None else torch.broadcast_to(
        am if am.ndim == 4 else am[:, None] if am.ndim == 3 else am[None, None], (B, H, lq, Lk))
    ref = _loop_reference(q, k, v, kpm, full_allowed)
    out = attention_kernel(q, k, v, kpm, 0.0, "sdpa", attn_mask=am)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    allowed, empty = allowed_keys(B, H, lq, Lk, kpm, am)
    # the written-out math path (cpu_speed, used for CPU dropout) with the same combined mask
    math_out = math_attention(q, k, v, allowed, 0.0).masked_fill(empty, 0.0)
    torch.testing.assert_close(math_out, ref, atol=1e-10, rtol=1e-10)
    # the xformers bias (CUDA-only kernel; its input is built and checked here on CPU)
    bias = xformers_bias(allowed, B, H, lq, torch.float64)
    assert bias.shape == (B, H, lq, Lk)
    assert bias.stride(-2) % 8 == 0  # 16-byte aligned rows (0 = broadcast row)
    assert torch.equal(bias == 0, torch.broadcast_to(allowed, bias.shape))
    assert torch.isinf(bias[~torch.broadcast_to(allowed, bias.shape)]).all()
    xf = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, -1) @ v
    torch.testing.assert_close(xf.masked_fill(empty, 0.0), ref, atol=1e-10, rtol=1e-10)


def test_block_causal_mask_values():
    from djepa.core.attention import block_causal_mask

    seg = torch.tensor([[0, 0, 1, 1, 2]])
    causal = torch.tensor([[True, True, False, False, True]])  # text, image span, text
    m = block_causal_mask(seg, causal)[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1]])
    assert torch.equal(m, expected)


def test_module_attn_mask_with_query_rows_and_gradients():
    torch.manual_seed(0)
    attn = Attention(16, 2).eval()
    _randomize(attn, 6)
    x = torch.randn(2, 6, 16)
    am = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    am[0, 3] = False  # fully masked query row
    full = attn(x, attn_mask=am)
    rows = torch.tensor([[3, 0], [5, 1]])
    part = attn(x, attn_mask=am, query_idx=rows)
    torch.testing.assert_close(part, torch.stack([full[b, rows[b]] for b in range(2)]))
    torch.testing.assert_close(full[0, 3], attn.proj.bias.detach())
    x.requires_grad_(True)
    attn(x, attn_mask=am).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="attn_mask must broadcast"):
        attn(x, attn_mask=am[:, :5])
    with pytest.raises(ValueError, match="must be bool"):
        attn(x, attn_mask=am.float())
