"""check, build and training agree on a raw folder: the image count, what "the same picture" is, every caption.

check's count is what training reads (duplicates included, reported apart); an exact duplicate is the same
decoded pixels for check and build alike (a .tiff/.bmp copy of a PNG too); build merges a copy into the image it
copies and keeps the copy's different caption as an alternative, never dropping it.
"""

from __future__ import annotations

import json
from pathlib import Path

from hostile_corpus import jpeg_bytes, pattern

from sdtune.config import SubsetConfig
from sdtune.data.build import Source, build_dataset
from sdtune.data.check import check_folder
from sdtune.data.subsets import examples_of


def _raw_folder(root: Path) -> Path:
    root.mkdir()
    for i in range(3):
        pattern(i).save(root / f"{i}.png")
    (root / "0 copy.png").write_bytes((root / "0.png").read_bytes())  # byte copy
    pattern(1).save(root / "1.tiff")  # same pixels, other formats
    pattern(1).save(root / "1.bmp")
    photo = jpeg_bytes(pattern(5))
    (root / "y.JPG").write_bytes(photo)
    (root / "z.JPEG").write_bytes(photo)
    (root / "y.txt").write_text("lower jpg", encoding="utf-8")
    (root / "z.txt").write_text("upper jpeg", encoding="utf-8")
    return root


def _copies(problems, kind_words: str) -> set[str]:
    return {Path(p.where).name for p in problems if p.level == "warning" and p.reason.startswith(kind_words)}


def test_check_counts_what_training_reads_and_build_merges_by_the_same_rule(tmp_path):
    src = _raw_folder(tmp_path / "src")
    report = check_folder(src)
    trained = examples_of(SubsetConfig(path=src, prompt="a photo of sks dog"))
    assert report.images == len(trained) == 8
    assert sum(report.resolutions.values()) == report.images
    assert report.to_text().splitlines()[0].startswith(f"{src}: 8 images")
    checked = _copies(report.problems, "exact duplicate of")
    assert checked == {"0.png", "1.png", "1.tiff", "z.JPEG"}  # each the copy of the first of its group
    assert not _copies(report.problems, "near-duplicate of")  # the tiff/bmp copies are exact, not near
    assert "with both captions" in next(p.reason for p in report.problems if p.where.endswith("z.JPEG"))

    out = tmp_path / "out"
    built = build_dataset([Source(src)], out)
    assert _copies(built.problems, "exact duplicate of") == checked
    assert built.written == 4 and built.duplicates_dropped == 4 and built.captions_merged == 1
    rows = {r["file_name"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    assert rows["y.jpg"]["text"] == ["lower jpg", "upper jpeg"]  # z.JPEG's caption kept as an alternative
    assert "merged 4 exact duplicates" in built.to_text() and "upper jpeg" in built.to_text()
    assert check_folder(out).images == 4


def test_many_warnings_of_one_kind_are_summarized(tmp_path):
    for i in range(30):
        pattern(i, (16, 16)).save(tmp_path / f"{i:02d}.png")
    text = check_folder(tmp_path, resolution=64).to_text()
    small = [line for line in text.splitlines() if "smaller than the training resolution" in line]
    assert len(small) == 4 and "... and 27 more images smaller than the training resolution" in small[-1]


def test_a_fallback_caption_is_not_added_to_a_duplicate_that_has_its_own(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        pattern(i).save(src / f"{i}.png")
    for copy in ("4.png", "5.png"):  # uncaptioned exact copies of the captioned 0.png
        (src / copy).write_bytes((src / "0.png").read_bytes())
    (src / "0.txt").write_text("a red circle", encoding="utf-8")
    (src / "6 copy.png").write_bytes((src / "1.png").read_bytes())  # a captioned copy of the uncaptioned 1.png
    (src / "6 copy.txt").write_text("a blue square", encoding="utf-8")
    out = tmp_path / "out"
    report = build_dataset([Source(src, caption="a thing")], out)
    rows = {r["file_name"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    assert rows["0.png"]["text"] == "a red circle"  # not ["a red circle", "a thing"]
    assert rows["1.png"]["text"] == "a blue square"  # the copy's own caption, not also the fallback
    assert rows["2.png"]["text"] == "a thing" and report.duplicates_dropped == 3
