"""djepa.image.classifier: reference classifiers fitted on real digits / Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from djepa.image.classifier import class_accuracy, fit_reference_classifier
from djepa.image.datasets import DigitsDataset, IDXDataset

FASHION = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fashion-mnist"


@pytest.fixture(scope="module")
def digits_clf():
    return fit_reference_classifier("digits", seed=0)


def test_digits_heldout_accuracy(digits_clf):
    assert digits_clf.train_size == 1347 and digits_clf.heldout_size == 450
    assert digits_clf.heldout_accuracy >= 0.95
    test = DigitsDataset(split="test")  # images in [0, 1]; the classifier rescales to 0..16
    assert class_accuracy(digits_clf, test.images, test.targets) == pytest.approx(
        digits_clf.heldout_accuracy, abs=1e-6
    )


def test_digits_other_sizes_and_rgb(digits_clf):
    for size in (16, 32):
        test = DigitsDataset(size, split="test")  # bilinear upscale → area downscale inside
        assert class_accuracy(digits_clf, test.images, test.targets) >= 0.95
    test = DigitsDataset(split="test")
    rgb = test.images.expand(-1, 3, -1, -1)
    assert torch.equal(digits_clf.predict(rgb), digits_clf.predict(test.images))
    assert class_accuracy(digits_clf, test.images.double(), test.targets.tolist()) >= 0.95


def test_metric_can_fail(digits_clf):
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(500, 1, 8, 8, generator=g)
    labels = torch.arange(500) % 10  # 50 per class: any constant prediction scores 0.10
    assert class_accuracy(digits_clf, noise, labels) <= 0.25
    test = DigitsDataset(split="test")
    wrong = (test.targets + 1) % 10  # asking for the wrong class
    assert class_accuracy(digits_clf, test.images, wrong) <= 0.05
    blank = torch.zeros(100, 1, 8, 8)
    assert class_accuracy(digits_clf, blank, torch.arange(100) % 10) == pytest.approx(0.1)


def test_errors(digits_clf):
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        class_accuracy(digits_clf, torch.zeros(3, 1, 8, 8), [0, 1])
    with pytest.raises(ValueError, match="square images"):
        class_accuracy(digits_clf, torch.zeros(3, 8, 8), [0, 1, 2])
    with pytest.raises(ValueError, match="digits, fashion-mnist"):
        fit_reference_classifier("cifar10")
    with pytest.raises(ValueError, match="data_dir"):
        fit_reference_classifier("fashion-mnist")


def _need_fashion() -> Path:
    if not FASHION.exists():
        pytest.skip(f"real data folder {FASHION} is absent (see shared/data/README.md)")
    return FASHION


def test_fashion_subset_fast():
    clf = fit_reference_classifier("fashion-mnist", _need_fashion(), max_train=3000, max_heldout=2000)
    assert clf.train_size == 3000 and clf.heldout_size == 2000 and clf.native_size == 28
    assert clf.heldout_accuracy >= 0.78
    test = IDXDataset(FASHION, "test")
    x = test.data[:2000].unsqueeze(1).float() / 255
    assert class_accuracy(clf, x, test.targets[:2000]) == pytest.approx(clf.heldout_accuracy, abs=1e-6)
    # upscaled to 56×56 (area-downscaled back exactly: 2×2 blocks of equal values)
    big = torch.nn.functional.interpolate(x[:300], scale_factor=2, mode="nearest")
    assert torch.equal(clf.predict(big), clf.predict(x[:300]))
    noise = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert class_accuracy(clf, noise, torch.arange(300) % 10) <= 0.25


@pytest.mark.slow
def test_fashion_default_full_test_split():
    clf = fit_reference_classifier("fashion-mnist", _need_fashion())
    assert clf.train_size == 20_000 and clf.heldout_size == 10_000
    assert clf.heldout_accuracy >= 0.85
