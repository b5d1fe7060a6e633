"""The moving-digits reference classifier: accurate on held-out real clips, and still accurate
when the real clips carry faint pixel noise (generated clips do; the first release's features
dropped to chance there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from djepa.video.classifier import ReferenceClassifier, accuracies, clip_features
from djepa.video.datasets import MovingDigits


@pytest.fixture(scope="module")
def fitted():
    train, test = MovingDigits("train", size=12), MovingDigits("test", size=12)  # the video-train default
    pick = np.random.default_rng(0).choice(len(train), 1500, replace=False)
    clf = ReferenceClassifier().fit([train[int(i)][0] for i in pick], [train.label_of(int(i)) for i in pick])
    ids = range(0, len(test), 5)  # 292 held-out clips of other digit images
    clips = torch.stack([test[i][0] for i in ids])
    return clf, clips, [test.label_of(i) for i in ids]


def test_held_out_real_clips(fitted):
    clf, clips, labels = fitted
    acc = accuracies(clf.predict(list(clips)), labels)
    assert acc["class_accuracy"] > 0.9 and acc["appearance_accuracy"] > 0.9 and acc["motion_accuracy"] > 0.9


def test_faint_noise_does_not_change_the_verdict(fitted):
    clf, clips, labels = fitted
    g = torch.Generator().manual_seed(1)
    noisy = (clips + 0.05 * torch.randn(clips.shape, generator=g)).clamp(0, 1)
    clean = clf.predict(list(clips))
    assert accuracies(clf.predict(list(noisy)), labels)["class_accuracy"] > 0.85
    assert (clf.predict(list(noisy)) == clean).mean() > 0.85


def test_features_see_motion_direction():
    d = MovingDigits("test", size=12)
    # one image, its four directions: the mean velocity (dy, dx) points the class's way (the
    # digit's centre of mass also drifts across when it leaves the frame, less than along)
    want = {0: (1, 1), 1: (1, -1), 2: (0, 1), 3: (0, -1)}  # (axis, sign)
    for i in range(4):
        clip, label, _ = d[i]
        vel = clip_features(clip)[64:66]
        axis, sign = want[label % 4]
        assert np.sign(vel[axis]) == sign and abs(vel[axis]) > abs(vel[1 - axis]), (label, vel)
