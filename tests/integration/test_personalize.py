"""``sdtune personalize``: 3 subjects on 2 CPU processes (torchrun), one with broken photos; stop and exact resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli

pytestmark = pytest.mark.slow

STEPS = 4


@pytest.fixture(scope="module")
def concept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny concept LoRA run, trained in-process, without a fused model: personalize must make it."""
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train

    root = tmp_path_factory.mktemp("concept")
    thumbs = make_images(root / "thumbs", 3, color=(220, 180, 40), captions=["a person giving a thumbs up"])
    cfg = config_from_dict({"output_dir": str(root / "run"), "model": {"base": "tiny"},
                            "data": {"train_dir": str(thumbs), "resolution": 32},
                            "train": {"lora": {"rank": 4}, "max_steps": 3, "learning_rate": 1e-3},
                            "logging": {"trackers": []}})
    assert train(cfg).status == "finished" and not (root / "run" / "model").exists()
    return root / "run"


def _subjects(tmp: Path) -> Path:
    make_images(tmp / "photos" / "alice", 3, color=(40, 90, 200))
    make_images(tmp / "photos" / "bob", 2, color=(200, 60, 90))
    broken = tmp / "photos" / "carol"
    broken.mkdir(parents=True)
    (broken / "img00.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (broken / "img01.jpg").write_text("not an image")
    path = tmp / "people.csv"
    path.write_text("name,photos,token,class\nalice,photos/alice,sks,woman\nbob,photos/bob,zwx,man\n"
                    "carol,photos/carol,qrp,woman\n", encoding="utf-8")
    return path


def _args(csv_path: Path, concept: Path, out: Path) -> list[str]:
    return [str(csv_path), "--concept", str(concept), "--out", str(out), f"train.max_steps={STEPS}",
            "train.learning_rate=0.001", "train.lora.rank=4", "checkpoint.every=2", "checkpoint.keep=5",
            "logging.trackers=[]", "data.with_prior_preservation=true", "data.num_class_images=2",
            "data.class_generation_steps=2"]  # class images shared per class (the default needs none)


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", encoding="utf-8") as fh:
        return {row["subject"]: row for row in csv.DictReader(fh)}


def _images(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(["a photo of sks woman"], num_inference_steps=3, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_personalize_three_subjects_on_two_processes_then_rerun(concept: Path, tmp_path: Path) -> None:
    csv_path, out = _subjects(tmp_path), tmp_path / "people"
    env = os.environ | {"ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sdtune",
                           "personalize", *_args(csv_path, concept, out)], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fusing the concept LoRA" in proc.stdout and (concept / "model" / "model_index.json").is_file()
    rows = _summary(out)
    assert list(rows) == ["alice", "bob", "carol"]
    for name in ("alice", "bob"):
        assert rows[name]["status"] == "finished" and rows[name]["steps"] == str(STEPS)
        assert float(rows[name]["final_loss"]) > 0 and float(rows[name]["seconds"]) > 0
        assert rows[name]["output"] == str(out / name / "lora" / "pytorch_lora_weights.safetensors")
        assert (out / name / "stack" / "adapters.json").is_file()
    assert rows["carol"]["status"] == "failed" and "img01.jpg" in rows["carol"]["note"]
    assert not (out / "carol" / "checkpoints").exists(), "a subject with bad photos must not start training"
    # subjects[rank::2]: alice and carol on process 0, bob on process 1, each in its own single-process run
    assert [rows[n]["process"] for n in ("alice", "bob", "carol")] == ["0", "1", "0"]
    for name in ("alice", "bob"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["processes"] == 1 and metrics["steps"] == STEPS
        config = (out / name / "config.yaml").read_text()
        assert f"base: {concept / 'model'}" in config and "instance_prompt: a photo of" in config
    assert "| alice | finished |" in (out / "summary.md").read_text()
    assert len(list((out / "class-images" / "woman").glob("*.png"))) == 2

    from sdtune.models.loading import load_pipeline

    concept_only = _images(load_pipeline(str(concept / "model")))
    pipe = load_pipeline(str(concept / "model"))
    pipe.load_lora_weights(rows["alice"]["output"])
    assert np.abs(_images(pipe) - concept_only).max() > 5e-3, "alice's LoRA must change the images"

    # a rerun skips the finished subjects and tries the broken one again; --strict makes that a failure
    bob_before = (out / "bob" / "metrics.json").stat().st_mtime_ns
    rerun = run_cli("personalize", *_args(csv_path, concept, out), "--strict", check=False)
    assert rerun.returncode == 3, rerun.stdout + rerun.stderr
    rows = _summary(out)
    assert [rows[n]["note"] for n in ("alice", "bob")] == ["finished earlier: skipped"] * 2
    assert rows["alice"]["steps"] == str(STEPS) and rows["carol"]["status"] == "failed"
    assert (out / "bob" / "metrics.json").stat().st_mtime_ns == bob_before
    assert "not finished: carol" in rerun.stderr


def test_stopped_personalize_resumes_exactly(concept: Path, tmp_path: Path) -> None:
    make_images(tmp_path / "photos" / "alice", 3, color=(40, 90, 200))
    make_images(tmp_path / "photos" / "bob", 2, color=(200, 60, 90))
    csv_path, out = tmp_path / "people.csv", tmp_path / "people"
    csv_path.write_text("name,photos,token,class\nalice,photos/alice,sks,woman\nbob,photos/bob,zwx,man\n")
    args = [*_args(csv_path, concept, out), "train.max_steps=8"]
    marker = out / "alice" / "checkpoints" / "step-000002" / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "sdtune", "personalize", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None and not marker.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the parent passes it to alice's training process, which saves and exits
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output
    rows = _summary(out)
    assert rows["alice"]["status"] == "interrupted" and rows["bob"]["status"] == "pending"
    assert not (out / "alice" / "metrics.json").exists() and not (out / "bob" / "checkpoints").exists()

    run_cli("personalize", *args)
    rows = _summary(out)
    assert rows["alice"]["status"] == "finished" and rows["alice"]["note"] == "resumed from its latest checkpoint"
    assert rows["bob"]["status"] == "finished" and rows["alice"]["steps"] == rows["bob"]["steps"] == "8"
    assert "resumed from" in (out / "alice" / "train.log").read_text()
    run_cli("train", str(out / "alice" / "config.yaml"), f"output_dir={tmp_path / 'straight'}")
    name = "checkpoints/step-000008/trainable.safetensors"
    straight, resumed = load_file(str(tmp_path / "straight" / name)), load_file(str(out / "alice" / name))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "resume must continue exactly"
