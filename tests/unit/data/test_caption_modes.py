"""Modes, template, trigger word and class: how a captioner's text meets the captions images already have."""

from __future__ import annotations

import pytest

from sdtune.data.caption_modes import CaptionSettings, apply_template, combine, lead_phrase, needs_caption
from sdtune.errors import DataError


def test_template():
    assert apply_template("a photo of sks person, {caption}", "smiling") == "a photo of sks person, smiling"
    assert apply_template("sks person, ", "smiling") == "sks person, smiling"
    assert apply_template("{caption}", " x ") == "x"


def test_fill_never_touches_an_existing_caption():
    assert not needs_caption("fill", ("mine",))
    assert combine("fill", ("mine",), "a dog", "sks person") == ("mine",)
    assert needs_caption("fill", ()) and combine("fill", (), "a dog", "sks person") == ("sks person, a dog",)
    for mode in ("replace", "prefix", "suffix"):
        assert needs_caption(mode, ("mine",))


def test_replace_prefix_suffix():
    assert combine("replace", ("mine", "other"), "a dog") == ("a dog",)
    assert combine("prefix", ("mine", "other"), "a dog") == ("a dog, mine", "a dog, other")
    assert combine("suffix", ("mine",), "a dog") == ("mine, a dog",)
    assert combine("prefix", (), "a dog") == combine("suffix", (), "a dog") == ("a dog",)


def test_the_trigger_and_class_stay_in_front_once():
    lead = lead_phrase("sks", "person")
    assert lead == "sks person" and lead_phrase("sks", None) == "sks" and lead_phrase(None, " ") == ""
    assert combine("prefix", ("sks person, at the beach",), "a man smiling", lead) == (
        "sks person, a man smiling, at the beach",)
    assert combine("suffix", ("sks person, at the beach",), "smiling", lead) == ("sks person, at the beach, smiling",)
    assert combine("replace", ("x",), "sks person, smiling", lead) == ("sks person, smiling",)
    assert combine("replace", ("x",), "sks personal photo", lead) == ("sks person, sks personal photo",)  # a word


def test_settings_refuse_an_unknown_mode():
    assert CaptionSettings("m").mode == "fill"
    with pytest.raises(DataError, match="caption mode 'overwrite' is not one of fill, replace, prefix, suffix"):
        CaptionSettings("m", mode="overwrite")
