"""Latent cache (image-cache-latents), CachedLatentDataset, posterior sampling, image-compute-scale,
and image-train / image-sample in latent space (tiny diffusers KL VAE; TAEF2 on real images)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from djepa.image import cache_latents as cache_cli
from djepa.image import compute_scale as scale_cli
from djepa.image.datasets import ImageFolderDataset
from djepa.image.latents import CachedLatentDataset, cache_latents, make_latent_prepare
from djepa.image.vae import load_vae

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TAEF2 = SHARED / "taef2-tiny-vae-weights"
IMAGENET = SHARED / "imagenet-sample-500" / "val"


@pytest.fixture(scope="module")
def kl_vae(tmp_path_factory) -> tuple[str, object]:
    """A tiny random diffusers AutoencoderKL on disk (stride 2, 4 latent channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        scaling_factor=0.5, shift_factor=0.0).eval()
    path = tmp_path_factory.mktemp("vae") / "kl"
    vae.save_pretrained(path)
    return f"diffusers:{path}", vae


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """ImageFolder with 3 classes × 2 real-format PNG/JPEG images of odd sizes (and one broken file)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "eel"):
        (root / c).mkdir()
        for i, (w, h) in enumerate([(13, 10), (10, 17)]):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.{'png' if i else 'jpg'}")
    (root / "eel" / "broken.png").write_bytes(b"not an image")
    return root


def _crops(root: Path, size: int) -> dict[str, torch.Tensor]:
    ds = ImageFolderDataset(root, size, hflip=False)
    out = {}
    for i, (p, _) in enumerate(ds.samples):
        try:
            out[str(Path(p).relative_to(root)) + ".npz"] = ds._load(p)
        except Exception:  # noqa: BLE001 — the broken file
            pass
    return out


def test_cache_writes_moments_of_crop_and_flip_and_resumes(kl_vae, folder, tmp_path):
    spec, _ = kl_vae
    tok = load_vae(spec, 8)
    out = tmp_path / "cache"
    with pytest.warns(UserWarning, match="broken.png"):
        s = cache_latents(tok, folder, out, batch_size=4, progress=False)
    assert (s["cached"], s["skipped"], s["failed"], s["total"]) == (6, 0, 1, 6)
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["latent_channels"] == 4 and m["latent_size"] == [4, 4] and not m["deterministic"]
    assert sorted(e[0] for e in m["entries"]) == sorted(f"{c}/{n}.npz" for c in ("cat", "dog", "eel")
                                                          for n in ("0.jpg", "1.png"))
    assert {e[0].split("/")[0]: e[1] for e in m["entries"]} == {"cat": 0, "dog": 1, "eel": 2}
    crops = _crops(folder, 8)
    for rel, x in crops.items():
        with np.load(out / rel) as f:
            assert set(f.files) == {"moments", "moments_flip"}
            mom, mom_f = torch.from_numpy(f["moments"]), torch.from_numpy(f["moments_flip"])
        assert mom.shape == (8, 4, 4) and mom.dtype == torch.float32
        mean, logvar = tok.encode_moments(x[None])
        torch.testing.assert_close(mom, torch.cat([mean, logvar], 1)[0], atol=1e-5, rtol=1e-5)
        mean_f, logvar_f = tok.encode_moments(x.flip(-1)[None])
        torch.testing.assert_close(mom_f, torch.cat([mean_f, logvar_f], 1)[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(mom, mom_f, atol=1e-3)
    # resume: nothing redone; a deleted file is redone alone
    stamps = {rel: os.stat(out / rel).st_mtime_ns for rel in crops}
    with pytest.warns(UserWarning):
        s = cache_latents(tok, folder, out, batch_size=4, progress=False)
    assert (s["cached"], s["skipped"]) == (0, 6)
    assert all(os.stat(out / rel).st_mtime_ns == t for rel, t in stamps.items())
    (out / "dog/1.png.npz").unlink()
    with pytest.warns(UserWarning):
        s = cache_latents(tok, folder, out, batch_size=4, progress=False)
    assert (s["cached"], s["skipped"], s["total"]) == (1, 5, 6)
    assert os.stat(out / "cat/0.jpg.npz").st_mtime_ns == stamps["cat/0.jpg.npz"]
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(ValueError, match="already holds a latent cache"):
        cache_latents(load_vae(spec, 16), folder, out, progress=False)


def test_cached_dataset_flips_half_the_time_and_prepare_samples_posterior(kl_vae, tmp_path):
    spec, _ = kl_vae
    tok = load_vae(spec, 8, scale=0.5, shift=0.1)
    root = tmp_path / "c"
    (root / "a").mkdir(parents=True)
    mean = torch.randn(4, 4, 4)
    logvar = torch.full((4, 4, 4), float(np.log(4.0)))  # std 2
    np.savez(root / "a" / "x.npz", moments=torch.cat([mean, logvar]).numpy(),
             moments_flip=torch.cat([-mean, logvar]).numpy())
    manifest = dict(format="djepa-latent-cache", version=1, vae=spec, kl16_config=None, image_size=8,
                    latent_channels=4, latent_size=[4, 4], downsample=2, deterministic=False, scale=0.5,
                    shift=0.1, num_classes=1, class_names=["a"], complete=True, entries=[["a/x.npz", 0]])
    (root / "manifest.json").write_text(json.dumps(manifest))
    ds = CachedLatentDataset(root, generator=torch.Generator().manual_seed(7))
    flips = [bool(torch.equal(ds[0][0][:4], -mean)) for _ in range(400)]
    g = torch.Generator().manual_seed(7)
    assert flips == [bool(torch.rand((), generator=g) < 0.5) for _ in range(400)]
    assert 160 < sum(flips) < 240
    assert ds[0][1].item() == 0 and ds.num_classes == 1 and ds.image_size == 8
    # prepare: z = mean + exp(logvar/2)·ε, then (z − shift)·scale, patchified
    moments = torch.cat([mean, logvar])[None].repeat(2, 1, 1, 1)
    batch = (moments, torch.tensor([0, 0]))
    out = make_latent_prepare(tok, generator=torch.Generator().manual_seed(1))(batch, torch.device("cpu"))
    eps = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    z = mean + 2.0 * eps
    torch.testing.assert_close(out["tokens"], ((z - 0.1) * 0.5).permute(0, 2, 3, 1).reshape(2, 16, 4))
    assert out["labels"].tolist() == [0, 0]
    many = make_latent_prepare(tok)((moments[:1].repeat(500, 1, 1, 1), torch.zeros(500)), "cpu")["tokens"]
    assert many.std(0).mean().item() == pytest.approx(2.0 * 0.5, rel=0.05)  # std of the tokens = 2·scale
    with pytest.raises(ValueError, match="incomplete"):
        (root / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
        CachedLatentDataset(root)


def test_compute_scale_matches_independent_std(kl_vae, folder, tmp_path, capsys):
    spec, vae = kl_vae
    out = tmp_path / "s.json"
    rc = scale_cli.main(["--vae", spec, "--data-dir", str(folder), "--image-size", "8", "--posterior", "mean",
                         "--shift", "0.3", "--batch-size", "4", "--output", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    ds = ImageFolderDataset(folder, 8, hflip=False, verify=True)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        z = vae.encode(2 * x - 1).latent_dist.mean.double()
    assert res["num_images"] == 6 and res["num_values"] == z.numel()
    assert res["scale"] == pytest.approx(1.0 / z.flatten().std(unbiased=False).item(), rel=1e-5)
    assert res["mean"] == pytest.approx(z.mean().item(), abs=1e-6)
    assert res["rms_scale"] == pytest.approx(1.0 / ((z - 0.3) ** 2).mean().sqrt().item(), rel=1e-5)
    assert res["channel_std"][2] == pytest.approx(z[:, 2].flatten().std(unbiased=False).item(), rel=1e-5)
    assert "1/std" in capsys.readouterr().out
    # sampling the posterior adds its variance: the std grows, so the scale shrinks
    rc = scale_cli.main(["--vae", spec, "--data-dir", str(folder), "--image-size", "8", "--output", str(out)])
    assert rc == 0 and json.loads(out.read_text())["scale"] < res["scale"]


def test_train_and_sample_on_cached_latents(kl_vae, folder, tmp_path):
    from djepa.image import sample as sample_cli
    from djepa.image import train as train_cli

    spec, _ = kl_vae
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning):
        assert cache_cli.main(["--vae", spec, "--data-dir", str(folder), "--image-size", "8",
                               "--output-dir", str(cache), "--batch-size", "8"]) == 0
    run = tmp_path / "run"
    rc = train_cli.main(["--cached-latents", str(cache), "--patch-size", "1", "--preset", "tiny",
                         "--batch-size", "4", "--max-steps", "2", "--sample-every", "0", "--log-every", "1",
                         "--warmup-steps", "0", "--latent-scale", "0.8", "--output-dir", str(run)])
    assert rc == 0
    info = json.loads((run / "pretrained" / "tokenizer.json").read_text())
    assert info["kind"] == "vae" and info["vae"] == spec and info["scale"] == 0.8 and info["patch_size"] == 1
    assert info["class_names"] == ["cat", "dog", "eel"]
    samples = tmp_path / "samples"
    rc = sample_cli.main(["--checkpoint", str(run), "--classes", "1", "--num-per-class", "2", "--ar-steps", "2",
                          "--denoise-steps", "2", "--output-dir", str(samples)])
    assert rc == 0
    assert Image.open(samples / "1" / "00000.png").size == (8, 8)


@pytest.mark.skipif(not (TAEF2 / "taef2_encoder.pth").is_file() or not IMAGENET.is_dir(),
                    reason="TAEF2 weights or imagenet-sample-500 absent")
def test_cache_taef2_real_images_stores_zero_variance(tmp_path):
    tok = load_vae(f"taesd:{TAEF2}", 64)
    out = tmp_path / "taef2"
    s = cache_latents(tok, IMAGENET, out, batch_size=3, max_images=3, progress=False)
    assert (s["cached"], s["total"]) == (3, 3)
    m = json.loads((out / "manifest.json").read_text())
    assert m["deterministic"] and m["latent_channels"] == 32 and m["latent_size"] == [8, 8]
    ds = CachedLatentDataset(out, generator=torch.Generator().manual_seed(0))
    moments, label = ds[0]
    assert torch.isneginf(moments[32:]).all()  # logvar = −inf: zero variance
    x = ImageFolderDataset(IMAGENET, 64, hflip=False)[0][0]
    mean = tok.encode_moments(torch.stack([x, x.flip(-1)]))[0]
    assert torch.allclose(moments[:32], mean[0], atol=1e-4) or torch.allclose(moments[:32], mean[1], atol=1e-4)
    tokens = make_latent_prepare(tok)((moments[None], label[None]), "cpu")["tokens"]
    assert torch.isfinite(tokens).all()
    assert torch.equal(tokens, tok.latents_to_tokens(moments[None, :32]))  # sampling returns the mean
