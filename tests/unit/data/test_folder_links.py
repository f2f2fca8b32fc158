"""Links in data folders: one rule (``sdtune.data.walk``) for the folder reader, check and build.

A curated set of links into a photo library is a dataset: the listed path (the link's own path in the folder)
is the image's name and must lie in the folder; links to files and folders are followed for reading; broken
links and loops are named, never dropped silently. Each test failed on the reader that resolved links.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtune.config import SubsetConfig
from sdtune.data.build import Source, build_dataset
from sdtune.data.check import check_folder
from sdtune.data.folders import list_images, read_folder
from sdtune.data.subsets import examples_of


def _photo(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _library(tmp_path: Path) -> Path:
    """A photo library outside the dataset: three photos and an album of two."""
    lib = tmp_path / "library"
    for i in range(3):
        _photo(lib / f"photo{i}.png", i)
    for i in range(2):
        _photo(lib / "album" / f"a{i}.png", 10 + i)
    return lib


def _linked(tmp_path: Path, *, metadata: bool) -> Path:
    """A dataset of links: absolute and relative file links, a linked sub-folder, a broken link, a real file."""
    lib = _library(tmp_path)
    ds = tmp_path / "dataset"
    ds.mkdir()
    (ds / "abs.png").symlink_to(lib / "photo0.png")  # absolute link
    (ds / "rel.png").symlink_to(Path("..") / "library" / "photo1.png")  # relative link
    (ds / "album").symlink_to(lib / "album", target_is_directory=True)  # a linked folder
    (ds / "gone.png").symlink_to(lib / "deleted.png")  # broken
    _photo(ds / "real.png", 99)
    captions = {"abs.png": "an absolute link", "rel.png": "a relative link", "album/a0.png": "album one",
                "album/a1.png": "album two", "real.png": "a real file"}
    if metadata:
        (ds / "metadata.jsonl").write_text("".join(json.dumps({"file_name": n, "text": t}) + "\n"
                                                   for n, t in captions.items()), encoding="utf-8")
    else:
        for name, text in captions.items():
            (ds / name).with_suffix(".txt").write_text(text, encoding="utf-8")
    return ds


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata.jsonl", "sidecars"])
def test_links_are_read_by_their_listed_path(tmp_path, metadata):
    ds = _linked(tmp_path, metadata=metadata)
    reading = read_folder(ds)
    assert {r.name: r.captions for r in reading.records} == {
        "abs.png": ("an absolute link",), "rel.png": ("a relative link",), "album/a0.png": ("album one",),
        "album/a1.png": ("album two",), "real.png": ("a real file",)}
    assert all(r.path == ds / r.name for r in reading.records)  # the listed path, not the target
    assert reading.errors == []
    # The broken link is named once, with its target and what to do; nothing else is reported.
    assert [(Path(p.where).name, p.level) for p in reading.problems] == [("gone.png", "warning")]
    assert "broken link" in reading.problems[0].reason and "deleted.png" in reading.problems[0].reason
    assert [p.relative_to(ds).as_posix() for p in list_images(ds)] == sorted(r.name for r in reading.records)


def test_check_and_training_examples_see_the_linked_images(tmp_path):
    ds = _linked(tmp_path, metadata=True)
    report = check_folder(ds)
    assert report.ok and report.images == 5, report.to_text()
    assert not any("escapes" in w or "not listed" in w for w in report.warnings), report.to_text()
    assert len(examples_of(SubsetConfig(path=ds))) == 5


def test_a_row_leading_out_of_the_folder_is_refused_by_name(tmp_path):
    ds = _linked(tmp_path, metadata=True)
    with (ds / "metadata.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"file_name": "../library/photo2.png", "text": "out"}) + "\n")
        handle.write(json.dumps({"file_name": "gone.png", "text": "broken"}) + "\n")
    reading = read_folder(ds)
    reasons = [p.reason for p in reading.errors]
    assert len(reasons) == 2, reading.problems
    assert "'../library/photo2.png' escapes the source folder" in reasons[0]
    assert "'gone.png' is a broken link" in reasons[1]
    assert not any(Path(p.where).name == "gone.png" for p in reading.problems)  # named once, by its row
    assert len(reading.records) == 5


def test_link_loops_are_named_and_not_followed(tmp_path):
    ds = tmp_path / "dataset"
    _photo(ds / "sub" / "a.png", 1)
    (ds / "sub" / "a.txt").write_text("a", encoding="utf-8")
    (ds / "sub" / "up").symlink_to(ds, target_is_directory=True)  # a loop through the dataset folder
    (ds / "x.png").symlink_to(ds / "y.png")
    (ds / "y.png").symlink_to(ds / "x.png")  # two links pointing at each other
    reading = read_folder(ds)
    assert [r.name for r in reading.records] == ["sub/a.png"]
    by_name = {Path(p.where).name: p.reason for p in reading.problems}
    assert "a loop, not followed" in by_name["up"]
    assert "circle of links" in by_name["x.png"] and "circle of links" in by_name["y.png"]


def test_a_sidecar_is_looked_up_next_to_the_link(tmp_path):
    lib = _library(tmp_path)
    (lib / "photo0.txt").write_text("the library's own caption", encoding="utf-8")
    ds = tmp_path / "dataset"
    ds.mkdir()
    (ds / "me.png").symlink_to(lib / "photo0.png")
    (ds / "me.txt").write_text("my caption", encoding="utf-8")
    assert [(r.name, r.captions) for r in read_folder(ds).records] == [("me.png", ("my caption",))]


def test_captions_file_rows_name_links(tmp_path):
    ds = _linked(tmp_path, metadata=False)
    rows = tmp_path / "captions.csv"
    rows.write_text("file_name,text\nabs.png,from the file\nalbum/a1.png,also from the file\n", encoding="utf-8")
    reading = read_folder(ds, captions_file=rows)
    captions = {r.name: r.captions[0] for r in reading.records}
    assert captions["abs.png"] == "from the file" and captions["album/a1.png"] == "also from the file"
    assert captions["rel.png"] == "a relative link"  # its sidecar fills in


def test_build_copies_the_targets_pixels_never_a_link(tmp_path):
    ds = _linked(tmp_path, metadata=True)
    out = tmp_path / "built"
    report = build_dataset([Source(ds)], out)
    assert report.written == 5 and report.skipped == 0, report.to_text()
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["file_name"] for r in rows) == ["abs.png", "album/a0.png", "album/a1.png", "real.png", "rel.png"]
    for name in ("abs.png", "rel.png", "album/a0.png"):
        assert not (out / name).is_symlink() and not os.path.islink(out / "album")
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(ds / name)))
    assert any("gone.png" in str(p) and "broken link" in p.reason for p in report.problems)
