"""A misspelt caption column or key is said, with the accepted name it is closest to, never silently dropped.

Every place the reader looks a caption up by name: a ``--captions`` CSV/JSONL, an imagefolder's
``metadata.jsonl``/``.csv``, and the caption files next to images (``.txt``/``.caption``). No caption column at
all but a near miss: an error (``dataset build`` stops; ``check`` says NOT OK and training stops). A near miss beside
real captions: a warning. Legitimate extra columns (``concept``, other features) are not flagged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_corpus import pattern

from sdtune.data.build import Source, build_dataset
from sdtune.data.captions import read_captions_file
from sdtune.data.check import check_folder
from sdtune.errors import DataError


def _images(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        pattern(i).save(folder / name)
    return folder


def _metadata(folder: Path, *rows: dict) -> None:
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _column_problems(problems) -> list[str]:
    return [f"{p.level}: {p.reason}" for p in problems if "caption" in p.reason and "not a caption" in p.reason]


def test_csv_column_typo_is_an_error_naming_the_closest_caption_column(tmp_path):
    src = _images(tmp_path / "src", "img0.png")
    captions = tmp_path / "c1.csv"
    captions.write_text("file,captoin\nimg0.png,hello\n", encoding="utf-8")
    rows, problems = read_captions_file(captions, src)
    assert rows[0].captions == ()
    assert _column_problems(problems) == ["error: column 'captoin' is not a caption column (did you mean caption?); "
                                          "no row has a caption (caption columns: text, caption, prompt)"]
    assert str(problems[0]).startswith(f"{captions}: column 'captoin'")


def test_build_stops_on_a_misspelt_caption_column_instead_of_copying_it_as_an_extra(tmp_path):
    src = _images(tmp_path / "src", "img0.png")
    (src / "img0.txt").write_text("the sidecar caption", encoding="utf-8")
    captions = tmp_path / "c1.csv"
    captions.write_text("file,captoin\nimg0.png,hello\n", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"column 'captoin' is not a caption column \(did you mean caption\?\)"):
        build_dataset([Source(src, captions_file=captions)], out)
    assert not (out / "metadata.jsonl").exists()


def test_metadata_jsonl_key_typo_fails_check(tmp_path):
    src = _images(tmp_path / "src", "img0.png")
    _metadata(src, {"file_name": "img0.png", "txt": "hello"})
    report = check_folder(src)
    assert not report.ok
    assert any("key 'txt' is not a caption key (did you mean text?)" in e for e in report.errors), report.errors
    assert report.counts["unknown caption column"] == 1
    # Training reads the folder with the same reader and stops on the same line, before any model loads.
    from sdtune.config import SubsetConfig
    from sdtune.data.subsets import examples_of

    with pytest.raises(DataError, match=r"key 'txt' is not a caption key \(did you mean text\?\)"):
        examples_of(SubsetConfig(path=src))


def test_a_near_miss_beside_real_captions_is_a_warning(tmp_path):
    src = _images(tmp_path / "src", "a.png", "b.png")
    _metadata(src, {"file_name": "a.png", "text": "a red circle"}, {"file_name": "b.png", "Text": "a blue square"})
    report = check_folder(src)
    assert report.ok and report.captioned == 1
    assert any("key 'Text' is not a caption key (did you mean text?); 1 row with it has no caption" in w
               for w in report.warnings), report.warnings
    csv_src = _images(tmp_path / "csv", "a.png")
    (csv_src / "metadata.csv").write_text("file_name,text,captions\na.png,one,two\n", encoding="utf-8")
    found = check_folder(csv_src)
    assert found.ok and any("column 'captions' is not a caption column (did you mean caption?)" in w
                            for w in found.warnings), found.warnings


def test_legitimate_extra_columns_are_not_flagged(tmp_path):
    src = _images(tmp_path / "src", "a.png", "b.png")
    _metadata(src, {"file_name": "a.png", "text": "x", "concept": "sks", "long_caption": "a long one", "width": 64},
              {"file_name": "b.png", "text": "y", "concept": "sks", "option": "z", "context": "w"})
    assert check_folder(src).warnings == []
    dreambooth = _images(tmp_path / "db", "a.png")
    _metadata(dreambooth, {"file_name": "a.png", "concept": "sks"})  # no captions at all: fine for DreamBooth
    assert check_folder(dreambooth).problems == []


def test_the_only_text_column_of_a_file_without_captions_is_named(tmp_path):
    src = _images(tmp_path / "src", "a.png")
    _metadata(src, {"file_name": "a.png", "description": "a red circle", "width": 64})
    report = check_folder(src)
    assert report.ok
    assert _column_problems(report.problems) == [
        "warning: key 'description' is not a caption key; no row has a caption (caption keys: text, caption, "
        "prompt): rename it to text if it holds the captions"]


def test_a_caption_file_with_a_misspelt_suffix_is_named(tmp_path):
    src = _images(tmp_path / "src", "a.png", "b.png")
    (src / "a.txt").write_text("a red circle", encoding="utf-8")
    (src / "b.text").write_text("a blue square", encoding="utf-8")
    report = check_folder(src)
    assert any("b.text: not read as a caption (did you mean b.txt?" in w for w in report.warnings), report.warnings
