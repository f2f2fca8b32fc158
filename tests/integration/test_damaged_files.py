"""A truncated ``.safetensors`` file (a copy cut short, a disk that filled) is one line naming it and what to do,
for every command that reads one, as a user runs them: no safetensors traceback ("incomplete metadata")."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sdtune.evaluation.testing import build_tiny_clip
from sdtune.inference.testing import make_run_folder
from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow

LORA = Path("lora") / "pytorch_lora_weights.safetensors"
NEWEST = Path("checkpoints") / "step-000004" / "trainable.safetensors"


def truncate(file: Path) -> Path:
    """``truncate -s 50% FILE``: the first half of the file, as an interrupted copy leaves it."""
    os.truncate(file, file.stat().st_size // 2)
    return file


def error_line(proc: subprocess.CompletedProcess, file: Path) -> str:
    """The command's one error line, checked: exit 2, no traceback, names ``file`` and that it is damaged."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0] == proc.stderr.strip().splitlines()[-1], proc.stderr
    assert str(file) in lines[0] and "is damaged or incomplete (a copy cut short" in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trained tiny LoRA run (checkpoints at steps 2 and 4), its config, a tiny CLIP and a full fine-tune's run
    folder; each test damages a copy."""
    root = tmp_path_factory.mktemp("damaged")
    config = tiny_config(root / "run", {"instance_dir": str(make_images(root / "me", 3)),
                                        "instance_prompt": "a photo of sks dog"},
                         {"max_steps": 4, "lora": {"rank": 2}}, checkpoint={"every": 2, "keep": 5})
    run_cli("train", str(write_config(root / "run.yaml", config)), env={"OMP_NUM_THREADS": "1"})
    return {"root": root, "run": root / "run", "config": root / "run.yaml", "clip": build_tiny_clip(root / "clip"),
            "full": make_run_folder(root / "full", kind="full")}


def copy_run(world: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    """(a copy of the trained run, a config whose output_dir is that copy)."""
    run = Path(shutil.copytree(world["run"], tmp_path / "run"))
    config = yaml.safe_load(world["config"].read_text())
    config["output_dir"] = str(run)
    return run, write_config(tmp_path / "run.yaml", config)


@pytest.mark.parametrize("args", [("export", "kohya", "{run}"), ("export", "{run}", "--format", "diffusers"),
                                  ("generate", "{run}", "-p", "a dog", "-n", "1", "--steps", "2", "-o", "{tmp}/g"),
                                  ("eval", "{run}", "-p", "a dog", "--seeds", "1", "--steps", "2", "--clip",
                                   "{clip}", "--out", "{tmp}/e")],
                         ids=["export-kohya", "export-diffusers", "generate", "eval"])
def test_a_run_with_a_damaged_lora_is_one_line(world: dict[str, Path], tmp_path: Path, args: tuple[str, ...]) -> None:
    run, _ = copy_run(world, tmp_path)
    damaged = truncate(run / LORA)
    proc = run_cli(*(a.format(run=run, tmp=tmp_path, clip=world["clip"]) for a in args), check=False)
    line = error_line(proc, damaged)
    assert "copy it again from where it came from" in line


@pytest.mark.parametrize("args", [("generate", "tiny", "--lora", "{file}", "-p", "a dog", "-n", "1", "--steps", "2",
                                   "-o", "{tmp}/g"),
                                  ("export", "kohya", "{file}", "--base", "tiny")],
                         ids=["generate-lora", "export-file"])
def test_a_damaged_loose_lora_file_is_one_line(world: dict[str, Path], tmp_path: Path, args: tuple[str, ...]) -> None:
    damaged = truncate(Path(shutil.copy(world["run"] / LORA, tmp_path / "half.safetensors")))
    error_line(run_cli(*(a.format(file=damaged, tmp=tmp_path) for a in args), check=False), damaged)


@pytest.mark.parametrize("part", ["unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
@pytest.mark.parametrize("args", [("generate", "{run}", "-p", "a dog", "-n", "1", "--steps", "2", "-o", "{tmp}/g"),
                                  ("export", "lora", "--from", "{run}", "--rank", "2")],
                         ids=["generate", "export-lora"])
def test_a_full_fine_tune_with_a_damaged_model_file_is_one_line(world: dict[str, Path], tmp_path: Path,
                                                                args: tuple[str, ...], part: str) -> None:
    run = Path(shutil.copytree(world["full"], tmp_path / "full"))
    damaged = truncate(run / "model" / part)
    error_line(run_cli(*(a.format(run=run, tmp=tmp_path) for a in args), check=False), damaged)


@pytest.mark.parametrize("args", [("pick", "{run}", "--prompt", "a photo of sks dog"),
                                  ("eval", "{run}", "--checkpoints", "-p", "a photo of sks dog", "--out", "{tmp}/e")],
                         ids=["pick", "eval-checkpoints"])
def test_a_damaged_checkpoint_says_to_move_it_aside(world: dict[str, Path], tmp_path: Path,
                                                    args: tuple[str, ...]) -> None:
    run, _ = copy_run(world, tmp_path)
    damaged = truncate(run / NEWEST)
    proc = run_cli(*(a.format(run=run, tmp=tmp_path) for a in args), "--clip", str(world["clip"]), "--seeds", "1",
                   "--steps", "2", check=False, env={"OMP_NUM_THREADS": "1"})
    line = error_line(proc, damaged)
    assert f"move {run / 'checkpoints' / 'step-000004'} out of {run / 'checkpoints'}" in line, line


def test_resume_from_a_damaged_newest_checkpoint_names_the_one_before(world: dict[str, Path], tmp_path: Path) -> None:
    run, config = copy_run(world, tmp_path)
    damaged = truncate(run / NEWEST)
    line = error_line(run_cli("train", str(config), "--resume", "latest", check=False), damaged)
    assert "--resume step-000002" in line, line
    out = run_cli("train", str(config), "--resume", "step-000002")  # what the line says to do: it works
    assert "resumed from" in out.stdout, out.stdout


def test_resume_from_a_damaged_only_checkpoint_says_there_is_none_before(world: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    run, config = copy_run(world, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-000002")
    damaged = truncate(run / NEWEST)
    line = error_line(run_cli("train", str(config), "--resume", "latest", check=False), damaged)
    assert "no checkpoint before it" in line, line


@pytest.mark.parametrize("args", [("export", "kohya", "{run}"),
                                  ("generate", "{run}", "-p", "a dog", "-n", "1", "--steps", "2", "-o", "{tmp}/g")],
                         ids=["export-kohya", "generate"])
def test_a_loha_run_with_a_damaged_lycoris_file_is_one_line(world: dict[str, Path], tmp_path: Path,
                                                            args: tuple[str, ...]) -> None:
    """LoHa / LoKr runs keep a kohya/LyCORIS file only: export copies it (never a damaged one), generate merges it."""
    loha = world["root"] / "loha"
    if not loha.is_dir():  # trained once, by the first of these tests
        run_cli("train", str(world["config"]), f"output_dir={loha}", "train.lora.kind=loha", "train.max_steps=2",
                "save.verify=false", env={"OMP_NUM_THREADS": "1"})
    run = Path(shutil.copytree(loha, tmp_path / "loha"))
    damaged = truncate(run / "lora" / "lycoris.safetensors")
    error_line(run_cli(*(a.format(run=run, tmp=tmp_path) for a in args), check=False), damaged)
    assert not (run / "export").exists() or not any((run / "export").iterdir())
