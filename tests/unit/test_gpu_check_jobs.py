"""benchmarks/gpu_check: which configs become which jobs, what a short check may change, and its verdicts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import select, steady_step_seconds  # noqa: E402
from gpu_check_jobs import adapt, discover, resume_verdict  # noqa: E402


def _args(**kw) -> argparse.Namespace:
    base = {"steps": 20, "resolution": None, "mixed_precision": "config", "validation_steps": None,
            "class_images": 2, "set": []}
    return argparse.Namespace(**(base | kw))


def test_every_ready_config_and_each_two_stage_stage_is_a_job() -> None:
    jobs = discover(ROOT / "configs")
    names = {j.name for j in jobs}
    recipes = {"two-stage", "sdxl-two-stage"}
    stems = {p.stem for p in (ROOT / "configs").glob("*.yaml")} - recipes
    assert stems | {f"{r}/{stage}" for r in recipes for stage in ("concept", "person")} == names
    assert {"sdxl-t2i-lora", "sdxl-dreambooth-lora", "sdxl-dreambooth-full"} <= names
    assert {j.name for j in select(jobs, "full")} == {s for s in stems if s.endswith("-full")}
    assert [j.name for j in select(jobs, "two-stage,sd15-t2i-lora")] == ["two-stage/concept", "two-stage/person",
                                                                         "sd15-t2i-lora"]


def test_a_job_changes_only_what_a_short_check_must(tmp_path: Path) -> None:
    jobs = {j.name: j for j in discover(ROOT / "configs")}
    t2i, db = jobs["sd2-768-t2i-lora"], jobs["sd15-dreambooth-full"]
    adapt(t2i, _args(), tmp_path, cuda=True)
    adapt(db, _args(resolution=64, validation_steps=1, set=["save.verify=false", "train.batch_size=2"]), tmp_path,
          cuda=False)
    train = t2i.config["train"]
    assert t2i.config["model"]["base"] == "real-sd2-768" and t2i.resolution == 768
    assert train["lora"] == {"rank": 16, "alpha": 16} and train["snr_gamma"] == 5.0
    assert train["gradient_accumulation_steps"] == 4 and train["gradient_checkpointing"] is True
    assert train["max_steps"] == 20 and train["lr_warmup_steps"] == 5  # 100 warm-up steps do not fit in 20
    assert t2i.config["checkpoint"]["every"] == 10 and t2i.config["validation"]["every"] == 20
    assert t2i.mixed_precision == "fp16" and t2i.images_per_step == 4
    assert Path(t2i.config["data"]["train_dir"]).parent == tmp_path / "data"
    assert db.config["model"]["base"] == "real-sd15" and db.resolution == 64
    assert db.mixed_precision == "no" and "fp16 needs CUDA" in db.note  # on a CPU
    assert db.config["train"]["learning_rate"] == 2.0e-6 and db.config["data"]["with_prior_preservation"]
    assert db.config["data"]["num_class_images"] == 2 and db.config["data"]["class_generation_steps"] == 1
    assert db.config["data"]["instance_prompt"] == "a photo of sks person"
    assert db.config["save"]["verify"] is False and db.images_per_step == 4  # --set: batch 2, + class images


def test_resume_verdict_tells_exact_noise_and_lost_state_apart() -> None:
    torch.manual_seed(0)
    half = {"w": torch.randn(100)}
    straight = {"w": half["w"] + 0.1 * torch.randn(100)}  # moved by ~1.0 in the resumed steps
    assert resume_verdict(straight, {"w": straight["w"].clone()}, half, 0.01)["resume"] == "bitwise"
    noisy = resume_verdict(straight, {"w": straight["w"] + 1e-6 * torch.randn(100)}, half, 0.01)
    assert noisy["resume_exact"] and noisy["resume"].startswith("yes") and noisy["resume_ratio"] < 1e-4
    lost = resume_verdict(straight, {"w": half["w"] + 0.1 * torch.randn(100)}, half, 0.01)
    assert not lost["resume_exact"] and lost["resume"].startswith("NO") and lost["resume_ratio"] > 0.5
    assert not resume_verdict(straight, {"v": straight["w"]}, half, 0.01)["resume_exact"]


def test_steady_step_time_leaves_out_the_warm_up_steps() -> None:
    assert steady_step_seconds({1: 9.0, 2: 5.0, 3: 1.0, 4: 1.2, 5: 1.1}) == 1.1
    assert steady_step_seconds({1: 9.0, 2: 2.0}) == 2.0
    assert steady_step_seconds({}) is None
