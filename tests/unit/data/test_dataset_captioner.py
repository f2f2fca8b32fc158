"""Auto-captioning plumbing with a tiny random BLIP built offline: nonsense text, real code path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile_corpus import pattern

from sdtune.data.build import Source, build_dataset
from sdtune.data.captioner import Captioner, apply_template
from sdtune.errors import ModelLoadError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "dog", "cat", "red", "blue",
         "person", "beach", "smiling", "##s"]


def build_tiny_blip(folder: Path) -> Path:
    """A random BlipForConditionalGeneration (a few KB) and its processor, saved like a hub model."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip import BlipImageProcessorPil  # no torchvision here: the PIL processor

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=32)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id,
                sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return build_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


def test_template():
    assert apply_template("a photo of sks person, {caption}", "smiling") == "a photo of sks person, smiling"
    assert apply_template("sks person, ", "smiling") == "sks person, smiling"
    assert apply_template("{caption}", " x ") == "x"


def test_captioner_writes_a_caption_for_each_image_without_one(tmp_path, tiny_blip, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        pattern(i).save(src / f"{i}.png")
    (src / "0.txt").write_text("my own caption", encoding="utf-8")
    out = tmp_path / "out"
    report = build_dataset([Source(src)], out, captioner=tiny_blip, template="a photo of sks person, {caption}",
                           progress=True, caption_batch_size=2)
    rows = {r["file_name"]: r["text"] for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    assert rows["0.png"] == "my own caption"  # never overwritten
    generated = [rows[f"{i}.png"] for i in range(1, 5)]
    for text in generated:
        assert text.startswith("a photo of sks person, ") and len(text) > len("a photo of sks person, ")
        assert set(text.removeprefix("a photo of sks person, ").replace("##", " ").split()) <= set(WORDS)
    assert report.auto_captioned == 4
    err = capsys.readouterr().err
    assert "captioning" in err and "4/4" in err


def test_captioner_batches_match_single_images(tiny_blip):
    captioner = Captioner(tiny_blip, batch_size=3, max_new_tokens=8)
    images = [pattern(i) for i in range(3)]
    assert captioner.caption(images) == [captioner.caption([im])[0] for im in images]


def test_unloadable_captioner_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load captioning model"):
        Captioner(tmp_path)  # an empty folder
    with pytest.raises(ModelLoadError, match="hub id"):
        Captioner("no-such-org/no-such-captioner")  # offline in tests (HF_HUB_OFFLINE=1)
