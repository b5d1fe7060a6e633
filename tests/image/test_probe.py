"""Pooled encoder features, the linear probe and ``image-probe`` (paper App. E.2, Table 9)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from djepa.core.batch import TokenBatch
from djepa.core.config import preset
from djepa.core.model import DJEPA
from djepa.image import probe as probe_cli
from djepa.image import train as train_cli
from djepa.image.features import FeatureCache, pooled_features
from djepa.image.probe import ProbeSettings, fit_linear_probe, probe_accuracy, stratified_split

TINY = ["--preset", "tiny", "--batch-size", "8", "--sample-every", "0", "--log-every", "1",
        "--warmup-steps", "0", "--no-progress-bar", "--no-tensorboard"]
FAST_PROBE = ["--lbfgs-iters", "50", "--weight-decays", "0", "1e-2", "1", "--max-train", "300",
              "--max-test", "120", "--no-progress"]
ADAMW = ["--optimizer", "adamw", "--epochs", "3", "--lrs", "1e-3", "1e-1", "--weight-decays", "0"]


def _model(pos_embed: str = "learned", condition: str = "class") -> DJEPA:
    torch.manual_seed(0)
    return DJEPA(preset("tiny", token_dim=4, grid=(4, 4), num_classes=10, pos_embed=pos_embed,
                        condition=condition)).eval()


@pytest.mark.parametrize("condition", ["class", "none"])
def test_pooled_features_equal_hand_computation_without_buffer(condition):
    model = _model(condition=condition)
    enc, nb = model.encoder, model.config.buffer_size
    x = torch.randn(3, 16, 4)
    with torch.no_grad():
        got = pooled_features(model, x)
        # by hand from φ's pieces: embed + table, buffer (+ the null class), norm, blocks, norm
        h = enc.token_embed(x) + enc.pos_embed
        buf = enc.buffer.expand(3, -1, -1)
        if condition == "class":
            buf = buf + model.condition.null_embed.reshape(1, 1, -1)
        h = enc.embed_norm(torch.cat([buf, h], 1))
        for blk in enc.blocks:
            h = blk(h)
        h = enc.norm(h)
        want = h[:, nb:].mean(1)
        with_buffer = h.mean(1)
    assert got.shape == (3, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - with_buffer).abs().max() > 1e-3  # the buffer rows would change the mean


def test_pooled_features_ignore_the_label_and_padding_and_are_batch_independent():
    model = _model(pos_embed="rope")
    x = torch.randn(4, 16, 4)
    with torch.no_grad():
        full = pooled_features(model, x)
        single = torch.cat([pooled_features(model, x[i:i + 1]) for i in range(4)])
        # the same rows with 5 padding tokens appended: padding is never attended to or averaged
        padded = TokenBatch.from_lengths(torch.cat([x, torch.randn(4, 5, 4)], 1), [16] * 4)
        padded = TokenBatch(padded.tokens, torch.cat([TokenBatch.from_grid(x, (4, 4)).positions,
                                                      torch.zeros(4, 5, 2, dtype=torch.long)], 1),
                            padded.padding, padded.maskable)
        pad = pooled_features(model, padded)
    torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pad, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adamw"])
def test_probe_reaches_100_percent_on_linearly_separable_features(optimizer):
    g = torch.Generator().manual_seed(0)
    centers = 6.0 * torch.randn(5, 16, generator=g)
    y = torch.arange(5).repeat(80)
    x = centers[y] + torch.randn(400, 16, generator=g)
    yt = torch.arange(5).repeat(40)
    xt = centers[yt] + torch.randn(200, 16, generator=g)
    settings = ProbeSettings(optimizer=optimizer, lrs=(1e-2, 1e-1), weight_decays=(0.0, 1e-3), epochs=20,
                             batch_size=100, lbfgs_iters=100)
    fit = fit_linear_probe(x, y, 5, settings)
    assert probe_accuracy(fit, xt, yt) == 1.0
    assert fit.num_fit + fit.num_val == 400 and fit.num_val == 40
    # and a non-separable control (random labels) stays near chance on fresh data
    yr = torch.randint(0, 5, (400,), generator=g)
    fit_r = fit_linear_probe(x, yr, 5, settings)
    assert probe_accuracy(fit_r, xt, torch.randint(0, 5, (200,), generator=g)) < 0.4


def test_stratified_split_is_disjoint_seeded_and_per_class():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    fit, val = stratified_split(y, 0.1, seed=3)
    assert len(set(fit.tolist()) & set(val.tolist())) == 0 and len(fit) + len(val) == 100
    assert torch.bincount(y[val]).tolist() == [5, 3, 2]
    fit2, val2 = stratified_split(y, 0.1, seed=3)
    assert torch.equal(val, val2) and not torch.equal(val, stratified_split(y, 0.1, seed=4)[1])


def test_sweep_choice_follows_validation():
    """With one hopeless setting (lr tiny, 1 epoch) and one good one, the good one is chosen."""
    g = torch.Generator().manual_seed(1)
    centers = 3.0 * torch.randn(3, 8, generator=g)
    y = torch.arange(3).repeat(100)
    x = centers[y] + torch.randn(300, 8, generator=g)
    fit = fit_linear_probe(x, y, 3, ProbeSettings(optimizer="adamw", lrs=(1e-7, 3e-2), weight_decays=(0.0,), epochs=5,
                                                      batch_size=50))
    assert fit.lr == 3e-2
    assert fit.sweep[0]["val_top1"] < fit.sweep[1]["val_top1"]


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for loss in ("diffusion", "flow"):
        d = tmp_path_factory.mktemp(loss)
        assert train_cli.main(TINY + ["--loss", loss, "--max-steps", "2", "--output-dir", str(d)]) == 0
        out[loss] = d
    return out


def _err(capsys) -> str:
    err = [l for l in capsys.readouterr().err.strip().splitlines() if l.startswith("image-probe: error")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("loss", ["diffusion", "flow"])
def test_probe_cli_on_a_diffusion_and_a_flow_run(runs, loss, tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = ["--checkpoint", str(runs[loss]), "--output", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert probe_cli.main(args + FAST_PROBE) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "digits" and res["num_test"] == 120 and res["num_train"] == 300
    assert res["feature_dim"] == 64 and 0.0 <= res["top1"] <= 1.0
    assert res["num_fit"] + res["num_val"] == 300
    assert "linear-probe top-1" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # train + test
    # one checkpoint of the run loads too (its EMA weights), with its own cache entries
    step = runs[loss] / "checkpoints" / "step_00000002"
    assert probe_cli.main(["--checkpoint", str(step), "--cache-dir", str(tmp_path / "cache")] + FAST_PROBE) == 0
    # same weights file content as the export? no: the export equals the last EMA, so the keys
    # may coincide; at least the cache is read back without recomputing
    cached = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args + FAST_PROBE))
    assert cached["top1"] == res["top1"]
    assert "from cache" in capsys.readouterr().err


def test_feature_cache_matches_fresh_extraction(runs, tmp_path):
    args = ["--checkpoint", str(runs["diffusion"]), "--cache-dir", str(tmp_path / "c")] + FAST_PROBE
    a = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args))
    files = sorted((tmp_path / "c").glob("*.safetensors"))
    feats = [FeatureCache(tmp_path / "c").load(p.stem) for p in files]
    assert all(f is not None and f[0].shape[1] == 64 for f in feats)
    b = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args[:-1] + ["--no-cache", "--no-progress"]))
    assert a["top1"] == b["top1"] and a["sweep"] == b["sweep"]


@pytest.mark.parametrize("extra", [[], ADAMW], ids=["lbfgs-wd-sweep", "adamw-lr-sweep"])
def test_lr_choice_never_looks_at_test(runs, tmp_path, monkeypatch, extra):
    """Shuffling the test labels changes the test score, never the chosen setting."""
    args = ["--checkpoint", str(runs["diffusion"]), "--no-cache"] + FAST_PROBE + extra
    real = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args))
    original = probe_cli.build_split

    class Shuffled(torch.utils.data.Dataset):
        def __init__(self, ds):
            self.ds, self.num_classes = ds, ds.num_classes
            g = torch.Generator().manual_seed(0)
            self.perm = torch.randperm(len(ds), generator=g)

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return self.ds[i][0], self.ds[int(self.perm[i])][1]

    def shuffled_test(name, data_dir, tok, split, limit):
        ds = original(name, data_dir, tok, split, limit)
        return Shuffled(ds) if split == "test" else ds

    monkeypatch.setattr(probe_cli, "build_split", shuffled_test)
    fake = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args))
    assert (fake["chosen_lr"], fake["chosen_weight_decay"]) == (real["chosen_lr"], real["chosen_weight_decay"])
    assert fake["sweep"] == real["sweep"]
    assert fake["top1"] != real["top1"]  # the test labels did matter for the score


def test_random_init_probe_differs(runs, tmp_path):
    # --seed 1: the init differs from the run's (seed 0; after 2 steps it is still near its init)
    args = ["--checkpoint", str(runs["diffusion"]), "--cache-dir", str(tmp_path / "c"), "--seed", "1"] + FAST_PROBE
    a = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args))
    r = probe_cli.run(probe_cli.parse(probe_cli.ImageProbeConfig, args + ["--random-init"]))
    assert r["random_init"] and len(list((tmp_path / "c").glob("*.safetensors"))) == 4
    assert a["sweep"] != r["sweep"]


def test_probe_errors_are_one_line(runs, tmp_path, capsys):
    assert probe_cli.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "does not exist" in _err(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert probe_cli.main(["--checkpoint", str(empty)]) == 2
    assert "holds no exported model" in _err(capsys)
    # another modality's run: same weights, a tokenizer record of another kind
    other = tmp_path / "audio"
    shutil.copytree(runs["flow"] / "pretrained", other)
    (other / "tokenizer.json").write_text(json.dumps({"kind": "mel", "frames": 16}))
    assert probe_cli.main(["--checkpoint", str(other)]) == 2
    assert "is not an image run (a 'mel' tokenizer" in _err(capsys)
    # a bare export records no data set: --dataset is needed
    bare = tmp_path / "bare"
    shutil.copytree(runs["flow"] / "pretrained", bare)
    assert probe_cli.main(["--checkpoint", str(bare)]) == 2
    assert "give --dataset" in _err(capsys)
    assert probe_cli.main(["--checkpoint", str(runs["flow"]), "--dataset", "idx"]) == 2
    assert "needs a data directory" in _err(capsys)


def test_probe_and_finetune_take_a_latent_run(tmp_path):
    """A run trained in a VAE's latent space (tiny random diffusers AutoencoderKL, stride 2)
    probes and fine-tunes like a pixel run (features from the posterior mean)."""
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from djepa.image import finetune as ft_cli

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        scaling_factor=0.5, shift_factor=0.0).eval()
    vae.save_pretrained(tmp_path / "kl")
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    run = tmp_path / "run"
    assert train_cli.main(TINY[:2] + ["--batch-size", "4"] + TINY[4:] + [
        "--dataset", "imagefolder", "--data-dir", str(root), "--image-size", "8", "--vae",
        f"diffusers:{tmp_path / 'kl'}", "--patch-size", "1", "--max-steps", "1", "--output-dir", str(run)]) == 0
    assert json.loads((run / "tokenizer.json").read_text())["kind"] == "vae"
    out = tmp_path / "p.json"
    assert probe_cli.main(["--checkpoint", str(run), "--output", str(out), "--no-cache", "--no-progress",
                           "--val-fraction", "0.25", "--lbfgs-iters", "20"]) == 0
    res = json.loads(out.read_text())
    assert res["dataset"] == "imagefolder" and res["num_train"] == 8 and res["feature_dim"] == 64
    ft = tmp_path / "ft"
    assert ft_cli.main(["--checkpoint", str(run), "--max-steps", "1", "--batch-size", "4", "--warmup-steps", "0",
                        "--no-progress-bar", "--zero-stage", "0", "--precision", "fp32", "--output-dir", str(ft)]) == 0
    assert json.loads((ft / "result.json").read_text())["num_test"] == 8
