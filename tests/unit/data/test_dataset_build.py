"""build_dataset: hostile folders in, a clean imagefolder out; SRC untouched; reruns and merges idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import BAD, make_corpus, pattern, tree_digest
from PIL import Image

from sdtune.data.build import Source, build_dataset
from sdtune.data.check import check_folder
from sdtune.data.folders import read_folder
from sdtune.errors import DataError


def _built_once(tmp_path: Path, images: int) -> tuple[Path, Path]:
    """``src/`` with ``images`` pattern PNGs, built once into ``out/`` captioned "a photo of sks person"."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for i in range(images):
        pattern(i).save(src / f"{i}.png")
    build_dataset([Source(src, caption="a photo of sks person")], out)
    return src, out


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _by_name(out: Path) -> dict[str, dict]:
    return {row["file_name"]: row for row in _rows(out)}


@pytest.fixture()
def built(tmp_path):
    src = make_corpus(tmp_path / "src")
    before = tree_digest(src)
    out = tmp_path / "out"
    report = build_dataset([Source(src)], out)
    return src, out, report, before


def test_hostile_corpus_each_case(built):
    src, out, report, _ = built
    errors = {Path(p.where).name: p.reason for p in report.problems if p.level == "error"}
    assert set(errors) == set(BAD)
    for name, reason in BAD.items():
        assert reason in errors[name] and errors[name].endswith("skipped")
    warnings = [str(p) for p in report.problems if p.level == "warning"]
    assert any("animated.gif: animated (3 frames)" in w for w in warnings)
    assert any("beach.jpg: exact duplicate of" in w for w in warnings)
    assert any("beach-small.jpg: near-duplicate of" in w for w in warnings)
    assert any("deleted photo.txt: caption file without its image" in w for w in warnings)
    rows = _by_name(out)
    assert set(rows) == {"alpha.png", "animated.png", "beach copy.png", "beach-small.jpg", "cmyk.jpg", "gray16.png",
                         "palette.png", "rotated.jpg", "sub/dog.png", "with space é ü.png"}
    assert report.written == 10 and report.duplicates_dropped == 1
    assert rows["with space é ü.png"]["text"] == "a cat 🐱 on a mat — ünïcode"
    assert rows["sub/dog.png"]["text"] == "a dog in the park"
    assert rows["beach copy.png"]["text"] == "a photo of a beach at sunset"  # the dropped copy's caption is kept
    assert "text" not in rows["gray16.png"]


def test_images_are_normalized(built):
    _, out, _, _ = built
    for name in _by_name(out):
        with Image.open(out / name) as img:
            assert img.mode == "RGB", name
            assert img.format == ("JPEG" if name.endswith(".jpg") else "PNG")
            assert 0x0112 not in img.getexif()  # orientation applied, camera metadata dropped
    assert Image.open(out / "rotated.jpg").size == (30, 60)
    alpha = Image.open(out / "alpha.png")
    assert alpha.getpixel((5, 5)) == (10, 20, 30) and alpha.getpixel((60, 5)) == (255, 255, 255)
    assert Image.open(out / "palette.png").getpixel((35, 5)) == (255, 255, 255)
    r, g, b = Image.open(out / "cmyk.jpg").getpixel((5, 5))
    assert b > 200 and r < 60
    gray = np.asarray(Image.open(out / "gray16.png"))[..., 0]
    assert gray.min() == 0 and gray.max() == 255


def test_src_is_never_modified(built):
    src, _, _, before = built
    assert tree_digest(src) == before


def test_output_round_trips_through_datasets_and_the_trainer_reader(built, tmp_path):
    import datasets

    _, out, _, _ = built
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 10 and set(ds.column_names) == {"image", "text"}
    texts = sorted(t for t in ds["text"] if t)
    assert texts == ["a cat 🐱 on a mat — ünïcode", "a dog in the park", "a photo of a beach at sunset"]
    assert all(img.mode == "RGB" for img in ds["image"])
    records = read_folder(out).records
    assert len(records) == 10 and all(r.path.is_file() for r in records)
    assert check_folder(out).ok


def test_rerun_is_idempotent_and_leaves_no_temporary_files(built):
    src, out, _, _ = built
    meta = (out / "metadata.jsonl").read_bytes()
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file() and p.suffix != ".jsonl"}
    build_dataset([Source(src)], out)
    assert (out / "metadata.jsonl").read_bytes() == meta
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*")
            if p.is_file() and p.suffix != ".jsonl"} == files
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_rebuild_removes_images_gone_from_src(tmp_path):
    src, out = _built_once(tmp_path, 3)
    (src / "1.png").unlink()
    build_dataset([Source(src, caption="a photo of sks person")], out)
    assert sorted(_by_name(out)) == ["0.png", "2.png"]
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "2.png", "metadata.jsonl"]
    assert {r["text"] for r in _rows(out)} == {"a photo of sks person"}


def test_every_metadata_column_is_kept_as_the_file_has_it(tmp_path):
    # Lists and objects in other columns were dropped silently while scalar columns were kept.
    src = tmp_path / "src"
    src.mkdir()
    pattern(0).save(src / "a.png")
    row = {"file_name": "a.png", "text": "a photo", "tags": ["x", "y"], "meta": {"k": 1}, "score": 0.5, "ok": None}
    (src / "metadata.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    build_dataset([Source(src)], tmp_path / "out")
    (kept,) = _rows(tmp_path / "out")
    assert {k: kept[k] for k in ("tags", "meta", "score", "ok")} == {"tags": ["x", "y"], "meta": {"k": 1},
                                                                      "score": 0.5, "ok": None}


def test_strict_stops_on_the_first_problem_and_leaves_out_untouched(tmp_path):
    src = make_corpus(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"bomb\.png: .*decompression bomb.*--strict"):
        build_dataset([Source(src)], out, strict=True)
    assert not out.exists() or list(out.iterdir()) == []


def test_captions_file_rows_outside_src_are_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.png", "b.png"):
        pattern(ord(name[0])).save(src / name)
    secret = tmp_path / "secret.png"
    pattern(99).save(secret)
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text(f"file,caption\na.png,first\n../secret.png,stolen\n{secret},stolen\nmissing.png,x\n",
                        encoding="utf-8")
    out = tmp_path / "out"
    report = build_dataset([Source(src, captions_file=csv_file, caption="fallback")], out)
    assert _by_name(out) == {"a.png": {"file_name": "a.png", "text": "first"},
                             "b.png": {"file_name": "b.png", "text": "fallback"}}
    reasons = [p.reason for p in report.problems if p.level == "error"]
    assert any("escapes" in r for r in reasons) and any("absolute" in r for r in reasons)
    assert any("'missing.png' not found" in r for r in reasons)
    with pytest.raises(DataError, match="escapes the source folder"):
        build_dataset([Source(src, captions_file=csv_file)], tmp_path / "out2", strict=True)


def test_merge_concepts_one_command_at_a_time(tmp_path):
    thumbs = tmp_path / "thumbs"
    me = tmp_path / "me"
    thumbs.mkdir()
    me.mkdir()
    for i in range(2):
        pattern(i).save(thumbs / f"t{i}.png")
        (thumbs / f"t{i}.txt").write_text(f"a person giving a thumbs up {i}", encoding="utf-8")
        pattern(10 + i).save(me / f"IMG_{i}.jpg")
    out = tmp_path / "mix"
    build_dataset([Source(thumbs, concept="thumbsup")], out)
    build_dataset([Source(me, concept="sks", caption="a photo of sks person")], out)
    first = (out / "metadata.jsonl").read_bytes()
    build_dataset([Source(me, concept="sks", caption="a photo of sks person")], out)  # rerun: same rows
    assert (out / "metadata.jsonl").read_bytes() == first
    rows = _rows(out)
    assert [(r["concept"], r["file_name"]) for r in rows] == [
        ("sks", "sks/IMG_0.jpg"), ("sks", "sks/IMG_1.jpg"), ("thumbsup", "thumbsup/t0.png"),
        ("thumbsup", "thumbsup/t1.png")]
    assert rows[0]["text"] == "a photo of sks person"
    (me / "IMG_1.jpg").unlink()
    build_dataset([Source(me, concept="sks", caption="a photo of sks person")], out)
    assert [r["file_name"] for r in _rows(out)] == ["sks/IMG_0.jpg", "thumbsup/t0.png", "thumbsup/t1.png"]
    assert not (out / "sks" / "IMG_1.jpg").exists()


def test_several_sources_in_one_build_do_not_collide(tmp_path):
    a, b = tmp_path / "a" / "photos", tmp_path / "b" / "pics"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    pattern(1).save(a / "x.png")
    pattern(2).save(b / "x.png")
    pattern(3).save(a / "y.png")
    pattern(4).save(a / "y.gif")  # both become y.png
    out = tmp_path / "out"
    build_dataset([Source(a), Source(b)], out)
    names = sorted(_by_name(out))
    assert len(names) == 4 and names[0] == "photos/x.png" and names[3] == "pics/x.png"
    assert "photos/y.png" in names and any(n.startswith("photos/y-") and n.endswith(".png") for n in names)


def test_max_size_and_jpeg_stays_jpeg(tmp_path):
    from hostile_corpus import jpeg_bytes

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.jpg").write_bytes(jpeg_bytes(pattern(0, (1200, 900))))
    pattern(1, (300, 600)).save(src / "tall.png")
    out = tmp_path / "out"
    build_dataset([Source(src)], out, max_size=256)
    assert Image.open(out / "big.jpg").size == (256, 192)
    assert Image.open(out / "tall.png").size == (128, 256)


def test_refuses_dangerous_out_folders(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pattern(0).save(src / "a.png")
    with pytest.raises(DataError, match="overlap"):
        build_dataset([Source(src)], src / "dataset")
    with pytest.raises(DataError, match="overlap"):
        build_dataset([Source(src)], tmp_path)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.docx").write_bytes(b"...")
    with pytest.raises(DataError, match="not a dataset"):
        build_dataset([Source(src)], precious)
    assert (precious / "thesis.docx").read_bytes() == b"..."
    with pytest.raises(DataError, match="concept"):
        build_dataset([Source(src, concept="../x")], tmp_path / "o")


def test_adding_a_concept_to_a_dataset_built_without_concepts_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pattern(0).save(src / "a.png")
    out = tmp_path / "out"
    build_dataset([Source(src)], out)
    with pytest.raises(DataError, match="built without concepts"):
        build_dataset([Source(src, concept="sks")], out)


def test_no_usable_image_is_an_error_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"(?s)no usable images.*a\.jpg: empty file"):
        build_dataset([Source(src)], out)
    assert not (out / "metadata.jsonl").exists()
    with pytest.raises(DataError, match="no images found"):
        build_dataset([Source(tmp_path / "out")], tmp_path / "out3")


def test_a_second_build_into_the_same_out_is_refused_while_one_runs(tmp_path):
    """Two concurrent builds would each replace metadata.jsonl with their own rows: the second one stops."""
    fcntl = pytest.importorskip("fcntl")
    src = tmp_path / "src"
    src.mkdir()
    pattern(0).save(src / "0.png")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".sdtune-build.lock", "w") as held:  # what a running build holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(DataError, match="another `sdtune dataset build` is writing"):
            build_dataset([Source(src, caption="a photo of sks person")], out)
        assert not (out / "metadata.jsonl").exists()
    build_dataset([Source(src, caption="a photo of sks person")], out)  # released: builds, leaves no lock file
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "metadata.jsonl"]


def test_a_rebuild_that_replaces_captions_says_so_and_keeps_the_previous_file(tmp_path):
    """Found by a newcomer: `dataset build photos/me data/me` again, without --caption, silently replaced the four
    "a photo of sks person" captions of data/me with none ("rerunning into the same OUT is safe")."""
    src, out = _built_once(tmp_path, 2)
    before = (out / "metadata.jsonl").read_text()
    again = build_dataset([Source(src, caption="a photo of sks person")], out)  # the same: nothing said or kept
    assert not [p for p in again.problems if "other captions" in p.reason]
    assert not (out / ".metadata.jsonl.previous").exists()
    report = build_dataset([Source(src)], out)
    said = [p.reason for p in report.problems if "other captions" in p.reason]
    assert said and said[0].startswith("2 images had other captions"), report.problems
    assert (out / ".metadata.jsonl.previous").read_text() == before
    assert sorted(_by_name(out)) == ["0.png", "1.png"]  # the hidden copy is never read as data
