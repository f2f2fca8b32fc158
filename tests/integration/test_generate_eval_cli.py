"""``sdtune generate`` and ``sdtune eval`` end to end, run as a user runs them (a subprocess), offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdtune.evaluation.testing import build_tiny_clip
from sdtune.inference.metadata import read_png_parameters
from sdtune.inference.testing import make_lora_file, make_run_folder
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    prompts = root / "prompts.txt"
    prompts.write_text("# evaluation prompts\na photo of sks person\nsks person on a beach\n", encoding="utf-8")
    generic = root / "generic.txt"
    generic.write_text("a dog\n", encoding="utf-8")
    return {
        "root": root,
        "lora": make_run_folder(root / "runs" / "db", kind="lora", seed=1),
        "full": make_run_folder(root / "runs" / "t2i", kind="full", seed=2),
        "style": make_lora_file(root / "style", seed=4),
        "clip": build_tiny_clip(root / "clip"),
        "prompts": prompts,
        "generic": generic,
    }


def test_generate_from_a_run_with_an_extra_lora(world):
    out = world["root"] / "gen"
    proc = run_cli("generate", str(world["lora"]), "-p", "a photo of sks person", "-p", "a dog", "-n", "2",
                   "--seed", "10", "--steps", "2", "--scheduler", "euler-a", "--negative-prompt", "blurry",
                   "--lora", f"{world['style']}:0.5", "--size", "32", "--out", str(out))
    assert "4 images" in proc.stdout
    pngs = sorted(out.glob("0*.png"))
    assert [p.name for p in pngs] == ["00000-10.png", "00001-11.png", "00002-10.png", "00003-11.png"]
    with Image.open(pngs[3]) as im:
        text = im.text["parameters"]
    assert text.startswith("a dog\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 11")
    assert read_png_parameters(pngs[3])["adapters"] == [[str(world["style"]), 0.5]]
    with Image.open(out / "grid-00000.png") as grid:
        assert grid.size == (2 * 32 + 2, 2 * 32 + 2)


def test_eval_then_add_a_model(world):
    out = world["root"] / "eval"
    common = ["--prompts", str(world["prompts"]), "--seeds", "2", "--steps", "2", "--clip", str(world["clip"]),
              "--generic-prompts", str(world["generic"]), "--out", str(out)]
    first = run_cli("eval", "tiny", str(world["lora"]), *common, "--tensorboard", str(out / "tb"))
    assert str(world["clip"]) in first.stdout and "report:" in first.stdout
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["generation"]["generated"] == 2 * (2 * 2 + 1 * 2)
    assert [m["label"] for m in res["models"]] == ["tiny", str(world["lora"])]
    assert res["models"][1]["base"] == "tiny" and res["models"][1]["metrics"]["clip_t"]["std"] is not None
    assert list((out / "tb").glob("events.out.tfevents.*"))

    second = run_cli("eval", "tiny", str(world["lora"]), str(world["full"]), *common)
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["generation"]["generated"] == 2 * 2 + 1 * 2  # only the added model's images
    assert res["generation"]["by_model"][str(world["full"])]["generated"] == 6
    assert "6 generated" in second.stdout
    html = (out / "report.html").read_text(encoding="utf-8")
    assert str(world["full"]) in html and (out / "results.csv").is_file()


def test_eval_without_a_local_clip_says_to_pass_clip(world, tmp_path):
    proc = run_cli("eval", "tiny", "-p", "a dog", "--seeds", "1", "--out", str(tmp_path / "e"),
                   env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "--clip PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "e" / "cache").exists()


def test_bad_arguments_are_one_line_errors(world, tmp_path):
    proc = run_cli("generate", "tiny", "-p", "x", "--size", "big", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--size" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("eval", "tiny", "-p", "x", "--seeds", "0", "--out", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--seeds" in proc.stderr
