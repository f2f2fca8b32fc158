"""A LoRA on the wrong base: one line naming both bases, not peft's ~23 KB of mismatches (item 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sdtune.config import LoraConfig, config_from_dict, save_config
from sdtune.errors import ModelLoadError
from sdtune.models.fit import check_lora_fits
from sdtune.models.lora import LORA_WEIGHTS, save_lora
from tests.helpers import run_cli, tiny_config, tiny_pipeline_with_lora


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished LoRA run on the built-in ``tiny`` model (its files, without the training)."""
    run = tmp_path_factory.mktemp("fit") / "r2"
    run.mkdir()
    save_config(config_from_dict(tiny_config(run, {"train_dir": str(run.parent)}, {"lora": {"rank": 2}})),
                run / "config.yaml")
    settings = LoraConfig(rank=2)
    pipe = tiny_pipeline_with_lora(settings)
    save_lora(run / "lora", pipe.unet, pipe.text_encoder, settings)
    (run / "metrics.json").write_text(json.dumps({"status": "finished", "steps": 4}))
    return run


@pytest.mark.parametrize("args", [("generate", "toy", "--lora", "r2", "-p", "x", "-o", "gen"),
                                  ("export", "r2", "--format", "kohya", "--base", "toy")])
def test_a_run_on_another_base_is_one_line(tiny_run: Path, args: tuple[str, ...]) -> None:
    proc = run_cli(*args, cwd=tiny_run.parent, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "was trained on tiny, not toy" in proc.stderr and "size mismatch" not in proc.stderr, proc.stderr
    assert len(proc.stderr) < 1500, proc.stderr


def test_a_loose_file_that_does_not_fit_says_how_many_layers(tiny_run: Path, tmp_path: Path) -> None:
    from sdtune.models.loading import load_pipeline

    loose = shutil.copy(tiny_run / "lora" / LORA_WEIGHTS, tmp_path / "x.safetensors")
    with pytest.raises(ModelLoadError, match=r"x\.safetensors does not fit toy: \d+ of its \d+ layers have other "
                                             r"shapes \(first: .*LoRA \d+->\d+, model \d+->\d+\)"):
        check_lora_fits(Path(loose), load_pipeline("toy"), "toy")
    check_lora_fits(Path(loose), load_pipeline("tiny"), "tiny")  # the right base: no complaint


def test_a_kohya_file_of_another_family_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    # kohya files skip the shape check (not diffusers format); diffusers then logged ~19 mismatch lines, twice.
    from sdtune.models.kohya import export_kohya

    kohya = tmp_path / "sd-kohya.safetensors"
    export_kohya(tiny_run / "lora" / LORA_WEIGHTS, kohya)
    proc = run_cli("generate", "tiny-xl", "--lora", str(kohya), "-p", "x", "-n", "1", "--steps", "2", "--size", "64",
                   "-o", str(tmp_path / "gen"), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot apply LoRA" in proc.stderr and "size mismatch" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2, proc.stderr
