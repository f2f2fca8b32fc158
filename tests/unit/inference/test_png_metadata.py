"""Generation parameters written into PNGs read back with plain Pillow, in the AUTOMATIC1111 convention."""

from __future__ import annotations

import json

from PIL import Image

from sdtune.inference.metadata import GenerationParams, parse_a1111, read_png_parameters, save_png


def params(**kw) -> GenerationParams:
    base = {"prompt": "a photo of sks person, smiling", "seed": 42, "steps": 25, "guidance": 7.5,
            "scheduler": "dpm++", "width": 512, "height": 768, "negative_prompt": "blurry, lowres",
            "model": "runs/me"}
    return GenerationParams(**(base | kw))


def test_a1111_text_is_exactly_the_convention():
    assert params().a1111_text() == (
        "a photo of sks person, smiling\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 25, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, Size: 512x768, Model: runs/me, Version: sdtune"
    )


def test_png_text_chunks_read_back_with_pillow(tmp_path):
    p = params(adapters=[("runs/style/lora/pytorch_lora_weights.safetensors", 0.8)])
    path = save_png(Image.new("RGB", (16, 16), (10, 20, 30)), tmp_path / "a.png", p)
    with Image.open(path) as im:
        assert im.text["parameters"] == p.a1111_text()
        assert json.loads(im.text["sdtune"])["seed"] == 42
        assert im.size == (16, 16)
    back = read_png_parameters(path)
    assert back["prompt"] == p.prompt and back["negative_prompt"] == p.negative_prompt
    assert back["adapters"] == [["runs/style/lora/pytorch_lora_weights.safetensors", 0.8]]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_parse_a1111_roundtrip_with_quoted_values_and_multiline_prompt():
    p = params(prompt="line one\nline two", model='my "best": model, v2', scheduler="euler-a")
    parsed = parse_a1111(p.a1111_text())
    assert parsed["prompt"] == "line one\nline two"
    assert parsed["negative_prompt"] == "blurry, lowres"
    assert parsed["Model"] == 'my "best": model, v2'
    assert parsed["Sampler"] == "Euler a" and parsed["Seed"] == "42" and parsed["Size"] == "512x768"


def test_foreign_a1111_png_is_parsed(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", pnginfo=info)
    got = read_png_parameters(tmp_path / "x.png")
    assert got["prompt"] == "a cat" and got["negative_prompt"] == "" and got["CFG scale"] == "7"
