from __future__ import annotations

from pathlib import Path

import pytest

LJ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ljspeech-sample" / "LJSpeech-1.1"


@pytest.fixture(scope="session")
def lj_dir() -> Path:
    if not (LJ / "metadata.csv").is_file():
        pytest.skip(f"{LJ} (the shared LJSpeech sample) is not present")
    return LJ


@pytest.fixture(autouse=True)
def one_thread():
    """Audio tests run single-threaded: on a shared 2-core machine two OpenMP threads per test
    process spin against each other (measured 15× slower); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
