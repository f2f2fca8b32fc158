"""run_generate: one PNG per prompt x seed, a grid, reproducible seeds, numbering that never overwrites."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdtune.errors import SdtuneError
from sdtune.inference.generate import GenerationSettings, generate_images, read_prompts, run_generate
from sdtune.inference.grid import GAP, make_grid
from sdtune.inference.metadata import read_png_parameters
from sdtune.inference.pipeline import load_for_inference

SETTINGS = GenerationSettings(steps=2, guidance=4.0, negative_prompt="blurry")


def test_generate_writes_pngs_with_parameters_and_a_grid(runs, tmp_path):
    out = tmp_path / "gen"
    res = run_generate(str(runs["lora"]), ["a photo of sks person", "a dog"], out, seeds=[5, 6, 7],
                       settings=SETTINGS, adapters=[(str(runs["other_lora"]), 0.5)], progress=False)
    assert [p.name for p in res.images] == ["00000-5.png", "00001-6.png", "00002-7.png", "00003-5.png",
                                            "00004-6.png", "00005-7.png"]
    meta = read_png_parameters(res.images[4])
    assert (meta["prompt"], meta["seed"], meta["negative_prompt"], meta["steps"]) == ("a dog", 6, "blurry", 2)
    assert meta["model"] == str(runs["lora"]) and meta["adapters"][0][1] == 0.5
    with Image.open(res.grid) as grid:  # 2 rows (prompts) x 3 columns (seeds) of 32 px images
        assert grid.size == (3 * 32 + 2 * GAP, 2 * 32 + GAP)
    again = run_generate(str(runs["lora"]), ["a dog"], out, seeds=[1], settings=SETTINGS, progress=False)
    assert again.images[0].name == "00006-1.png" and again.grid.name == "grid-00006.png"


def test_same_seed_same_image_alone_or_in_a_batch():
    pipe = load_for_inference("tiny")
    jobs = [("a photo", 3), ("a dog", 4), ("a photo", 5)]
    batched = generate_images(pipe, jobs, SETTINGS, batch_size=3)
    alone = generate_images(pipe, jobs[1:2], SETTINGS, batch_size=1)
    diff = np.abs(np.asarray(batched[1], dtype=np.int16) - np.asarray(alone[0], dtype=np.int16))
    assert diff.max() <= 1  # 8-bit rounding of a float difference at most
    assert np.abs(np.asarray(batched[0], float) - np.asarray(batched[2], float)).max() > 1  # seeds matter


def test_explicit_size_is_used():
    pipe = load_for_inference("tiny")
    (image,) = generate_images(pipe, [("a photo", 0)], GenerationSettings(steps=1, width=48, height=32))
    assert image.size == (48, 32)


def test_read_prompts_skips_blank_and_comments(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# header\na photo of sks person\n\n  a dog  \n", encoding="utf-8")
    assert read_prompts(f, ["flag prompt"]) == ["flag prompt", "a photo of sks person", "a dog"]
    with pytest.raises(SdtuneError, match="cannot read prompts"):
        read_prompts(tmp_path / "missing.txt")


def test_bad_settings_are_user_errors():
    with pytest.raises(SdtuneError, match="multiple of 8"):
        GenerationSettings(width=30)
    with pytest.raises(SdtuneError, match="at least 1"):
        GenerationSettings(steps=0)


def test_grid_layout_and_blank_cells():
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    grid = make_grid([[red, blue], [None, red]], gap=1)
    assert grid.size == (9, 9)
    assert grid.getpixel((0, 0)) == (255, 0, 0) and grid.getpixel((5, 0)) == (0, 0, 255)
    assert grid.getpixel((0, 5)) == (255, 255, 255) and grid.getpixel((5, 5)) == (255, 0, 0)
