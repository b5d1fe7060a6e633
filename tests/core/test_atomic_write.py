"""Atomic writes of djepa.core.pretrained: the file is the old one or the new one, never partial."""

from __future__ import annotations

import pytest

from djepa.core.pretrained import atomic_write_bytes, atomic_write_text


def test_bytes_and_text_round_trip(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"\x00\xffabc")
    assert p.read_bytes() == b"\x00\xffabc"
    atomic_write_text(p, "ünïcode\n")
    assert p.read_bytes() == "ünïcode\n".encode("utf-8")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(p, "not bytes")  # type: ignore[arg-type]
    assert p.read_bytes() == b"old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]
