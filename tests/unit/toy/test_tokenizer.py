"""The toy tokenizer: standard CLIP files that transformers loads, one token per world word."""

from __future__ import annotations

from pathlib import Path

from sdtune.toy.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer
from sdtune.toy.world import vocabulary_corpus


def test_round_trip_through_clip_tokenizer(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    folder = write_tokenizer(tmp_path / "tok")
    tok = CLIPTokenizer.from_pretrained(folder)
    assert tok.model_max_length == MAX_LENGTH
    text = "a photo of a red and yellow checkered arrow on a noisy background"
    ids = tok(text).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert ids == load_tokenizer(folder)(text).input_ids
    assert len(ids) == len(text.split()) + 2  # every word one token, plus start and end


def test_every_world_word_is_one_token_and_unknown_words_still_encode(tmp_path: Path) -> None:
    tok = load_tokenizer(write_tokenizer(tmp_path / "tok"))
    for word in vocabulary_corpus():
        assert len(tok(word).input_ids) == 3, word
    ids = tok("a zebra").input_ids
    assert len(ids) > 4 and tok.decode(ids, skip_special_tokens=True) == "a zebra"


def test_deterministic(tmp_path: Path) -> None:
    a = write_tokenizer(tmp_path / "a")
    b = write_tokenizer(tmp_path / "b")
    assert (a / "vocab.json").read_bytes() == (b / "vocab.json").read_bytes()
    assert (a / "merges.txt").read_bytes() == (b / "merges.txt").read_bytes()
