"""Caption sources: sidecars, CSV/JSONL rows (refusing paths outside SRC), token counts."""

from __future__ import annotations

import json

import pytest
from hostile_corpus import pattern

from sdtune.data.captions import (
    count_tokens,
    estimate_tokens,
    normalize_caption,
    orphan_captions,
    read_captions_file,
    read_sidecar,
    safe_member,
)
from sdtune.models.presets import build_tiny_tokenizer


@pytest.fixture()
def src(tmp_path):
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "b c.png", "sub/d.jpg", "ü 🌞.png"):
        pattern(len(name)).save(folder / name)
    (tmp_path / "outside.png").write_bytes(b"")
    return folder


def test_normalize_caption_one_line_nfc_no_bom():
    assert normalize_caption("\ufeff  a photo\r\nof  cafe\u0301 🎉 \n") == "a photo of café 🎉"


def test_sidecars_empty_non_utf8_and_orphans(tmp_path):
    pattern(0).save(tmp_path / "a.png")
    pattern(1).save(tmp_path / "b.png")
    pattern(2).save(tmp_path / "c.png")
    (tmp_path / "a.txt").write_bytes("\ufeffa dog 🐶\n".encode())
    (tmp_path / "b.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")  # latin-1, not UTF-8
    (tmp_path / "gone.txt").write_text("an image that was deleted", encoding="utf-8")
    (tmp_path / "README.txt").write_text("about these photos", encoding="utf-8")  # not a caption: no warning
    problems = []
    assert read_sidecar(tmp_path / "a.png", problems) == "a dog 🐶"
    assert read_sidecar(tmp_path / "b.png", problems) is None
    assert read_sidecar(tmp_path / "c.png", problems) is None
    reasons = {p.where.rsplit("/", 1)[-1]: p.reason for p in problems}
    assert "empty" in reasons["b.txt"] and "not UTF-8" in reasons["c.txt"]
    orphans = orphan_captions(tmp_path, [tmp_path / n for n in ("a.png", "b.png", "c.png")])
    assert [p.where.rsplit("/", 1)[-1] for p in orphans] == ["gone.txt"]
    assert "without its image" in orphans[0].reason


@pytest.mark.parametrize("name", ["../../etc/passwd", "../outside.png", "sub/../../outside.png"])
def test_rows_escaping_src_are_refused(src, name):
    assert "escapes the source folder" in safe_member(src, name)


@pytest.mark.parametrize("name", ["/etc/passwd", "C:\\Windows\\win.ini", "\\\\server\\share\\x.png"])
def test_absolute_rows_are_refused(src, name):
    assert "absolute path" in safe_member(src, name)


def test_a_link_inside_is_its_listed_path_wherever_it_points(src, tmp_path):
    """The listed path counts, not the link's target (as Hugging Face datasets reads an imagefolder)."""
    (src / "link.png").symlink_to(tmp_path / "outside.png")
    assert safe_member(src, "link.png") == src.absolute() / "link.png"
    assert "escapes" in safe_member(src, "../outside.png")


def test_csv_with_header_keeps_extra_columns_and_reports_every_bad_row(src, tmp_path):
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text(
        "file_name,text,concept\n"
        "a.png,a photo of sks person,sks\n"
        '"b c.png","a cat, on a mat 🐱",pets\n'
        "../../etc/passwd,steal,x\n"
        "/etc/passwd,steal,x\n"
        "missing.jpg,gone,x\n"
        "a.png,listed twice,sks\n"
        "sub/d.jpg,too,many,columns\n",
        encoding="utf-8",
    )
    rows, problems = read_captions_file(csv_file, src)
    assert [(r.name, r.text, r.extra) for r in rows] == [
        ("a.png", "a photo of sks person", {"concept": "sks"}),
        ("b c.png", "a cat, on a mat 🐱", {"concept": "pets"}),
    ]
    by_line = {p.where.rsplit(":", 1)[-1]: (p.level, p.reason) for p in problems}
    assert by_line["4"][0] == "error" and "escapes" in by_line["4"][1]
    assert by_line["5"][0] == "error" and "absolute" in by_line["5"][1]
    assert by_line["6"][0] == "error" and "not found" in by_line["6"][1]
    assert by_line["7"][0] == "warning" and "more than once" in by_line["7"][1]
    assert by_line["8"][0] == "error" and "columns" in by_line["8"][1]
    assert all(str(csv_file) in p.where for p in problems)


def test_csv_without_header_rejoins_unquoted_commas(src, tmp_path):
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("ü 🌞.png,sunny, bright, warm\nsub/d.jpg\n", encoding="utf-8")
    rows, problems = read_captions_file(csv_file, src)
    assert not problems
    assert [(r.name, r.text) for r in rows] == [("ü 🌞.png", "sunny, bright, warm"), ("sub/d.jpg", None)]


def test_jsonl_rows_and_not_an_image(src, tmp_path):
    (src / "notes.txt").write_text("x", encoding="utf-8")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        "\n".join([json.dumps({"file": "a.png", "caption": "a"}), "{not json", json.dumps({"text": "no file"}),
                   json.dumps({"file_name": "notes.txt", "text": "t"}), json.dumps(["a.png"])]) + "\n",
        encoding="utf-8",
    )
    rows, problems = read_captions_file(jsonl, src)
    assert [(r.name, r.text) for r in rows] == [("a.png", "a")]
    by_line = {p.where.rsplit(":", 1)[-1]: p.reason for p in problems}
    assert len(problems) == 4
    assert "not valid JSON" in by_line["2"] and "file name" in by_line["3"] and "file name" in by_line["5"]
    assert "not an image" in by_line["4"]


def test_metadata_mode_only_accepts_file_name(src):
    meta = src / "metadata.jsonl"
    meta.write_text(json.dumps({"file": "a.png", "text": "x"}) + "\n", encoding="utf-8")
    rows, problems = read_captions_file(meta, src, metadata=True)
    assert rows == [] and "file_name" in problems[0].reason


def test_token_counts_exact_and_estimated():
    tokenizer = build_tiny_tokenizer()
    short = "a photo of sks person"
    assert count_tokens(short, tokenizer) == len(tokenizer(short).input_ids)
    assert count_tokens(short, tokenizer) <= 77
    long = " ".join(["photo"] * 100)
    assert count_tokens(long, tokenizer) == 102  # 'photo' is one merged token; plus start and end
    assert estimate_tokens(long) == 102
    assert estimate_tokens("a cat, on a mat!") == 9
