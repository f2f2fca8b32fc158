"""Shared test helpers: run the real CLI in a subprocess, make small image folders, compare weights."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image, ImageDraw


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m sdtune ARGS`` like a user would; on failure show its output."""
    full_env = os.environ | (env or {})
    proc = subprocess.run([sys.executable, "-m", "sdtune", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sdtune {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                             f"--- stderr\n{proc.stderr}")
    return proc


def make_images(folder: Path, n: int, color: tuple[int, int, int] = (200, 40, 40), captions: list[str] | None = None,
                size: tuple[int, int] = (40, 36)) -> Path:
    """Small distinct images (a coloured disc at a different place each), optionally with .txt captions."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", size, color)
        draw = ImageDraw.Draw(image)
        x = 4 + (i * 7) % (size[0] - 16)
        draw.ellipse((x, 6, x + 14, 20), fill=(255 - color[0], 255 - color[1], 255 - color[2]))
        image.save(folder / f"img{i:02d}.png")
        if captions is not None:
            (folder / f"img{i:02d}.txt").write_text(captions[i % len(captions)], encoding="utf-8")
    return folder


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def tiny_config(output_dir: Path, data: dict, train: dict | None = None, **sections) -> dict:
    """A fast config on the built-in tiny model (32 px, no trackers unless asked)."""
    config = {
        "output_dir": str(output_dir),
        "model": {"base": "tiny"},
        "data": {"resolution": 32, **data},
        "train": {"max_steps": 4, "learning_rate": 1e-3, **(train or {})},
        "checkpoint": {"every": 2, "keep": 2},
        "logging": {"trackers": []},
    }
    config.update(sections)
    return config


def tiny_pipeline_with_lora(settings, seed: int = 0, scale: float = 0.1):
    """The ``tiny`` pipeline with LoRA adapters (``settings``: a LoraConfig) on its UNet and text encoder, their
    weights drawn at random (std ``scale``) so that a saved file differs from the base: what a trained run holds."""
    import torch

    from sdtune.models.loading import load_pipeline
    from sdtune.models.lora import add_lora

    pipe = load_pipeline("tiny")
    add_lora(pipe.unet, settings, settings.targets)
    add_lora(pipe.text_encoder, settings, settings.text_encoder_targets)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.copy_(scale * torch.randn(param.shape, generator=gen))
    return pipe


@contextlib.contextmanager
def locked_folder(parent: Path, name: str = "locked"):
    """An existing folder nothing can be written into, even by root (tests and CI run as root, and root ignores
    mode bits): ``chattr +i`` where the file system and capabilities allow it, mode 0555 for other users, else
    ``/sys/kernel`` (sysfs takes no files). Checked by writing, so a folder that is writable after all fails here,
    not silently in the test."""
    import shutil
    import tempfile

    folder = parent / name
    folder.mkdir(parents=True, exist_ok=True)
    undo = None
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    elif shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    else:
        folder = Path("/sys/kernel")
    try:
        try:
            os.close(tempfile.mkstemp(dir=folder)[0])
        except OSError:
            pass
        else:
            raise AssertionError(f"{folder} is writable; the test needs a folder that is not")
        yield folder
    finally:
        if undo is not None:
            undo()


def resume_from_copy(straight: Path, run: Path, config: Path, step: int, *extra: str) -> subprocess.CompletedProcess:
    """Resume ``config`` (whose output_dir is ``run``) from a fresh run folder holding only what an interruption at
    ``step`` of the run ``straight`` leaves: its config.yaml and that checkpoint. Returns the CLI's result."""
    name = f"step-{step:06d}"
    import shutil

    shutil.copytree(straight / "checkpoints" / name, run / "checkpoints" / name)
    saved = yaml.safe_load((straight / "config.yaml").read_text())
    saved["output_dir"] = str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    out = run_cli("train", str(config), "--resume", "latest", *extra)
    assert "resumed from" in out.stdout, out.stdout
    return out


def safetensors_in(folder: Path) -> dict:
    """Every tensor of every .safetensors file under ``folder``, keyed ``<relative file>:<key>``."""
    from safetensors.torch import load_file

    out = {}
    for file in sorted(folder.rglob("*.safetensors")):
        out |= {f"{file.relative_to(folder)}:{k}": v for k, v in load_file(str(file)).items()}
    return out


def immutable(file: Path) -> bool:
    """Make ``file`` immutable (``chattr +i``: not even root may replace it); False where that is not possible.
    The caller undoes it with ``chattr -i``."""
    import shutil

    return bool(shutil.which("chattr")) and subprocess.run(["chattr", "+i", str(file)],
                                                            capture_output=True).returncode == 0


def sample_images(pipe, prompt: str):
    """Two denoising steps at 32 px, seed 0, as a float array (N, 32, 32, 3): a tiny pipeline's output to compare
    bitwise between two ways of loading the same weights."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def train_pivotal_sequence(tmp: Path, token: str, prompt: str, name: str = "run") -> Path:
    """A 4-step pivotal run on ``tiny`` in sequence (the token alone for steps 1-2, then the LoRA), a checkpoint per
    step; returns its run folder ``tmp/name``."""
    data = {"instance_dir": str(make_images(tmp / "data", 3)), "instance_prompt": prompt}
    cfg = tiny_config(tmp / name, data, {"max_steps": 4, "learning_rate": 1e-2, "lora": {"rank": 4},
                                         "textual_inversion": {"token": token, "learning_rate": 5e-2,
                                                               "ti_fraction": 0.5, "lora_start": 0.5}},
                      checkpoint={"every": 1, "keep": 5})
    run_cli("train", str(write_config(tmp / "c.yaml", cfg)))
    return tmp / name
