"""VAE tokenizers: LDM→diffusers key mapping (KL-16), TAESD/TAEF2 on real weights, scale/shift,
patchify layout, posterior sampling and fp32 under autocast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from djepa.image.kl16 import KL16Config, diffusers_to_ldm_vae, kl16_diffusers_config, ldm_to_diffusers_vae
from djepa.image.tokenizer import PixelTokenizer, Tokenizer
from djepa.image.vae import load_autoencoder, load_vae, parse_vae_spec, vae_tokenizer_from_description

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TAEF2 = SHARED / "taef2-tiny-vae-weights"
IMAGENET = SHARED / "imagenet-sample-500" / "val"

# ----------------------------------------------------------------------------------------------
# A minimal, independent LDM-style KL autoencoder (latent-diffusion's
# ldm/modules/diffusionmodules/model.py semantics, as in MAR's models/vae.py): the reference the
# mapped diffusers model must reproduce.


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _Attn(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(b, c, -1).permute(0, 2, 1)
        k = self.k(h).reshape(b, c, -1)
        w = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
        v = self.v(h).reshape(b, c, -1)
        out = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class _Level(nn.Module):
    pass


class _Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LDMReference(nn.Module):
    def __init__(self, cfg: KL16Config):
        super().__init__()
        ch, mult, nrb, L = cfg.ch, cfg.ch_mult, cfg.num_res_blocks, len(cfg.ch_mult)
        enc = nn.Module()
        enc.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        enc.down = nn.ModuleList()
        cin = ch
        for i in range(L):
            lvl = _Level()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(nrb):
                lvl.block.append(_Res(cin, ch * mult[i]))
                cin = ch * mult[i]
                if cfg.resolution // 2**i in cfg.encoder_attn_resolutions:
                    lvl.attn.append(_Attn(cin))
            if i != L - 1:
                lvl.downsample = _Down(cin)
            enc.down.append(lvl)
        enc.mid = nn.Module()
        enc.mid.block_1, enc.mid.attn_1, enc.mid.block_2 = _Res(cin, cin), _Attn(cin), _Res(cin, cin)
        enc.norm_out, enc.conv_out = _gn(cin), nn.Conv2d(cin, 2 * cfg.embed_dim, 3, padding=1)
        dec = nn.Module()
        cin = ch * mult[-1]
        dec.conv_in = nn.Conv2d(cfg.embed_dim, cin, 3, padding=1)
        dec.mid = nn.Module()
        dec.mid.block_1, dec.mid.attn_1, dec.mid.block_2 = _Res(cin, cin), _Attn(cin), _Res(cin, cin)
        ups = []
        for i in reversed(range(L)):
            lvl = _Level()
            lvl.block, lvl.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(nrb + 1):
                lvl.block.append(_Res(cin, ch * mult[i]))
                cin = ch * mult[i]
                if cfg.resolution // 2**i in cfg.decoder_attn_resolutions:
                    lvl.attn.append(_Attn(cin))
            if i != 0:
                lvl.upsample = _Up(cin)
            ups.insert(0, lvl)
        dec.up = nn.ModuleList(ups)
        dec.norm_out, dec.conv_out = _gn(cin), nn.Conv2d(cin, 3, 3, padding=1)
        self.encoder, self.decoder, self.L = enc, dec, L
        self.quant_conv = nn.Conv2d(2 * cfg.embed_dim, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 1)

    @staticmethod
    def _level(lvl, h):
        for j, blk in enumerate(lvl.block):
            h = blk(h)
            if len(lvl.attn):
                h = lvl.attn[j](h)
        return h

    def moments(self, x):
        e = self.encoder
        h = e.conv_in(x)
        for lvl in e.down:
            h = self._level(lvl, h)
            if hasattr(lvl, "downsample"):
                h = lvl.downsample(h)
        h = e.mid.block_2(e.mid.attn_1(e.mid.block_1(h)))
        m = self.quant_conv(e.conv_out(F.silu(e.norm_out(h))))
        mean, logvar = m.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z):
        d = self.decoder
        h = d.conv_in(self.post_quant_conv(z))
        h = d.mid.block_2(d.mid.attn_1(d.mid.block_1(h)))
        for i in reversed(range(self.L)):
            h = self._level(d.up[i], h)
            if hasattr(d.up[i], "upsample"):
                h = d.up[i].upsample(h)
        return d.conv_out(F.silu(d.norm_out(h)))


TINY_KL = KL16Config(ch=32, ch_mult=(1, 2), num_res_blocks=1, embed_dim=4, resolution=32,
                     encoder_attn_resolutions=(16,), decoder_attn_resolutions=(16,))


@pytest.fixture(scope="module")
def kl_checkpoint(tmp_path_factory):
    """A random tiny LDM-format checkpoint on disk ({"model": sd}, with a training-only loss.* key)."""
    torch.manual_seed(0)
    ref = LDMReference(TINY_KL).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():  # non-trivial norms / biases so mis-mapping shows
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("kl") / "kl16.ckpt"
    sd = dict(ref.state_dict(), **{"loss.discriminator.main.0.weight": torch.zeros(2)})
    torch.save({"model": sd}, path)
    return path, ref


def _images(n=2, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_ldm_key_mapping_round_trip_and_covers_diffusers_model(kl_checkpoint):
    from diffusers import AutoencoderKL

    _, ref = kl_checkpoint
    sd = ref.state_dict()
    mapped = ldm_to_diffusers_vae(sd, TINY_KL.num_levels)
    target = AutoencoderKL(**kl16_diffusers_config(TINY_KL)).state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    back = diffusers_to_ldm_vae(mapped, TINY_KL.num_levels)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    # spot checks of the non-trivial renames (decoder levels reversed, attention 1x1 conv -> linear)
    assert torch.equal(mapped["decoder.up_blocks.0.upsamplers.0.conv.weight"], sd["decoder.up.1.upsample.conv.weight"])
    assert torch.equal(mapped["encoder.down_blocks.1.attentions.0.to_out.0.weight"],
                       sd["encoder.down.1.attn.0.proj_out.weight"][:, :, 0, 0])
    with pytest.raises(KeyError, match="unexpected key"):
        ldm_to_diffusers_vae({"encoder.foo.weight": torch.zeros(1)}, 2)


def test_mapped_kl16_equals_ldm_reference(kl_checkpoint):
    path, ref = kl_checkpoint
    tok = load_vae(f"kl16:{path}", 16, kl16_config=TINY_KL.to_dict(), scale=0.5, shift=0.1)
    assert tok.downsample == 2 and tok.latent_channels == 4 and tok.value_range is None
    x = _images()
    mean, logvar = tok.encode_moments(x)
    with torch.no_grad():
        rmean, rlogvar = ref.moments(2 * x - 1)
        rdec = ((ref.decode(rmean) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(mean, rmean, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logvar, rlogvar, atol=1e-5, rtol=1e-4)
    assert rmean.std() > 0.05 and rlogvar.std() > 0.05  # a non-degenerate comparison
    tokens = tok.encode(x)
    torch.testing.assert_close(tok.decode(tokens), rdec, atol=1e-5, rtol=1e-4)


def test_tokens_scale_shift_and_patch_layout(kl_checkpoint):
    path, _ = kl_checkpoint
    scale, shift = 0.37, -0.2
    tok = load_vae(f"kl16:{path}", 16, patch_size=2, kl16_config=TINY_KL.to_dict(), scale=scale, shift=shift)
    assert isinstance(tok, Tokenizer) and tok.grid == (4, 4) and tok.token_dim == 16
    z = torch.randn(3, 4, 8, 8)
    tokens = tok.latents_to_tokens(z)
    # PixelTokenizer (MAR's patchify order) maps v -> 2v - 1, so it patchifies y when fed (y + 1) / 2
    y = (z - shift) * scale
    torch.testing.assert_close(tokens, PixelTokenizer(4, 8, 2).encode((y + 1) / 2), atol=1e-6, rtol=0)
    assert tokens[1, 4 * 1 + 2, 3 * 4 + 1 * 2 + 0] == pytest.approx(float(y[1, 3, 2 * 1 + 1, 2 * 2 + 0]))
    torch.testing.assert_close(tok.tokens_to_latents(tokens), z, atol=1e-6, rtol=1e-6)
    # encode uses the posterior mean by default, with scale / shift applied
    x = _images()
    mean, _ = tok.encode_moments(x)
    torch.testing.assert_close(tok.encode(x), tok.latents_to_tokens(mean))
    torch.testing.assert_close(tok.encode(x)[0, 0, 0], (mean[0, 0, 0, 0] - shift) * scale)
    # per-channel scale
    tok_c = load_vae(f"kl16:{path}", 16, kl16_config=TINY_KL.to_dict(), scale=[1, 2, 3, 4], shift=0)
    t = tok_c.latents_to_tokens(z)
    torch.testing.assert_close(t[:, :, 2], 3 * z[:, 2].reshape(3, -1))
    with pytest.raises(ValueError, match="per-channel"):
        load_vae(f"kl16:{path}", 16, kl16_config=TINY_KL.to_dict(), scale=[1, 2])
    with pytest.raises(ValueError, match="not divisible"):
        load_vae(f"kl16:{path}", 17, kl16_config=TINY_KL.to_dict())


def test_posterior_sampling_uses_logvar(kl_checkpoint):
    path, _ = kl_checkpoint
    tok = load_vae(f"kl16:{path}", 16, kl16_config=TINY_KL.to_dict())
    x = _images()
    mean, logvar = tok.encode_moments(x)
    got = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, tok.latents_to_tokens(mean + torch.exp(0.5 * logvar) * eps))
    assert not torch.allclose(got, tok.encode(x))


def test_vae_stays_fp32_under_bf16_autocast(kl_checkpoint):
    path, _ = kl_checkpoint
    tok = load_vae(f"kl16:{path}", 16, kl16_config=TINY_KL.to_dict())
    x = _images()
    ref_tokens = tok.encode(x)
    ref_images = tok.decode(ref_tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = tok.encode(x)
        tokens_bf16_input = tok.encode(x.bfloat16())
        images = tok.decode(ref_tokens)
    assert tokens.dtype == torch.float32 and images.dtype == torch.float32
    assert torch.equal(tokens, ref_tokens) and torch.equal(images, ref_images)  # no bf16 anywhere inside
    assert torch.equal(tokens_bf16_input, tok.encode(x.bfloat16().float()))  # only the input was rounded
    assert all(p.dtype == torch.float32 for p in tok.autoencoder.parameters())


def test_diffusers_spec_uses_config_scale_and_shift(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=6, layers_per_block=1,
                        scaling_factor=0.7, shift_factor=0.25)
    vae.save_pretrained(tmp_path / "vae")
    tok = load_vae(f"diffusers:{tmp_path / 'vae'}", 8)
    assert (tok.latent_channels, tok.downsample, tok.scale_value, tok.shift_value) == (6, 2, 0.7, 0.25)
    x = _images(size=8)
    with torch.no_grad():
        mean = vae.encode(2 * x - 1).latent_dist.mean
    torch.testing.assert_close(tok.encode(x), tok.latents_to_tokens(mean))
    torch.testing.assert_close(tok.encode(x)[0, 0, 5], (mean[0, 5, 0, 0] - 0.25) * 0.7)
    rebuilt = vae_tokenizer_from_description(tok.describe())
    assert torch.equal(rebuilt.encode(x), tok.encode(x))
    # the core Tokenizer protocol: JSON round-trip through the registry (kind "vae")
    import json

    from djepa.core.tokenizer import Tokenizer, tokenizer_from_config

    assert isinstance(tok, Tokenizer) and tok.value_range is None
    again = tokenizer_from_config(json.loads(json.dumps(tok.to_config())))
    assert type(again) is type(tok) and again.to_config() == tok.to_config()
    assert torch.equal(again.encode(x), tok.encode(x)) and torch.equal(again.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    with pytest.raises(ValueError, match="bad VAE spec"):
        parse_vae_spec("sdxl:/x")
    with pytest.raises(FileNotFoundError):
        load_autoencoder(f"diffusers:{tmp_path / 'missing'}")


# ----------------------------------------------------------------------------------------------
# TAEF2 (real weights)

needs_taef2 = pytest.mark.skipif(not (TAEF2 / "taef2_encoder.pth").is_file(), reason="TAEF2 weights absent")


@needs_taef2
def test_taef2_loads_real_weights_layout():
    ae = load_autoencoder(f"taesd:{TAEF2}")
    assert ae.latent_channels == 32 and ae.downsample == 8 and ae.deterministic
    enc, dec = ae.model.encoder, ae.model.decoder
    assert [i for i, m in enumerate(enc) if getattr(m, "pool", None) is not None] == [11, 12, 13]
    assert [i for i, m in enumerate(dec) if getattr(m, "pool", None) is not None] == [3, 4, 5]
    sd = torch.load(TAEF2 / "taef2_encoder.pth", weights_only=True)
    assert torch.equal(enc.state_dict()["14.weight"], sd["14.weight"].float())
    assert enc[2].stride == (2, 2) and enc[2].bias is None


@needs_taef2
def test_taef2_diffusers_layout_file_gives_same_model(tmp_path):
    from safetensors.torch import save_file

    enc = torch.load(TAEF2 / "taef2_encoder.pth", weights_only=True)
    dec = torch.load(TAEF2 / "taef2_decoder.pth", weights_only=True)
    one = {f"encoder.layers.{k}": v for k, v in enc.items()}
    for k, v in dec.items():
        i, rest = k.split(".", 1)
        one[f"decoder.layers.{int(i) - 1}.{rest}"] = v
    (tmp_path / "d").mkdir()
    save_file(one, str(tmp_path / "d" / "taef2.safetensors"))
    a = load_vae(f"taesd:{TAEF2}", 32)
    b = load_vae(f"taesd:{tmp_path / 'd'}", 32)
    x = _images(1, 32)
    assert torch.equal(a.encode(x), b.encode(x))
    assert torch.equal(a.decode(a.encode(x)), b.decode(a.encode(x)))


@needs_taef2
@pytest.mark.skipif(not IMAGENET.is_dir(), reason="imagenet-sample-500 absent")
def test_taef2_reconstruction_psnr_on_real_images():
    from djepa.image.datasets import ImageFolderDataset

    tok = load_vae(f"taesd:{TAEF2}", 128)
    ds = ImageFolderDataset(IMAGENET, 128, hflip=False)
    x = torch.stack([ds[i][0] for i in (0, 100, 200, 300)])
    tokens = tok.encode(x)
    mean, logvar = tok.encode_moments(x)
    assert torch.isneginf(logvar).all()  # deterministic encoder: zero posterior variance
    assert torch.equal(tok.encode(x, sample=True), tokens)  # so sampling returns the mean exactly
    y = tok.decode(tokens)
    psnr = 10 * torch.log10(1.0 / ((y - x) ** 2).flatten(1).mean(1))
    assert psnr.mean() > 22.0 and psnr.min() > 17.0, psnr
    # a blank latent decodes to something far from the image: the PSNR is not trivially high
    blank = tok.decode(torch.zeros_like(tokens))
    assert (10 * torch.log10(1.0 / ((blank - x) ** 2).mean())) < 15.0


class _Payload:
    """Unpickling this calls ``open(marker, "w")`` (creates the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["kl16", "taesd"])
def test_unsafe_vae_pickle_is_one_line_and_never_runs(tmp_path, kind):
    from djepa.core.safe_load import UnsafeFileError

    marker = tmp_path / "MARKER"
    path = tmp_path / ("kl16.ckpt" if kind == "kl16" else "taesd_encoder.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": _Payload(marker)}, path)
    with pytest.raises(UnsafeFileError) as e:
        load_vae(f"{kind}:{path}", 16)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "refused" in msg
    assert "weights_only" not in msg            # no advice to turn the protection off
    assert not marker.exists()
