"""`dataset check`, `dataset build` and the training stream read a folder the same way (one reader).

Each corpus is a folder of ordinary spellings users have: upper-case suffixes, ``.caption`` sidecars, ``.jfif``
photos, nested folders, a metadata.jsonl saved with a byte-order mark, captions given as a list of
alternatives, hidden notebook checkpoints, images no metadata row names, a photo renamed ``.jpg.bak``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hostile_corpus import jpeg_bytes, pattern, png_bytes

from sdtune.config import config_from_dict
from sdtune.data.build import Source, build_dataset
from sdtune.data.check import check_folder
from sdtune.data.subsets import build_stream
from sdtune.models.presets import build_tiny_tokenizer

View = dict[str, tuple[str, ...]]  # image name without suffix -> captions


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg", ".jfif")
    path.write_bytes(jpeg_bytes(pattern(seed)) if jpeg else png_bytes(pattern(seed)))


def sidecar_corpus(root: Path) -> tuple[Path, View]:
    """kohya-style: each image with a caption file, as people name them."""
    files = {"A.JPG": ("A.TXT", "an upper-case photo"), "b.jpeg": ("b.caption", "a caption file, not a txt"),
             "c.jfif": ("c.txt", "a jfif photo"), "d.png": ("d.txt", "\ufeffa bom caption\r\nover two lines\r\n"),
             "sub/e.png": ("sub/e.txt", "a nested photo")}
    for i, (name, (sidecar, caption)) in enumerate(files.items()):
        _image(root / name, i)
        (root / sidecar).write_text(caption, encoding="utf-8")
    _image(root / ".ipynb_checkpoints" / "d-checkpoint.png", 9)  # hidden: no one reads it
    (root / "f.jpg.bak").write_bytes(jpeg_bytes(pattern(7)))  # a JPEG under another name: reported, not used
    expected = {"A": ("an upper-case photo",), "b": ("a caption file, not a txt",), "c": ("a jfif photo",),
                "d": ("a bom caption over two lines",), "sub/e": ("a nested photo",)}
    return root, expected


def metadata_corpus(root: Path, lists: bool) -> tuple[Path, View]:
    """Hugging Face imagefolder: metadata.jsonl with a BOM; captions as text, or as lists of alternatives."""
    captions = {"a.png": ["a red photo"], "sub/B.JPG": ["first caption", "second caption"], "c.jfif": ["a jfif"]}
    for i, name in enumerate(captions):
        _image(root / name, i)
    _image(root / "unlisted.png", 5)  # no row names it: reported, not used (as by datasets.load_dataset)
    (root / "unlisted.txt").write_text("a sidecar in an imagefolder is not read", encoding="utf-8")
    rows = [{"file_name": name, "text": text if lists else text[0]} for name, text in captions.items()]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8-sig")
    expected = {Path(n).with_suffix("").as_posix(): tuple(t if lists else t[:1]) for n, t in captions.items()}
    return root, expected


def _stem(name: str) -> str:
    return Path(name).with_suffix("").as_posix()


def check_view(folder: Path) -> View:
    report = check_folder(folder)
    assert report.ok, report.errors
    return {_stem(r.name): r.captions for r in report.dataset}


def build_view(folder: Path, out: Path) -> tuple[View, list[str]]:
    report = build_dataset([Source(folder)], out)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    view = {_stem(r["file_name"]): tuple(r["text"]) if isinstance(r["text"], list) else (r["text"],) for r in rows}
    return view, [str(p) for p in report.problems]


def stream_view(folder: Path, tokenizer) -> View:
    data = config_from_dict({"data": {"train_dir": str(folder), "resolution": 16}}).data
    stream = build_stream(data, tokenizer, seed=0)
    return {_stem(e.path.relative_to(folder).as_posix()): e.prompts for e in stream.train}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("corpus", ["sidecars", "metadata", "metadata-lists"])
def test_check_build_and_training_see_the_same_images_and_captions(tmp_path: Path, corpus: str, tokenizer) -> None:
    if corpus == "sidecars":
        folder, expected = sidecar_corpus(tmp_path / "src")
    else:
        folder, expected = metadata_corpus(tmp_path / "src", lists=corpus == "metadata-lists")
    built, build_problems = build_view(folder, tmp_path / "out")
    assert check_view(folder) == expected
    assert stream_view(folder, tokenizer) == expected
    assert built == expected
    # The built dataset reads back the same through all three, and through Hugging Face datasets.
    assert check_view(tmp_path / "out") == stream_view(tmp_path / "out", tokenizer) == expected
    if corpus != "sidecars":
        import datasets

        ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "hf"))
        texts = [tuple(t) if isinstance(t, list) else (t,) for t in ds["text"]]
        assert sorted(texts) == sorted(expected.values()) and ds.num_rows == len(expected)
    # Nothing Pillow can open was dropped silently: what is not used is said, by check and build alike.
    warnings = check_folder(folder).warnings
    skipped = ["f.jpg.bak"] if corpus == "sidecars" else ["unlisted.png"]
    for name in skipped:
        assert any(name in w and "not used" in w for w in warnings), warnings
        assert any(name in p and "not used" in p for p in build_problems), build_problems


def test_list_captions_are_alternatives_by_stream_position_never_a_repr(tmp_path: Path, tokenizer) -> None:
    folder, _ = metadata_corpus(tmp_path / "src", lists=True)
    data = config_from_dict({"data": {"train_dir": str(folder), "resolution": 16, "repeats": 2}}).data
    stream, again = build_stream(data, tokenizer, seed=1), build_stream(data, tokenizer, seed=1)
    ids = {text: stream._tokenize(text) for text in ("first caption", "second caption", "['first caption', "
                                                    "'second caption']")}
    seen = []
    for position in range(4 * len(stream)):  # four epochs
        example = stream.train[stream.train_order.item(position)[0]]
        item = stream[position]
        assert torch.equal(item["input_ids"], again[position]["input_ids"])  # a resumed stream picks the same
        if example.path.name == "B.JPG":
            seen += [t for t, i in ids.items() if torch.equal(item["input_ids"], i)]
    assert sorted(seen) == ["first caption"] * 4 + ["second caption"] * 4  # 2 copies x 4 epochs, evenly


def test_caption_that_is_not_text_is_an_error_everywhere(tmp_path: Path, tokenizer) -> None:
    _image(tmp_path / "a.png", 0)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": {"en": "x"}}) + "\n")
    report = check_folder(tmp_path)
    assert any("must be text or a list of texts" in e for e in report.errors)
    # The image is listed (its row is wrong): no second, contradicting "not listed" warning.
    assert not any("not listed" in w for w in report.warnings), report.warnings
    data = config_from_dict({"data": {"train_dir": str(tmp_path), "resolution": 16}}).data
    with pytest.raises(Exception, match="must be text or a list of texts"):
        build_stream(data, tokenizer, seed=0)
