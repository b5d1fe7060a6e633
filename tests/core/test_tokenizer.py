"""The core tokenizer protocol and registry (issue 11, item 8b), with a 1-D tokenizer the way
audio or video would write one: no image code involved."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest
import torch

from djepa.core.tokenizer import (Tokenizer, register_tokenizer, registered_kinds, tokenizer_class,
                                  tokenizer_from_config)


@register_tokenizer
class FrameTokenizer:
    """Waveforms ``[B, T]`` → frames of ``hop`` samples: tokens ``[B, T / hop, hop]``, grid ``(T/hop,)``."""

    kind: ClassVar[str] = "test-frames"

    def __init__(self, length: int, hop: int) -> None:
        if length % hop:
            raise ValueError(f"hop {hop} does not divide length {length}")
        self.length, self.hop = length, hop

    @property
    def grid(self) -> tuple[int, ...]:
        return (self.length // self.hop,)

    @property
    def token_dim(self) -> int:
        return self.hop

    @property
    def value_range(self) -> tuple[float, float]:
        return (-1.0, 1.0)

    def encode(self, data):
        return data.reshape(data.shape[0], *self.grid, self.hop)

    def decode(self, tokens):
        return tokens.reshape(tokens.shape[0], self.length)

    def to_config(self):
        return dict(kind=self.kind, length=self.length, hop=self.hop, value_range=list(self.value_range))

    @classmethod
    def from_config(cls, config):
        return cls(int(config["length"]), int(config["hop"]))


def test_a_registered_tokenizer_round_trips_data_and_json():
    tok = FrameTokenizer(12, 3)
    assert isinstance(tok, Tokenizer)
    x = torch.linspace(-1, 1, 24).reshape(2, 12)
    tokens = tok.encode(x)
    assert tokens.shape == (2, 4, 3) and torch.equal(tokens[1, 2], x[1, 6:9])  # row-major frames
    assert torch.equal(tok.decode(tokens), x)
    record = json.loads(json.dumps(dict(tok.to_config(), note="run meta is ignored")))
    again = tokenizer_from_config(record)
    assert type(again) is FrameTokenizer and (again.length, again.hop) == (12, 3)
    assert again.to_config() == tok.to_config()
    assert tokenizer_class("test-frames") is FrameTokenizer and "test-frames" in registered_kinds()


def test_image_kinds_come_from_installed_entry_points():
    # no djepa.image import in this test: the registry finds the installed entry points
    cls = tokenizer_class("pixel")
    assert (cls.__module__, cls.__name__) == ("djepa.image.tokenizer", "PixelTokenizer")
    assert {"pixel", "vae"} <= set(registered_kinds())


@pytest.mark.parametrize("config, message", [
    (["kind", "pixel"], "must be a JSON object"),
    ({"length": 12}, "no tokenizer 'kind'"),
    ({"kind": "os.system"}, "unknown tokenizer kind 'os.system'; known kinds: ["),
    ({"kind": "test-frames", "length": 12}, "lacks the field 'hop'"),
    ({"kind": "test-frames", "length": 12, "hop": 5}, "hop 5 does not divide length 12"),
    ({"kind": "test-frames", "length": 12, "hop": 3, "value_range": [0, 1]},
     "disagrees with the recorded 'value_range'"),
])
def test_bad_configs_are_refused_with_one_line(config, message):
    with pytest.raises(ValueError, match="^x.json: ") as e:
        tokenizer_from_config(config, source="x.json")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_registering_a_kind_twice_or_without_a_kind_is_refused():
    class Other(FrameTokenizer):
        pass

    with pytest.raises(TypeError, match="already registered"):
        register_tokenizer(Other)

    class NoKind:
        pass

    with pytest.raises(TypeError, match="needs a class attribute kind"):
        register_tokenizer(NoKind)
