"""Reference classifiers for the class-accuracy quality check (issue "image-train /
image-sample", quality bar).

A classifier fitted only on *real* images labels generated images; the share labelled as the
class that was asked for is the class accuracy. Its accuracy on held-out real images is
reported next to it for calibration.

* ``"digits"``: scikit-learn ``SVC`` (RBF kernel, ``gamma=0.001``, ``C=1``) on the raw 8×8
  ``load_digits`` features (integers 0..16, 64-d), fitted on the deterministic stratified
  train split of :func:`djepa.image.datasets.digits_split_indices` (1,347 images) and scored on
  its 450-image test split (≈ 99 %).
* ``"fashion-mnist"``: ``PCA(50)`` → ``SVC`` (RBF, ``gamma="scale"``, ``C=10``) on pixel values
  in ``[0, 1]`` (784-d), fitted on a seeded random subset of the real 60k train split
  (``max_train``, default 20,000: ≈ 15 s on 2 CPU cores) and scored on the real 10k test split
  (≈ 87 %; the whole train split gives a little more for ~6× the time).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from djepa.image.datasets import resize_images

__all__ = ["ReferenceClassifier", "class_accuracy", "fit_reference_classifier"]


@dataclass
class ReferenceClassifier:
    """A fitted reference classifier plus what it needs to read images.

    Attributes:
        name: ``"digits"`` or ``"fashion-mnist"``.
        native_size: side of the images it was fitted on (8 or 28).
        input_scale: pixel value ``[0, 1]`` → feature scale (16 for digits: ``load_digits``
            values are 0..16; 1 for Fashion-MNIST).
        model: the fitted scikit-learn estimator (``predict(X [B, native_size²])``).
        heldout_accuracy: accuracy on held-out real images (digits test split / Fashion-MNIST
            test split), in ``[0, 1]``.
        heldout_size: number of held-out images scored.
        train_size: number of real images it was fitted on.
    """

    name: str
    native_size: int
    input_scale: float
    model: Any = field(repr=False)
    heldout_accuracy: float = float("nan")
    heldout_size: int = 0
    train_size: int = 0

    def features(self, images: Tensor) -> np.ndarray:
        """Images → the classifier's feature matrix.

        Args:
            images: ``[B, C, H, W]`` float (any float dtype/device) with pixel values in
                ``[0, 1]`` (0 = background / black); values outside are clamped. ``C = 3`` is
                averaged to gray. Square images of another size are resized to
                ``native_size``: ``"area"`` averaging when larger (the inverse of integer
                upscaling up to interpolation blur), bilinear when smaller.

        Returns:
            ``[B, native_size²]`` float64 numpy array, scaled by ``input_scale``.

        Raises:
            ValueError: not a 4-d ``[B, C, H, W]`` tensor with ``C`` in (1, 3) and ``H = W``.
        """
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
            raise ValueError(f"expected square images [B, 1|3, H, H], got {list(images.shape)}")
        x = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0)
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        size = x.shape[-1]
        if size != self.native_size:
            mode = "area" if size > self.native_size else "bilinear"
            x = resize_images(x, self.native_size, mode)
        return (x.reshape(len(x), -1) * self.input_scale).double().numpy()

    def predict(self, images: Tensor) -> Tensor:
        """Predicted class per image: ``[B]`` ``torch.long`` (see :meth:`features` for input)."""
        if len(images) == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(np.asarray(self.model.predict(self.features(images))).astype(np.int64))


def class_accuracy(clf: ReferenceClassifier, images: Tensor, labels: Tensor | list[int]) -> float:
    """Share of ``images`` that ``clf`` labels as ``labels``.

    Args:
        clf: from :func:`fit_reference_classifier`.
        images: ``[B, C, H, W]`` float in ``[0, 1]`` (see :meth:`ReferenceClassifier.features`:
            pass decoded images, not tokens, and not the raw 0..16 digit values).
        labels: ``[B]`` int class indices (the classes that were asked for).

    Returns:
        Accuracy in ``[0, 1]`` (a Python float).

    Raises:
        ValueError: ``B`` differs between images and labels, or ``B = 0``.
    """
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("class_accuracy needs at least one image")
    return float((clf.predict(images) == labels).float().mean())


def fit_reference_classifier(
    dataset: str = "digits",
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    max_train: int | None = 20_000,
    max_heldout: int | None = None,
) -> ReferenceClassifier:
    """Fit the reference classifier on real images and score it on held-out real images.

    Args:
        dataset: ``"digits"`` or ``"fashion-mnist"``.
        data_dir: Fashion-MNIST only: folder with the IDX files (``train-*`` and ``t10k-*``,
            e.g. ``../shared/data/fashion-mnist``).
        seed: seed of the digits split / of the Fashion-MNIST train subset and PCA.
        max_train: Fashion-MNIST only: size of the seeded random subset of the 60k train split
            to fit on (``None`` = all 60k, much slower). Ignored by digits.
        max_heldout: score on only the first ``max_heldout`` held-out images (``None`` = all).

    Returns:
        A :class:`ReferenceClassifier` with ``heldout_accuracy`` filled in.

    Raises:
        ValueError: unknown ``dataset``; ``data_dir`` missing for Fashion-MNIST.
        FileNotFoundError / ValueError: from :class:`djepa.image.datasets.IDXDataset`.
    """
    from sklearn.svm import SVC

    if dataset == "digits":
        from sklearn.datasets import load_digits

        from djepa.image.datasets import digits_split_indices

        digits = load_digits()
        x = digits.images.reshape(len(digits.images), -1).astype(np.float64)  # 0..16
        y = digits.target
        tr = digits_split_indices("train", seed=seed)
        te = digits_split_indices("test", seed=seed)[:max_heldout]
        model = SVC(kernel="rbf", gamma=0.001, C=1.0).fit(x[tr], y[tr])
        acc = float((model.predict(x[te]) == y[te]).mean())
        return ReferenceClassifier("digits", 8, 16.0, model, acc, len(te), len(tr))

    if dataset == "fashion-mnist":
        from sklearn.decomposition import PCA
        from sklearn.pipeline import make_pipeline

        from djepa.image.datasets import IDXDataset

        if data_dir is None:
            raise ValueError("the fashion-mnist reference classifier needs data_dir (the IDX folder)")
        train = IDXDataset(data_dir, "train")
        test = IDXDataset(data_dir, "test")
        x = train.data.reshape(len(train), -1).numpy()  # uint8 [60000, 784]
        y = train.targets.numpy()
        if max_train is not None and max_train < len(y):
            sub = np.sort(np.random.default_rng(seed).permutation(len(y))[:max_train])
            x, y = x[sub], y[sub]
        x = x.astype(np.float64) / 255.0
        model = make_pipeline(PCA(50, random_state=seed), SVC(kernel="rbf", gamma="scale", C=10.0))
        model.fit(x, y)
        clf = ReferenceClassifier("fashion-mnist", 28, 1.0, model, train_size=len(y))
        xt = test.data[:max_heldout].unsqueeze(1).float() / 255.0
        yt = test.targets[:max_heldout]
        clf.heldout_accuracy = class_accuracy(clf, xt, yt)
        clf.heldout_size = len(yt)
        return clf

    raise ValueError(f"unknown reference classifier {dataset!r}; known: digits, fashion-mnist")
