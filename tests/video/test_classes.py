"""UCF101 class ids: classInd.txt (1-based, case-insensitive order) and class resolution."""

from __future__ import annotations

import pytest

from djepa.video.classes import read_class_ind, resolve_class, ucf_sorted

# Real UCF101 classInd.txt entries 33-38 and 44-47 (33 Haircut, 34 Hammering, 35 HammerThrow, ...,
# 46 JumpingJack, 47 JumpRope), renumbered 1..10 to form a complete file.
CLASS_IND = """1 Haircut
2 Hammering
3 HammerThrow
4 HandstandPushups
5 HandstandWalking
6 HeadMassage
7 JavelinThrow
8 JugglingBalls
9 JumpingJack
10 JumpRope
"""


def test_class_ind_keeps_file_order_and_stores_ids_zero_based(tmp_path):
    p = tmp_path / "classInd.txt"
    p.write_text(CLASS_IND)
    names = read_class_ind(p)
    assert names[1] == "Hammering" and names[2] == "HammerThrow"  # ids 2, 3 → 1, 2
    assert names[8] == "JumpingJack" and names[9] == "JumpRope"
    # the case-insensitive order reproduces the file; Python's sorted() swaps both pairs
    assert ucf_sorted(names) == names
    swapped = sorted(names)
    assert swapped.index("HammerThrow") < swapped.index("Hammering")
    assert swapped.index("JumpRope") < swapped.index("JumpingJack")


@pytest.mark.parametrize("text, msg", [("1 A\n3 B\n", "1..2"), ("1 A\n1 B\n", "duplicate"), ("x A\n", "expected")])
def test_class_ind_errors(tmp_path, text, msg):
    p = tmp_path / "classInd.txt"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        read_class_ind(p)


def test_resolve_class_by_index_or_name():
    names = ["0-right", "0-left", "ApplyEyeMakeup"]
    assert resolve_class("2", names) == 2
    assert resolve_class("0-left", names) == 1
    assert resolve_class("applyeyemakeup", names) == 2
    with pytest.raises(ValueError, match=r"valid 0\.\.2"):
        resolve_class("3", names)
    with pytest.raises(ValueError, match=r"index 0\.\.2"):
        resolve_class("Nope", names)
