"""Shared fixtures of the video tests: the real clips in ../shared/data/video-action-clips."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

CLIPS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video-action-clips"
UCF_AVI = CLIPS / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi"
K400_DEMO = CLIPS / "kinetics400" / "arm_wrestling" / "demo.mp4"
K400_TEST = CLIPS / "kinetics400" / "unlabeled" / "test.mp4"


@pytest.fixture(scope="session")
def clips() -> SimpleNamespace:
    """The real clips (skips when the shared data folder is absent)."""
    if not UCF_AVI.is_file():
        pytest.skip(f"real clips missing at {CLIPS} (the shared data folder)")
    return SimpleNamespace(root=CLIPS, ucf=UCF_AVI, demo=K400_DEMO, test=K400_TEST)
