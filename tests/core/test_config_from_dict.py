"""config_from_dict checks and converts JSON values by the field annotations."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from djepa.core.config import config_from_dict, config_to_dict


@dataclass(frozen=True)
class _Fixed:
    grid: tuple[int, int] = (6, 6)
    mixed: tuple[int, str, float] = (1, "a", 2.0)
    many: tuple[int, ...] = (1, 2, 3)


def test_fixed_length_tuples_come_back_as_values():
    cfg = _Fixed(grid=(3, 4), mixed=(7, "b", 0.5), many=(9,))
    back = config_from_dict(_Fixed, config_to_dict(cfg))
    assert back == cfg
    assert back.grid == (3, 4) and all(type(v) is int for v in back.grid)
    # JSON lists, and an int where a float is declared
    assert config_from_dict(_Fixed, {"mixed": [1, "x", 3]}).mixed == (1, "x", 3.0)


@pytest.mark.parametrize("value", [[1], [1, 2, 3], [1, "2"], "12"])
def test_fixed_length_tuple_of_the_wrong_length_or_type_names_the_field(value):
    with pytest.raises(ValueError, match="grid"):
        config_from_dict(_Fixed, {"grid": value})
