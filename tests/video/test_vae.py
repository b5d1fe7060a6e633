"""CogVideoX VAE tokenizer with a tiny randomly initialised config saved to disk."""

from __future__ import annotations

import pytest
import torch

from djepa.video.datasets import MovingDigits
from djepa.video.tokenizer import patchify3d
from djepa.video.vae import VideoVAETokenizer, cache_latents, load_cogvideox


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                                 norm_num_groups=4, temporal_compression_ratio=4, scaling_factor=0.7)
    d = tmp_path_factory.mktemp("tiny_cogvideox")
    vae.save_pretrained(d)
    return d


def test_shapes_scaling_and_round_trip_against_the_same_weights(vae_dir):
    tok = VideoVAETokenizer(str(vae_dir), 9, 32, 32, (1, 2, 2))
    assert tok.latent_shape == (4, 3, 4, 4) and tok.grid == (3, 2, 2) and tok.token_dim == 16
    assert tok.latent_scale == 0.7 and tok.value_range is None
    assert next(tok.vae.parameters()).dtype == torch.float32
    x = torch.rand(2, 3, 9, 32, 32)
    tokens = tok.encode(x)
    assert tokens.shape == (2, 12, 16)
    ref = load_cogvideox(vae_dir)  # the same weights, called directly
    with torch.no_grad():
        z = ref.encode(x * 2 - 1).latent_dist.mean
        video = (ref.decode(z).sample + 1) / 2
    torch.testing.assert_close(tokens, patchify3d(z * 0.7, (1, 2, 2)))
    out = tok.decode(tokens, clamp=False)
    assert out.shape == (2, 3, 9, 32, 32)
    torch.testing.assert_close(out, video, rtol=1e-4, atol=1e-5)


def test_vae_grid_and_folder_errors(vae_dir, tmp_path):
    with pytest.raises(ValueError, match=r"got 10 \(use 9 or 16\)"):
        VideoVAETokenizer(str(vae_dir), 10, 32, 32, (1, 2, 2))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        load_cogvideox(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cogvideox(tmp_path / "none")


def test_latent_cache_is_resumable(vae_dir, tmp_path, monkeypatch):
    ds = MovingDigits("test", frames=8, size=16)
    sub = torch.utils.data.Subset(ds, range(3))
    sub.frames, sub.height, sub.width, sub.channels = 8, 16, 16, 1
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(0)
    grey = AutoencoderKLCogVideoX(in_channels=1, out_channels=1, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                  latent_channels=4, norm_num_groups=4)
    grey.save_pretrained(tmp_path / "grey")
    tok = VideoVAETokenizer(str(tmp_path / "grey"), 8, 16, 16, (1, 1, 1))
    calls = []
    real = tok.moments
    monkeypatch.setattr(tok, "moments", lambda v: calls.append(1) or real(v))
    first = cache_latents(sub, tok, tmp_path / "cache", progress=False)
    assert len(calls) == 3
    (tmp_path / "cache" / f"{first.keys[1]}.safetensors").unlink()  # as if killed before clip 1
    again = cache_latents(sub, tok, tmp_path / "cache", progress=False)
    assert len(calls) == 4 and again.keys == first.keys
    mean, std, label, valid = again[1]
    m_ref, _ = real(ds[1][0].unsqueeze(0))
    torch.testing.assert_close(mean, m_ref[0])
    assert label == ds.label_of(1) and valid == ds.valid_of(1) and mean.shape == (4, 2, 2, 2)
