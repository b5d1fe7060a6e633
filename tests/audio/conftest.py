from __future__ import annotations

from pathlib import Path

import pytest

LJ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ljspeech-sample" / "LJSpeech-1.1"


@pytest.fixture(scope="session")
def lj_dir() -> Path:
    if not (LJ / "metadata.csv").is_file():
        pytest.skip(f"{LJ} (the shared LJSpeech sample) is not present")
    return LJ
