"""TokenGrid order and axial RoPE (djepa.core.rope)."""

import math

import pytest
import torch

from djepa.core.rope import AxialRoPE, TokenGrid, apply_rope


# ----------------------------------------------------------------------------- TokenGrid
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_token_grid_coords_row_major(shape):
    grid = TokenGrid(shape)
    n = math.prod(shape)
    assert grid.num_tokens == n and grid.ndim == len(shape)
    coords = grid.coords()
    assert coords.dtype == torch.long and coords.shape == (n, len(shape))
    # Token n of tokens.reshape(B, N, D) sits at the multi-index where arange(N).reshape(shape) == n.
    index = torch.arange(n).reshape(shape)
    expected = torch.stack(torch.unravel_index(torch.arange(n), shape), dim=-1)
    assert torch.equal(coords, expected)
    for i in range(n):
        assert index[tuple(coords[i].tolist())].item() == i
    # And the same for a real [B, *shape, D] tensor flattened as the model does.
    t = torch.randn(2, *shape, 3)
    flat = t.reshape(2, n, 3)
    for i in range(n):
        assert torch.equal(flat[:, i], t[(slice(None), *coords[i].tolist())])


def test_token_grid_validation():
    with pytest.raises(ValueError):
        TokenGrid(())
    with pytest.raises(ValueError):
        TokenGrid((2, 2, 2, 2))
    with pytest.raises(ValueError):
        TokenGrid((0, 3))
    g = TokenGrid([4, 4])  # list normalised to tuple; frozen and hashable
    assert g.shape == (4, 4) and hash(g) == hash(TokenGrid((4, 4)))


# ----------------------------------------------------------------------------- AxialRoPE
def _reference_rotate(x: torch.Tensor, coords: torch.Tensor, ndim: int, theta: float = 10000.0):
    """Independent float64 reference: interleaved pairs as complex numbers times e^{i·angle}."""
    d = x.shape[-1]
    chunk = d // ndim
    freqs = []
    for a in range(ndim):
        for j in range(chunk // 2):
            freqs.append((a, theta ** (-(2.0 * j) / chunk)))
    angles = torch.stack(
        [coords[..., a].double() * f for a, f in freqs], dim=-1
    )  # [L, d/2]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(z).reshape(x.shape)


@pytest.mark.parametrize("ndim,head_dim", [(1, 8), (2, 16), (3, 12)])
def test_rope_matches_reference(ndim, head_dim):
    g = torch.Generator().manual_seed(0)
    rope = AxialRoPE(head_dim, ndim)
    coords = torch.randint(0, 20, (10, ndim), generator=g)
    cos, sin = rope(coords)
    assert cos.dtype == torch.float32 and cos.shape == (10, head_dim // 2)
    x = torch.randn(2, 3, 10, head_dim, generator=g)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out.double(), _reference_rotate(x, coords, ndim), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ndim,head_dim", [(1, 16), (2, 16), (3, 24)])
def test_rope_relative_position_property(ndim, head_dim):
    g = torch.Generator().manual_seed(1)
    rope = AxialRoPE(head_dim, ndim)
    L = 12
    q = torch.randn(1, 2, L, head_dim, generator=g)
    k = torch.randn(1, 2, L, head_dim, generator=g)
    p = torch.randint(0, 16, (L, ndim), generator=g)
    delta = torch.randint(-40, 40, (ndim,), generator=g)
    assert (delta != 0).any()

    def scores(coords):
        cos, sin = rope(coords)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    s0 = scores(p)
    s1 = scores(p + delta)  # same shift for every token: relative positions unchanged
    torch.testing.assert_close(s1, s0, atol=1e-4, rtol=1e-4)
    # Float coordinates behave the same.
    torch.testing.assert_close(scores(p.float() + 0.5), s0, atol=1e-4, rtol=1e-4)
    # Moving ONE token along each axis changes its relative positions → its scores change.
    for a in range(ndim):
        moved = p.clone()
        moved[0, a] += 3
        s2 = scores(moved)
        assert (s2[..., 0, 1:] - s0[..., 0, 1:]).abs().max() > 1e-2
        # Pairs not involving token 0 keep their scores.
        torch.testing.assert_close(s2[..., 1:, 1:], s0[..., 1:, 1:], atol=1e-4, rtol=1e-4)


def test_rope_preserves_norm_and_batched_tables():
    g = torch.Generator().manual_seed(2)
    rope = AxialRoPE(16, 2)
    x = torch.randn(3, 2, 9, 16, generator=g)
    coords = torch.randint(0, 50, (3, 9, 2), generator=g)  # per-sample coordinates
    cos, sin = rope(coords)
    assert cos.shape == (3, 9, 8)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    # Each sample's table equals applying that sample's [L, d/2] table alone.
    for b in range(3):
        cb, sb = rope(coords[b])
        torch.testing.assert_close(out[b : b + 1], apply_rope(x[b : b + 1], cb, sb))
        torch.testing.assert_close(out[b : b + 1].double(), _reference_rotate(x[b : b + 1], coords[b], 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_identity_rows_exact(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 6, 8, generator=g).to(dtype)
    rope = AxialRoPE(8, 1)
    cos, sin = rope(torch.arange(6)[:, None])
    # Rows 0..2 are "buffer tokens": identity rotation.
    cos[:3], sin[:3] = 1.0, 0.0
    out = apply_rope(x, cos, sin)
    assert out.dtype == dtype
    assert torch.equal(out[:, :, :3], x[:, :, :3])
    assert not torch.equal(out[:, :, 4:], x[:, :, 4:])
    # Position 0 also gives the identity (cos 0 = 1, sin 0 = 0).
    c0, s0 = rope(torch.zeros(1, 1, dtype=torch.long))
    assert torch.equal(apply_rope(x[:, :, :1], c0, s0), x[:, :, :1])


def test_rope_validation():
    with pytest.raises(ValueError):
        AxialRoPE(10, 2)  # 10 not divisible by 4
    with pytest.raises(ValueError):
        AxialRoPE(8, 3)  # 8 not divisible by 6
    with pytest.raises(ValueError):
        AxialRoPE(7, 1)
    with pytest.raises(ValueError):
        AxialRoPE(16, 4)
    rope = AxialRoPE(12, 3)
    assert len(list(rope.parameters())) == 0 and len(list(rope.buffers())) == 0
    with pytest.raises(ValueError):
        rope(torch.zeros(5, 2))  # wrong number of axes
    cos, sin = rope(torch.zeros(5, 3))
    with pytest.raises(ValueError):
        apply_rope(torch.randn(1, 1, 5, 8), cos, sin)  # head_dim mismatch


# ----------------------------------------------------------------------------- unequal split
def _reference_rotate_split(x: torch.Tensor, coords: torch.Tensor, split, theta: float = 10000.0):
    """float64 reference for an unequal split: axis a owns split[a] channels, its own ladder."""
    freqs = []
    for a, chunk in enumerate(split):
        for j in range(chunk // 2):
            freqs.append((a, theta ** (-(2.0 * j) / chunk)))
    angles = torch.stack([coords[..., a].double() * f for a, f in freqs], dim=-1)
    d = x.shape[-1]
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).reshape(x.shape)


def test_default_split_values():
    from djepa.core.rope import default_rope_split

    assert default_rope_split(64, 2) == (32, 32)  # the old equal split where it was valid
    assert default_rope_split(64, 3) == (20, 22, 22)
    assert default_rope_split(80, 3) == (26, 26, 28)
    assert default_rope_split(80, 2) == (40, 40)
    assert default_rope_split(10, 2) == (4, 6)
    assert default_rope_split(16, 1) == (16,)
    for bad in ((7, 1), (4, 3), (0, 1)):
        with pytest.raises(ValueError):
            default_rope_split(*bad)
    with pytest.raises(ValueError):
        AxialRoPE(64, 3, split=(16, 24, 22))  # sums to 62
    with pytest.raises(ValueError):
        AxialRoPE(64, 3, split=(15, 25, 24))  # odd shares


def test_equal_split_is_bit_identical_to_the_default():
    coords = torch.randint(0, 30, (40, 2), generator=torch.Generator().manual_seed(0))
    a, b = AxialRoPE(64, 2)(coords), AxialRoPE(64, 2, split=(32, 32))(coords)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("head_dim,split", [(64, (16, 24, 24)), (80, (26, 26, 28)), (64, (20, 22, 22))])
def test_unequal_split_matches_reference_and_relative_property_per_axis(head_dim, split):
    g = torch.Generator().manual_seed(4)
    rope = AxialRoPE(head_dim, 3, split=split)
    L = 10
    coords = torch.randint(0, 20, (L, 3), generator=g)
    cos, sin = rope(coords)
    assert cos.shape == (L, head_dim // 2)
    x = torch.randn(1, 2, L, head_dim, generator=g)
    torch.testing.assert_close(apply_rope(x, cos, sin).double(), _reference_rotate_split(x, coords, split),
                               atol=1e-5, rtol=1e-5)
    q = torch.randn(1, 2, L, head_dim, generator=g)
    k = torch.randn(1, 2, L, head_dim, generator=g)

    def scores(c):
        cs, sn = rope(c)
        return apply_rope(q, cs, sn) @ apply_rope(k, cs, sn).transpose(-1, -2)

    s0 = scores(coords)
    for a in range(3):
        shift = torch.zeros(3, dtype=torch.long)
        shift[a] = 7
        torch.testing.assert_close(scores(coords + shift), s0, atol=1e-4, rtol=1e-4)  # translation along a
        moved = coords.clone()
        moved[0, a] += 3
        s2 = scores(moved)
        assert (s2[..., 0, 1:] - s0[..., 0, 1:]).abs().max() > 1e-2
        torch.testing.assert_close(s2[..., 1:, 1:], s0[..., 1:, 1:], atol=1e-4, rtol=1e-4)
        # Only axis a's channels see a move along a: the other axes' pairs are unchanged.
        cs0, _ = rope(coords)
        cs2, _ = rope(moved)
        lo = sum(split[:a]) // 2
        hi = lo + split[a] // 2
        changed = (cs2[0] != cs0[0]).nonzero().squeeze(-1)
        assert changed.numel() > 0 and int(changed.min()) >= lo and int(changed.max()) < hi
