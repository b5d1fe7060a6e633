"""Shared fixtures: the real default text encoder (loaded once per session: ~10 s on a CPU)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def text_encoder():
    from djepa.multimodal.text_encoder import TextEncoder

    return TextEncoder()
