"""Auto-captioning with tiny random Florence-2, Llava (JoyCaption-style) and BLIP models built offline: nonsense
text, the real load-and-generate path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hostile_corpus import pattern

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tiny_captioners import BUILDERS, made_of_words  # noqa: E402

from sdtune.data.build import Source, build_dataset  # noqa: E402
from sdtune.data.caption_modes import CaptionSettings  # noqa: E402
from sdtune.data.captioner import CAPTIONERS, ChatCaptioner, Florence2Captioner, load_captioner  # noqa: E402
from sdtune.errors import ModelLoadError  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("captioners")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def _rows(out: Path) -> dict[str, str]:
    return {r["file_name"]: r["text"] for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}


def _photos(folder: Path, n: int, own: str) -> Path:
    """``n`` images, the first with its own caption ``own`` (a .txt beside it)."""
    folder.mkdir()
    for i in range(n):
        pattern(i).save(folder / f"{i}.png")
    (folder / "0.txt").write_text(own, encoding="utf-8")
    return folder


def test_captioner_writes_a_caption_for_each_image_without_one(tmp_path, tiny, capsys):
    src = _photos(tmp_path / "src", 5, "my own caption")
    out = tmp_path / "out"
    settings = CaptionSettings(tiny["blip"], template="a photo of {caption}", trigger="sks", class_word="person",
                               batch_size=2)
    report = build_dataset([Source(src)], out, captioner=settings, progress=True)
    rows = _rows(out)
    assert rows["0.png"] == "my own caption"  # never overwritten
    for text in (rows[f"{i}.png"] for i in range(1, 5)):
        assert text.startswith("sks person, a photo of ") and len(text) > len("sks person, a photo of ")
        assert made_of_words(text.removeprefix("sks person, "))
    assert report.auto_captioned == 4 and report.captions_kept == 1
    assert "kept the own caption of 1 image " in report.to_text()
    err = capsys.readouterr().err
    assert "captioning (image-to-text)" in err and "4/4" in err


def test_suffix_mode_extends_every_caption(tmp_path, tiny):
    src = _photos(tmp_path / "src", 2, "sks, my own caption")
    out = tmp_path / "out"
    report = build_dataset([Source(src)], out, captioner=CaptionSettings(tiny["blip"], mode="suffix", trigger="sks"))
    rows = _rows(out)
    assert rows["0.png"].startswith("sks, my own caption, ") and len(rows["0.png"]) > len("sks, my own caption, ")
    assert rows["1.png"].startswith("sks, ") and "my own" not in rows["1.png"]
    assert report.auto_captioned == 2 and report.captions_kept == 0


@pytest.mark.parametrize("name,kind", [("florence2", Florence2Captioner), ("llava", ChatCaptioner),
                                       ("blip", CAPTIONERS["BlipForConditionalGeneration"])])
def test_each_architecture_loads_by_its_config_and_batches_match_single_images(tiny, name, kind):
    captioner = load_captioner(tiny[name], batch_size=3, max_new_tokens=6)
    assert type(captioner) is kind
    images = [pattern(i) for i in range(3)]
    batch = captioner.caption(images)
    assert batch == [captioner.caption([im])[0] for im in images]
    assert all(made_of_words(text) for text in batch), batch
    bf16 = load_captioner(tiny[name], max_new_tokens=6, dtype="bf16")  # what a GPU gets by default, here on CPU
    assert bf16.model.dtype == bf16.dtype and str(bf16.dtype) == "torch.bfloat16"
    assert all(made_of_words(text) for text in bf16.caption(images[:2]))


def test_chat_prompt_goes_through_the_chat_template(tiny):
    captioner = load_captioner(tiny["llava"], prompt="write a caption")
    assert captioner.chat_text.endswith("<|start|>user<|end|><image>write a caption<|eot|><|start|>assistant<|end|>")
    assert captioner.chat_text.startswith("<s><|start|>system<|end|>You are a helpful image captioner.")


def test_florence_refuses_a_prompt_that_is_not_a_caption_task(tiny):
    assert load_captioner(tiny["florence2"]).prompt == "<DETAILED_CAPTION>"
    assert load_captioner(tiny["florence2"], prompt="<MORE_DETAILED_CAPTION>").prompt == "<MORE_DETAILED_CAPTION>"
    with pytest.raises(ModelLoadError, match=r"task prompt: <CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>"):
        load_captioner(tiny["florence2"], prompt="<OD>")


def test_unloadable_captioner_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load .* local folder.*supported architectures: Florence2For"):
        load_captioner(tmp_path)  # an empty folder
    with pytest.raises(ModelLoadError, match="hub id"):
        load_captioner("no-such-org/no-such-captioner")  # offline in tests (HF_HUB_OFFLINE=1)
    with pytest.raises(ModelLoadError, match="folder ./nope does not exist"):
        load_captioner("./nope")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(ModelLoadError) as bad:
        load_captioner(tmp_path)
    message = str(bad.value)
    assert str(tmp_path) in message and "BertModel" in message and "\n" not in message
    for arch in ("Florence2ForConditionalGeneration", "LlavaForConditionalGeneration", "BlipForConditionalGeneration"):
        assert arch in message
    microsoft = {"architectures": ["Florence2ForConditionalGeneration"], "model_type": "florence2",
                 "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config"},
                 "text_config": {"model_type": "florence2_language"}, "vision_config": {"model_type": "davit"}}
    (tmp_path / "config.json").write_text(json.dumps(microsoft))
    with pytest.raises(ModelLoadError, match="remote-code Florence-2.*florence-community/Florence-2-base"):
        load_captioner(tmp_path)


def test_weights_that_do_not_load_are_one_clear_error(tmp_path, tiny):
    import shutil

    broken = shutil.copytree(tiny["blip"], tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=r"cannot load captioning model .*broken.* \(BlipForConditional"):
        load_captioner(broken)


def test_a_chat_model_without_an_image_in_its_template_is_refused(tmp_path, tiny):
    import shutil

    plain = shutil.copytree(tiny["llava"], tmp_path / "plain")
    (plain / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ModelLoadError, match="no chat template that places an image"):
        load_captioner(plain)
