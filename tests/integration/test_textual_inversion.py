"""Textual inversion through the real CLI: only the token changes, the file loads where users load it, and a run's
checkpoints are models too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli, sample_images, tiny_config, write_config

pytestmark = pytest.mark.slow

PROMPT = "a photo of sks dog"


def _train(tmp: Path, base: str, **train) -> Path:
    data = {"instance_dir": str(make_images(tmp / "data", 3)), "instance_prompt": PROMPT}
    cfg = tiny_config(tmp / "run", data, {"max_steps": 4, "learning_rate": 5e-2, "adam_weight_decay": 0.0,
                                          "textual_inversion": {"token": "sks"}, **train},
                      checkpoint={"every": 2, "keep": 5}, model={"base": base})
    out = run_cli("train", str(write_config(tmp / "c.yaml", cfg)))
    assert "RUN/embeddings verified: loads with diffusers load_textual_inversion" in out.stdout
    assert "Traceback" not in out.stderr
    return tmp / "run"


@pytest.mark.parametrize("base", ["tiny", "tiny-xl"])
def test_only_the_token_changes_and_the_file_loads_in_diffusers(tmp_path: Path, base: str) -> None:
    from sdtune.inference.pipeline import load_for_inference
    from sdtune.models.loading import load_pipeline

    run = _train(tmp_path, base)
    file = run / "embeddings" / "sks.safetensors"
    rows = load_file(str(file))
    assert set(rows) == ({"clip_l", "clip_g"} if base == "tiny-xl" else {"sks"})
    assert not (run / "lora").exists() and not (run / "model").exists()
    assert "load_textual_inversion" in (run / "README.md").read_text()

    base_pipe, trained = load_pipeline(base), load_for_inference(str(run))
    other = "a red disc"  # no token: the model is untouched, bitwise
    assert np.array_equal(sample_images(base_pipe, other), sample_images(trained, other))
    learned = sample_images(trained, PROMPT)
    assert not np.allclose(sample_images(base_pipe, PROMPT), learned), "the token must change its images"
    if base == "tiny":  # what a diffusers user pastes from the model card
        user = load_pipeline(base)
        user.load_textual_inversion(str(file), token="sks")
        assert np.array_equal(sample_images(user, PROMPT), learned)

    out = run_cli("generate", str(run), "--prompt", PROMPT, "--out", str(tmp_path / "gen"), "--steps", "2")
    assert "images in" in out.stdout and list((tmp_path / "gen").glob("*.png"))


def test_checkpoints_materialise_as_embedding_files_that_generate(tmp_path: Path) -> None:
    from sdtune.evaluation.checkpoints import expand_checkpoints
    from sdtune.inference.pipeline import load_for_inference

    run = _train(tmp_path, "tiny")
    models = expand_checkpoints(run, tmp_path / "eval")
    assert [m.step for m in models] == [2, 4] and models[-1].final
    final = load_file(str(models[-1].folder / "embeddings" / "sks.safetensors"))
    assert torch.equal(final["sks"], load_file(str(run / "embeddings" / "sks.safetensors"))["sks"])
    first = load_file(str(models[0].folder / "embeddings" / "sks.safetensors"))
    assert not torch.equal(first["sks"], final["sks"])
    assert np.array_equal(sample_images(load_for_inference(str(models[-1].folder)), PROMPT),
                          sample_images(load_for_inference(str(run)), PROMPT))


def test_bad_textual_inversion_input_is_one_line(tmp_path: Path) -> None:
    captioned = make_images(tmp_path / "captioned", 2, captions=["a red disc", "a blue dot"])
    cases = {
        "fraction": ({"instance_dir": str(make_images(tmp_path / "i", 2)), "instance_prompt": PROMPT},
                     {"textual_inversion": {"token": "sks", "ti_fraction": 0.5}}, "add train.lora"),
        "vocab": ({"instance_dir": str(tmp_path / "i"), "instance_prompt": "a photo of a dog"},
                  {"textual_inversion": {"token": "a"}}, "already a token of the model's vocabulary"),
        "captions": ({"train_dir": str(captioned)}, {}, "no training prompt contains"),
    }
    for name, (data, train, message) in cases.items():
        cfg = tiny_config(tmp_path / f"run-{name}", data, {"textual_inversion": {"token": "sks"}, **train})
        out = run_cli("train", str(write_config(tmp_path / f"{name}.yaml", cfg)), check=False)
        assert out.returncode != 0, name
        assert message in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr, name
