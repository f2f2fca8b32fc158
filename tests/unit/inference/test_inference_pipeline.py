"""load_for_inference: base refs, run folders (LoRA, full, adapter stacks) and extra LoRAs with weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdtune.errors import ModelLoadError, SdtuneError
from sdtune.inference.generate import GenerationSettings, generate_images
from sdtune.inference.pipeline import (
    base_of,
    load_for_inference,
    model_fingerprint,
    parse_adapter_spec,
    read_run,
    resolve_adapter_file,
)
from sdtune.models.loading import load_pipeline

SETTINGS = GenerationSettings(steps=2, guidance=5.0)
JOBS = [("a photo of sks person", 0), ("a dog", 1)]


def pixels(pipe) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float32) for im in generate_images(pipe, JOBS, SETTINGS)])


@pytest.fixture(scope="module")
def base_pixels() -> np.ndarray:
    return pixels(load_for_inference("tiny"))


def test_lora_run_loads_base_plus_its_lora(runs, base_pixels):
    got = pixels(load_for_inference(str(runs["lora"])))
    manual = load_pipeline("tiny")
    manual.load_lora_weights(str(runs["lora"] / "lora"))
    np.testing.assert_allclose(got, pixels(manual), atol=1e-4)
    assert np.abs(got - base_pixels).max() > 1.0  # the LoRA changed the images


def test_full_run_prefers_its_model_folder(runs, base_pixels):
    got = pixels(load_for_inference(str(runs["full"])))
    np.testing.assert_allclose(got, pixels(load_pipeline(str(runs["full"] / "model"))), atol=1e-4)
    assert np.abs(got - base_pixels).max() > 1.0


def test_adapter_weight_zero_is_the_base_and_weights_matter(runs, base_pixels):
    lora = str(runs["other_lora"])
    np.testing.assert_allclose(pixels(load_for_inference("tiny", [(lora, 0.0)])), base_pixels, atol=1e-4)
    half = pixels(load_for_inference("tiny", [(lora, 0.5)]))
    full = pixels(load_for_inference("tiny", [(lora, 1.0)]))
    assert np.abs(half - full).max() > 0.5


def test_adapters_json_stack_is_applied_below_the_runs_own_lora(runs, tmp_path):
    run = tmp_path / "stacked"
    shutil.copytree(runs["lora"], run)
    stack_file = runs["other_lora"]
    (run / "adapters.json").write_text(json.dumps([{"name": "concept", "path": str(stack_file.parent),
                                                    "weight": 0.7}]), encoding="utf-8")
    info = read_run(run)
    assert [(a.name, a.path, a.weight) for a in info.stack] == [("concept", stack_file.resolve(), 0.7)]
    got = pixels(load_for_inference(str(run)))
    expected = pixels(load_for_inference("tiny", [(str(stack_file), 0.7), (str(run / "lora"), 1.0)]))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(got - pixels(load_for_inference(str(runs["lora"])))).max() > 0.5


def test_run_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  base: tiny\n", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="no weights yet"):
        load_for_inference(str(tmp_path))


def test_missing_lora_and_pickle_lora_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="nothing does not exist"):
        resolve_adapter_file(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no LoRA weights"):
        resolve_adapter_file(tmp_path / "empty")
    (tmp_path / "old.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelLoadError, match="pickle"):
        resolve_adapter_file(tmp_path / "old.bin")


def test_base_of_and_relative_base(runs, tmp_path):
    assert base_of(str(runs["lora"])) == "tiny"
    assert base_of("tiny") is None
    (tmp_path / "mybase").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model:\n  base: ../mybase\n", encoding="utf-8")
    assert base_of(str(tmp_path / "run")) == str((tmp_path / "mybase").resolve())


def test_fingerprint_follows_adapter_content(runs, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(runs["lora"], run)
    before = model_fingerprint(str(run))
    assert model_fingerprint(str(run)) == before
    assert model_fingerprint(str(run), [(str(runs["other_lora"]), 0.5)]) != before
    weights = run / "lora" / "pytorch_lora_weights.safetensors"
    shutil.copyfile(runs["other_lora"], weights)
    assert model_fingerprint(str(run)) != before


@pytest.mark.parametrize(("spec", "expected"), [
    ("runs/me", ("runs/me", 1.0)),
    ("runs/me:0.6", ("runs/me", 0.6)),
    ("C:/loras/x.safetensors", ("C:/loras/x.safetensors", 1.0)),
    ("C:/loras/x.safetensors:-0.5", ("C:/loras/x.safetensors", -0.5)),
])
def test_parse_adapter_spec(spec, expected):
    assert parse_adapter_spec(spec) == expected


def test_unknown_scheduler_is_refused():
    with pytest.raises(SdtuneError, match="euler-a"):
        GenerationSettings(scheduler="plms")


def test_every_scheduler_runs_and_differs(runs):
    pipe = load_for_inference("tiny")
    outs = {name: pixels_with(pipe, name) for name in ("dpm++", "ddim", "euler-a")}
    assert np.abs(outs["dpm++"] - outs["euler-a"]).max() > 0.5
    assert pipe.scheduler.__class__.__name__ == "EulerAncestralDiscreteScheduler"


def pixels_with(pipe, scheduler: str) -> np.ndarray:
    settings = GenerationSettings(steps=3, guidance=5.0, scheduler=scheduler)
    return np.stack([np.asarray(im, dtype=np.float32) for im in generate_images(pipe, JOBS, settings)])


def test_read_run_ignores_unknown_sections(tmp_path: Path):
    (tmp_path / "config.yaml").write_text("model:\n  base: tiny\n  allow_pickle: true\nfuture: {x: 1}\n",
                                          encoding="utf-8")
    info = read_run(tmp_path)
    assert info.base == "tiny" and info.allow_pickle and info.lora_file is None and info.model_dir is None
