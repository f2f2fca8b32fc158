"""check_folder: what would make training fail (errors) or quietly worse (warnings), without raising."""

from __future__ import annotations

import json

from hostile_corpus import BAD, make_corpus, pattern

from sdtune.data.check import check_folder
from sdtune.models.presets import build_tiny_tokenizer


def _where(items: list[str], needle: str) -> list[str]:
    return [line for line in items if needle in line]


def test_hostile_sidecar_folder(tmp_path):
    src = make_corpus(tmp_path / "src")
    report = check_folder(src, resolution=48)
    assert not report.ok
    for name, reason in BAD.items():
        lines = _where(report.errors, f"{name}:")
        assert len(lines) == 1 and reason in lines[0], (name, report.errors)
    assert len(report.errors) == len(BAD)
    assert _where(report.warnings, "deleted photo.txt: caption file without its image")
    assert _where(report.warnings, "animated.gif: animated (3 frames)")
    assert _where(report.warnings, "cmyk.jpg: 40x30 is smaller than the training resolution 48")
    assert _where(report.warnings, "rotated.jpg: 30x60 is smaller")  # EXIF orientation applied to the size
    assert _where(report.warnings, "beach-small.jpg: near-duplicate of")
    assert _where(report.warnings, "have no caption")
    assert report.images == 11 and report.captioned == 3
    assert sum(report.resolutions.values()) == 11


def test_require_captions_makes_missing_captions_errors(tmp_path):
    for i in range(3):
        pattern(i).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("a caption", encoding="utf-8")
    (tmp_path / "1.txt").write_text("", encoding="utf-8")
    relaxed = check_folder(tmp_path)
    assert relaxed.ok and _where(relaxed.warnings, "2 of 3 images have no caption")
    strict = check_folder(tmp_path, require_captions=True)
    assert len(strict.errors) == 2
    assert _where(strict.errors, "1.png: no caption") and _where(strict.errors, "2.png: no caption")
    assert _where(strict.warnings, "1.txt: caption file is empty")


def test_dreambooth_folder_without_any_caption_is_fine(tmp_path):
    for i in range(2):
        pattern(i).save(tmp_path / f"{i}.jpg")
    report = check_folder(tmp_path, resolution=32)
    assert report.ok and report.warnings == []


def test_metadata_rows_missing_files_unlisted_images_and_escapes(tmp_path):
    for name in ("a.png", "b.png", "extra.png"):
        pattern(len(name) + ord(name[0])).save(tmp_path / name)
    rows = [{"file_name": "a.png", "text": "x"}, {"file_name": "b.png", "text": "y"},
            {"file_name": "gone.png", "text": "z"}, {"file_name": "../../etc/passwd", "text": "w"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    report = check_folder(tmp_path)
    assert report.layout == "metadata.jsonl" and report.images == 2
    assert _where(report.errors, ":3: 'gone.png' not found")
    assert _where(report.errors, ":4: path '../../etc/passwd' escapes")
    assert _where(report.warnings, "extra.png: not listed in metadata.jsonl")


def test_long_captions_estimated_or_counted(tmp_path):
    pattern(0).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(" ".join(["photo"] * 80), encoding="utf-8")
    pattern(1).save(tmp_path / "b.png")
    (tmp_path / "b.txt").write_text("a photo of sks person", encoding="utf-8")
    estimated = check_folder(tmp_path)
    assert len(estimated.warnings) == 1
    assert "a.png: caption is 82 tokens (estimated without the model's tokenizer)" in estimated.warnings[0]
    exact = check_folder(tmp_path, tokenizer=build_tiny_tokenizer())
    assert exact.token_count == "tokenizer" and "caption is 82 tokens;" in exact.warnings[0]


def test_empty_and_missing_folders(tmp_path):
    empty = check_folder(tmp_path)
    assert not empty.ok and _where(empty.errors, "no readable images")
    missing = check_folder(tmp_path / "nope")
    assert missing.errors == [f"{tmp_path / 'nope'}: does not exist or is not a folder; check the path"]


def test_reports_render_for_humans_and_scripts(tmp_path):
    src = make_corpus(tmp_path / "src")
    report = check_folder(src, resolution=48)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["images"] == 11 and len(data["errors"]) == len(BAD)
    assert data["resolutions"] == {"<256": 11} and data["token_count"] == "estimate"
    text = report.to_text()
    assert "11 images" in text and "<256" in text and "NOT OK" in text and "bomb.png" in text


def test_check_is_fast_on_many_photos(tmp_path):
    import time

    from hostile_corpus import jpeg_bytes

    for i in range(40):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(pattern(i, (1600, 1200))))
    start = time.perf_counter()
    report = check_folder(tmp_path, resolution=512)
    assert report.ok and report.images == 40
    assert time.perf_counter() - start < 10  # 1/8-scale JPEG decoding: ~0.05 s per 2 MP photo on a slow CPU


def test_caption_length_uses_the_models_own_tokenizer_limit(tmp_path, capsys):
    from sdtune.config import config_from_dict
    from sdtune.data.captions import load_tokenizer
    from sdtune.data.check_before_train import check_training_data

    pattern(0).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(" ".join(["photo"] * 40), encoding="utf-8")  # 42 tokens: over 32, under 77
    toy = load_tokenizer("toy")
    assert toy.model_max_length == 32
    report = check_folder(tmp_path, tokenizer=toy)
    assert report.token_limit == 32 and _where(report.warnings, "the text encoder reads 32 (this model's tokenizer)")
    assert check_folder(tmp_path).warnings == []  # 42 < 77: without the model, only CLIP's limit can be assumed
    (tmp_path / "a.txt").write_text(" ".join(["photo"] * 80), encoding="utf-8")
    assert "the limit assumed is CLIP's 77 (an estimate" in check_folder(tmp_path).warnings[0]
    # `sdtune train` checks with the run's model: the toy's 32 tokens, for captions and for a fixed prompt.
    (tmp_path / "a.txt").write_text(" ".join(["photo"] * 40), encoding="utf-8")
    long_prompt = "a photo of sks " + " ".join(["person"] * 30)
    for data in ({"train_dir": str(tmp_path)}, {"instance_dir": str(tmp_path), "instance_prompt": long_prompt}):
        check_training_data(config_from_dict({"model": {"base": "toy"}, "data": data}))
        printed = capsys.readouterr().out
        assert "the text encoder reads 32 (this model's tokenizer)" in printed, printed


def test_check_reports_the_aspect_ratio_buckets_training_uses(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from sdtune.cli import app

    for i, size in enumerate([(600, 800), (660, 880), (800, 600), (700, 700)]):
        Image.new("RGB", size, (40 * i, 90, 160)).save(tmp_path / f"p{i}.png")
    report = check_folder(tmp_path, resolution=512)
    assert report.buckets == {"448x576": 2, "576x448": 1, "512x512": 1}
    assert "aspect-ratio buckets at 512 px (sides multiples of 64" in report.to_text()
    result = CliRunner().invoke(app, ["dataset", "check", str(tmp_path), "--model", "tiny", "--resolution", "32",
                                      "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout[result.stdout.index("{"):])
    assert shown["bucket_step"] == 4 and shown["buckets"] == {"28x36": 2, "36x28": 1, "32x32": 1}


def test_found_tally_counts_images_not_messages(tmp_path):
    for i in range(6):
        pattern(i).save(tmp_path / f"{i}.png")
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    relaxed = check_folder(tmp_path)  # one summary warning for two images
    assert _where(relaxed.warnings, "2 of 6 images have no caption")
    assert relaxed.counts["missing caption"] == 2 and "found: missing caption 2" in relaxed.to_text()
    strict = check_folder(tmp_path, require_captions=True)  # one error per image
    assert strict.counts["missing caption"] == 2 and "found: missing caption 2" in strict.to_text()


def test_buckets_below_the_step_are_not_described_as_multiples_of_it(tmp_path):
    from PIL import Image

    for i, size in enumerate([(300, 600), (600, 300)]):
        Image.new("RGB", size, (40 * i, 90, 160)).save(tmp_path / f"p{i}.png")
    report = check_folder(tmp_path, resolution=48)  # no model: SD's 64 px step, larger than 48
    text = report.to_text()
    assert "sides multiples of 64" not in text
    assert "no aspect-ratio buckets at 48 px" in text and report.buckets == {"48x48": 2}
    assert report.to_dict()["bucketed"] is False
    toy = check_folder(tmp_path, resolution=48, bucket_step=16)  # the toy's 16 px step: real buckets
    assert "aspect-ratio buckets at 48 px (sides multiples of 16" in toy.to_text()
    assert toy.to_dict()["bucketed"] is True and toy.buckets == {"32x64": 1, "64x32": 1}
