"""Sampling on the 3-D grid: batched = single, known prefix tokens kept, FVD maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from djepa.core.config import ModelSpec, SamplerConfig
from djepa.core.model import DJEPA
from djepa.core.rng import row_generators
from djepa.video.fvd import FVDProtocol, fvd, fvd_clips, i3d_features, load_i3d
from djepa.video.preview import sample_videos
from djepa.video.tokenizer import VideoPixelTokenizer


@pytest.fixture(scope="module")
def model_tok():
    tok = VideoPixelTokenizer(1, 4, 8, 8, (2, 4, 4))
    torch.manual_seed(0)
    cfg = ModelSpec(preset="tiny", loss="flow", pos_embed="rope").build(token_dim=tok.token_dim, grid=tok.grid,
                                                                      num_classes=5)
    assert cfg.grid == (2, 2, 2) and cfg.pos_embed == "rope"
    return DJEPA(cfg).eval(), tok


SAMPLER = SamplerConfig(num_ar_steps=4, cfg_scale=2.0, num_denoise_steps=4, flow_solver="heun")


def test_batched_equals_single(model_tok):
    model, tok = model_tok
    labels = torch.tensor([3, 1, 4])
    both, kept = sample_videos(model, tok, labels, SAMPLER, row_generators([10, 11, 12], "cpu"))
    assert both.shape == (3, 1, 4, 8, 8) and len(kept) == 3
    for i in range(3):
        one, _ = sample_videos(model, tok, labels[i:i + 1], SAMPLER, row_generators([10 + i], "cpu"))
        torch.testing.assert_close(both[i], one[0], rtol=0, atol=1e-5)


def test_known_prefix_tokens_are_kept(model_tok):
    model, tok = model_tok
    prefix = torch.rand(1, 1, 4, 8, 8)
    known = tok.encode(prefix)
    mask = torch.zeros(1, tok.num_tokens, dtype=torch.bool)
    mask[:, :4] = True  # the first temporal step = frames 0-1
    out, _ = sample_videos(model, tok, torch.tensor([2]), SAMPLER, row_generators([0], "cpu"),
                           known_tokens=known, known_mask=mask)
    torch.testing.assert_close(out[:, :, :2], prefix[:, :, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(out[:, :, 2:], prefix[:, :, 2:])


class TinyI3D(torch.nn.Module):
    """Same signature as the I3D TorchScript: [B, 3, T, 224, 224] in [-1, 1] → [B, D]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 6, kernel_size=(3, 16, 16), stride=(2, 16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3, 4))


def test_fvd_with_a_tiny_random_torchscript(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "i3d.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.script(TinyI3D()).save(str(path))
    model, sha = load_i3d(path)
    assert len(sha) == 64
    proto = FVDProtocol(num_frames=4, stride=2, resize=32, num_real=12, num_fake=12)
    g = torch.Generator().manual_seed(0)
    real = torch.rand(12, 1, 8, 16, 16, generator=g)
    x = fvd_clips(real, proto)
    assert x.shape == (12, 3, 4, 32, 32) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[:, 0, 1, 0, 0], real[:, 0, 2, 0, 0] * 2 - 1)  # frame 2 = second of stride 2
    fr = i3d_features(model, real, proto, batch_size=5)
    assert fr.shape == (12, 6)
    assert abs(fvd(fr, fr)) < 1e-6  # identical sets
    fake = (real * 0.5 + 0.5)
    assert fvd(fr, i3d_features(model, fake, proto)) > 1e-3
    with pytest.raises(ValueError, match="--fvd-frames 4"):
        fvd_clips(real[:, :, :7], FVDProtocol(num_frames=5, stride=2))  # needs 9 frames
    d = proto.to_dict()
    assert d["name"] == "fvd_4f_stride2_32px" and d["value_range"] == [-1.0, 1.0]
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="not a TorchScript"):
        load_i3d(tmp_path / "pickle.pt")


def test_fvd_matches_frechet_formula():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(50, 3)), g.normal(loc=1.0, size=(60, 3))
    from scipy.linalg import sqrtm

    m1, m2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * sqrtm(s1 @ s2).real)
    assert abs(fvd(a, b) - ref) < 1e-6
