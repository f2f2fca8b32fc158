"""Each method trains through the real CLI, and its output loads in diffusers and changes the images."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _images(pipe, prompt: str) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt, num_inference_steps=3, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0))
    return out.images


def _base_pipe(base: str = "tiny"):
    from sdtune.models.loading import load_pipeline

    return load_pipeline(base)


# SDXL (tiny-xl): the same loop and outputs; its LoRA trains both text encoders (train.text_encoder_lr for both)
@pytest.mark.parametrize("method,lora,base", [("t2i", True, "tiny"), ("t2i", False, "tiny"), ("db", True, "tiny"),
                                              ("db", False, "tiny"), ("t2i", True, "tiny-xl"),
                                              ("t2i", False, "tiny-xl"), ("db", True, "tiny-xl"),
                                              ("db", False, "tiny-xl")])
def test_method_output_loads_in_diffusers_and_changes_images(tmp_path: Path, method: str, lora: bool,
                                                             base: str) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    xl = base == "tiny-xl"
    if method == "t2i":
        data = {"train_dir": str(make_images(tmp_path / "data", 4, captions=["a red disc", "a photo of a ball"]))}
        prompt = "a red disc"
    else:
        data = {"instance_dir": str(make_images(tmp_path / "data", 4)), "instance_prompt": "a photo of sks dog"}
        prompt = "a photo of sks dog"
    train = {"max_steps": 4, "learning_rate": 5e-3}
    if lora:
        train["lora"] = {"rank": 4}
    if xl:  # both text encoders train, at their own rate
        train |= {"train_text_encoder": True, "text_encoder_lr": 1e-3}
    run = tmp_path / "run"
    cfg = tiny_config(run, data, train, validation={"prompts": [prompt], "steps": 2}, model={"base": base})
    result = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert "done: 4 steps" in result.stdout
    assert "Traceback" not in result.stderr

    base_images = _images(_base_pipe(base), prompt)
    if lora:
        assert "RUN/lora verified: diffusers: largest difference" in result.stdout  # loaded back before it is kept
        pipe = _base_pipe(base)
        pipe.load_lora_weights(str(run / "lora"))
        assert not (run / "model").exists()
        if xl:
            assert set(pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}
    else:
        from safetensors import safe_open

        for te in ("text_encoder", "text_encoder_2") if xl else ("text_encoder",):
            with safe_open(str(run / "model" / te / "model.safetensors"), "pt") as f:
                assert all(k.startswith("text_model.") or k == "text_projection.weight" for k in f.keys()), \
                    "transformers 4 loads other names as random"
        pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_pretrained(str(run / "model"))
        if xl:  # trained encoders are saved, not the base's
            base_te2 = _base_pipe(base).text_encoder_2.state_dict()
            assert any(not torch.equal(v, base_te2[k]) for k, v in pipe.text_encoder_2.state_dict().items())
    tuned_images = _images(pipe, prompt)
    assert np.abs(tuned_images - base_images).mean() > 1e-3

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert Path(saved["output_dir"]).is_absolute()
    assert (run / "samples" / "step-000004" / "00-00.png").exists()
    card = (run / "README.md").read_text()
    assert base in card and ("lora" in card) == lora
    assert ("StableDiffusionXLPipeline" in card) == xl
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 4


def test_saved_config_reruns_as_is_and_lora_checkpoint_is_small(tmp_path: Path) -> None:
    data = {"instance_dir": str(make_images(tmp_path / "data", 3)), "instance_prompt": "a photo of sks dog"}
    run = tmp_path / "run"
    old_umask = os.umask(0o027)  # the run's files follow it (safetensors alone makes 0600 files)
    try:
        run_cli("train", str(write_config(tmp_path / "c.yaml", tiny_config(run, data, {"lora": {"rank": 2}}))))
    finally:
        os.umask(old_umask)
    modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in run.rglob("*") if p.is_file()}
    assert "lora/pytorch_lora_weights.safetensors" in modes and set(modes.values()) == {"0o640"}, modes
    ckpt = run / "checkpoints" / "step-000004" / "trainable.safetensors"
    unet_bytes = sum(p.stat().st_size for p in (_tiny_folder() / "unet").glob("*.safetensors"))
    assert ckpt.stat().st_size < unet_bytes / 10, "a LoRA checkpoint must not hold the UNet"
    other = tmp_path / "elsewhere"
    other.mkdir()
    # re-run the saved config from another directory into a new folder: the paths in it are absolute
    again = run_cli("train", str(run / "config.yaml"), f"output_dir={tmp_path / 'rerun'}", cwd=other)
    assert "done: 4 steps" in again.stdout
    refused = run_cli("train", str(run / "config.yaml"), check=False)
    assert refused.returncode == 2 and "--resume latest" in refused.stderr


def _tiny_folder() -> Path:
    from sdtune.models.presets import preset_path

    return preset_path("tiny")


def test_v_prediction_and_trackers(tmp_path: Path) -> None:
    """tiny-v trains with the v target; loss, lr and validation images reach tensorboard and wandb (offline)."""
    data = {"instance_dir": str(make_images(tmp_path / "data", 3)), "instance_prompt": "a photo of sks dog"}
    run = tmp_path / "run"
    cfg = tiny_config(run, data, {"lora": {"rank": 2}, "snr_gamma": 5.0},
                      logging={"trackers": ["tensorboard", "wandb"]},
                      validation={"prompts": ["a photo of sks dog"], "every": 2, "steps": 2})
    cfg["model"]["base"] = "tiny-v"
    run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), env={"WANDB_MODE": "offline"})
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p for p in (run / "logs").rglob("events.out.tfevents*")]
    tags: dict[str, list[str]] = {"scalars": [], "images": []}
    for event_file in events:
        acc = EventAccumulator(str(event_file), size_guidance={"images": 0})
        acc.Reload()
        tags["scalars"] += acc.Tags()["scalars"]
        tags["images"] += acc.Tags()["images"]
    assert {"loss", "lr", "step_time"} <= set(tags["scalars"])
    assert tags["images"], "validation images must be logged"
    assert list((run / "logs").rglob("offline-run-*")), "wandb must write an offline run"
    assert (run / "samples" / "step-000002").is_dir() and (run / "samples" / "step-000004").is_dir()


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_two_process_data_parallel_ranks_agree(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "data", 4, captions=["a red disc", "a ball"])
    for p in make_images(tmp_path / "tall", 2, size=(24, 48), captions=["a blue dot"]).iterdir():
        p.rename(folder / f"tall-{p.name}")  # two aspect-ratio buckets; each rank's batch is one of them
    data = {"train_dir": str(folder)}
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny_config(run, data, {"lora": {"rank": 2}, "batch_size": 2}))
    torchrun = Path(sys.executable).with_name("torchrun")
    # no ACCELERATE_USE_CPU: on a machine without GPUs the processes must still train together, not as 2 runs
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"OMP_NUM_THREADS": "1"}
    # --standalone: a free port of its own (a fixed port collides with any other torchrun on the machine)
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "sdtune", "train",
                           str(config)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2
    sums = metrics["rank_weight_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert proc.stdout.count("done: 4 steps") == 1, "only rank 0 reports"
    assert "data-parallel on the CPU with 2 processes" in proc.stdout
    assert len(json.loads((run / "buckets.json").read_text())["train"]) == 2
    assert proc.stdout.count("latent cache:") == 1  # both processes encode a share; process 0 reports
