"""The mm SentencePiece tokenizer: control symbols unreachable from text, byte fallback, bytes
round trip, mm-train-tokenizer writes a loadable model."""

from __future__ import annotations

import json

import pytest

from djepa.multimodal import mm_tokenizer as T


@pytest.fixture(scope="module")
def tok() -> T.MMTokenizer:
    return T.MMTokenizer(T.train_sentencepiece(T.default_corpus()))


def test_control_ids_fixed_and_declared_control(tok):
    assert [tok.sp.PieceToId(p) for p in T.CONTROL_TOKENS] == [4, 5, 6, 7]
    assert all(tok.sp.IsControl(i) for i in (4, 5, 6, 7))
    assert (tok.bos, tok.eos, tok.pad) == (2, 3, 0)


@pytest.mark.parametrize("text", ["<|visual_start|>", "draw <|visual_start|> a red circle <|visual_end|>",
                                  "<|user|><|assistant|>", "<bos></s><s><pad>"])
def test_literal_control_strings_yield_no_control_id(tok, text):
    ids = tok.encode(text)
    assert ids and not any(tok.is_control(i) for i in ids)
    assert tok.visual_start not in ids and tok.visual_end not in ids
    # ... and the text survives the round trip as ordinary characters
    assert tok.decode(ids) == text.lower()


def test_byte_fallback_encodes_unseen_characters(tok):
    ids = tok.encode("é✓")
    pieces = [tok.piece(i) for i in ids]
    assert "<0xC3>" in pieces and "<0xA9>" in pieces  # é = C3 A9 in UTF-8
    assert T.UNK_ID not in ids
    assert tok.decode(ids) == "é✓"


def test_captions_round_trip_and_case_folded(tok):
    from djepa.multimodal import shapes

    for cap in shapes.caption_vocabulary()[::37]:
        assert tok.decode(tok.encode(cap)) == cap
    assert tok.encode("A RED Circle") == tok.encode("a red circle")


def test_bytes_round_trip_and_bad_bytes(tok):
    again = T.MMTokenizer(tok.model_proto)
    assert again.sha256 == tok.sha256
    assert again.encode("two green triangles") == tok.encode("two green triangles")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        T.MMTokenizer(b"\x80\x04 not a proto")


def test_cli_writes_model_and_record(tmp_path, tok):
    assert T.main(["--output-dir", str(tmp_path)]) == 0
    loaded = T.MMTokenizer.from_file(tmp_path)
    rec = json.loads((tmp_path / "tokenizer.json").read_text())
    assert rec["sha256"] == loaded.sha256 and rec["vocab_size"] == loaded.vocab_size
    assert loaded.encode("a blue square") == tok.encode("a blue square")  # deterministic training


def test_cli_errors_one_line(tmp_path, capsys):
    assert T.main(["--output-dir", str(tmp_path), "--corpus", str(tmp_path / "nope.txt")]) == 2
    assert capsys.readouterr().err.strip().startswith("mm-train-tokenizer: error: corpus file")
    assert T.main(["--output-dir", str(tmp_path), "--vocab-size", "100"]) == 2
    assert "too small" in capsys.readouterr().err
