"""The learning check of the sequence condition (issue 11), opt-in: ``uv run pytest -m slow``.
Same code as ``tools/experiments/seq_condition_check.py`` (which prints the numbers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "experiments" / "seq_condition_check.py"


@pytest.mark.slow
def test_joint_attention_learns_to_align_tokens_to_condition_symbols():
    spec = importlib.util.spec_from_file_location("seq_condition_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run()
    assert res["accuracy"] >= 0.95, res
    assert res["accuracy_without_condition"] < 0.5, res  # the condition, not the data prior, does it
