"""Resume = the saved state + what the user changes now; a diverging run leaves a good checkpoint; a full disk
gives one clear line. Real CLI runs on the tiny model."""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtune.training import checkpoint as ckpt
from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _dreambooth(tmp_path: Path, **data) -> dict:
    return {"instance_dir": str(make_images(tmp_path / "inst", 4)), "instance_prompt": "a photo of sks dog", **data}


def _names(run: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(run / "checkpoints")]


def _finite(folder: Path) -> bool:
    return all(bool(t.isfinite().all()) for t in load_file(str(folder / "trainable.safetensors")).values())


def test_resume_applies_changes_records_them_and_branches(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, _dreambooth(tmp_path, repeats=3), {"lora": {"rank": 2}, "max_steps": 8},
                      checkpoint={"every": 2, "keep": 10})
    run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    config = str(run / "config.yaml")

    refused = run_cli("train", config, "train.lora.rank=4", "train.seed=1", "--resume", "latest", check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "train.lora.rank 2 -> 4" in refused.stderr and "train.seed 42 -> 1" in refused.stderr

    resumed = run_cli("train", config, "train.learning_rate=1e-5", "train.max_steps=6",
                      "logging.trackers=[tensorboard]", "--resume", str(run / "checkpoints" / "step-000004"))
    assert "train.learning_rate 0.001 -> 1e-05" in resumed.stdout
    # the older trajectory is moved aside, not deleted, and is no longer live
    assert _names(run) == ["step-000002", "step-000004", "step-000006"]
    aside = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("abandoned-")]
    assert len(aside) == 1 and {p.name for p in aside[0].iterdir()} >= {"step-000006", "step-000008", "metrics.json"}
    # the new rate is the one the optimizer used (loading the checkpoint restored 1e-3)
    optimizer = torch.load(run / "checkpoints" / "step-000006" / "optimizer.pt", weights_only=True)
    assert [g["lr"] for g in optimizer["param_groups"]] == [1e-5]
    # recorded: metrics.json history, config.yaml, the tracker, every later checkpoint
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["history"][-1]["changes"]["train.learning_rate"] == [0.001, 1e-05]
    assert metrics["history"][-1]["branch"]["moved"] == ["step-000006", "step-000008"]
    saved = (run / "config.yaml").read_text()
    assert "learning_rate: 1.0e-05" in saved and "# resumed at step 4 from step-000004" in saved
    state = json.loads((run / "checkpoints" / "step-000006" / "state.json").read_text())
    assert state["history"][-1]["changes"]["train.max_steps"] == [8, 6]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    texts = []
    for events in (run / "logs").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        texts += acc.Tags().get("tensors", [])
    assert any("resume" in tag for tag in texts), texts
    # the model card counts images, not repeats
    assert "| training images | 4 (12 examples per epoch with repeats) |" in (run / "README.md").read_text()

    # `latest` is the newest checkpoint of the live branch
    again = run_cli("train", config, "train.max_steps=7", "--resume", "latest")
    assert "step-000006 (step 6)" in again.stdout and "done: 7 steps" in again.stdout


def test_divergence_names_a_good_checkpoint_that_resumes_at_a_low_rate(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, _dreambooth(tmp_path), {"max_steps": 2}, checkpoint={"every": 2, "keep": 3})
    run_cli("train", str(write_config(tmp_path / "full.yaml", cfg)))  # full fine-tuning, clipping on (default)
    config = str(run / "config.yaml")

    proc = run_cli("train", config, "train.learning_rate=100", "train.max_steps=20", "checkpoint.every=1",
                   "--resume", "latest", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr[proc.stderr.index("error:"):]
    good = run / "checkpoints" / "step-000002"
    assert f"The last good checkpoint is {good}" in message and "max_grad_norm" not in message, message
    assert _names(run) == ["step-000002"], "the unjudged step-3 checkpoint must not stay live"
    assert list((run / "checkpoints").glob("diverged-*/step-000003"))
    assert _finite(good)

    suggested = shlex.split(re.search(r"e\.g\. sdtune (train .*)$", message.strip()).group(1))
    assert suggested[-2:] == ["--resume", str(good)]
    lower = [arg for arg in suggested if not arg.startswith("train.learning_rate=")] + ["train.learning_rate=1e-5",
                                                                                          "train.max_steps=4"]
    done = run_cli(*lower)
    assert "done: 4 steps" in done.stdout
    final = json.loads((run / "metrics.json").read_text())["final_loss"]
    assert final is not None and final < 10


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG, as a full disk with ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_disk_full_during_a_checkpoint_is_one_line_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(run, _dreambooth(tmp_path), {"lora": {"rank": 2}})
    # the LoRA weights (40 KB) fit under the limit, the optimizer state (110 KB) does not
    proc = subprocess.run([sys.executable, "-m", "sdtune", "train", str(write_config(tmp_path / "c.yaml", cfg))],
                          capture_output=True, text=True, env=os.environ.copy(), preexec_fn=_file_size_limit(60_000),
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if "error:" in ln][0]
    assert "could not write checkpoint step-000002" in line and "File too large" in line and "needs about" in line
    assert list((run / "checkpoints").iterdir()) == []


def test_a_pivotal_run_resumes_longer_with_the_same_phases_and_a_new_token_rate(tmp_path: Path) -> None:
    """Found by a newcomer: pivotal tuning (the person default) could never be trained longer on resume -
    train.max_steps moved its phases and ti_fraction / lora_start were refused outright - and the token's learning
    rate was refused as if it were the token. Both apply now: the shares that keep the steps done where they were,
    and the embedding's rate, set in the optimizer after loading."""
    run = tmp_path / "run"
    learned = {"token": "sks", "learning_rate": 5e-2, "ti_fraction": 0.5, "lora_start": 0.5}
    cfg = tiny_config(run, _dreambooth(tmp_path), {"lora": {"rank": 2}, "max_steps": 4,
                                                   "textual_inversion": learned},
                      checkpoint={"every": 2, "keep": 10})
    run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    config = str(run / "config.yaml")
    refused = run_cli("train", config, "train.max_steps=8", "--resume", "latest", check=False)
    assert refused.returncode == 2 and "the token trains through step 2 -> 4" in refused.stderr, refused.stderr
    longer = run_cli("train", config, "train.max_steps=8", "train.textual_inversion.ti_fraction=0.25",
                     "train.textual_inversion.lora_start=0.25", "train.textual_inversion.learning_rate=1e-3",
                     "--resume", "latest")
    assert "done: 8 steps" in longer.stdout and "train.textual_inversion.learning_rate 0.05 -> 0.001" in longer.stdout
    optimizer = torch.load(run / "checkpoints" / "step-000008" / "optimizer.pt", weights_only=True)
    assert sorted(g["lr"] for g in optimizer["param_groups"]) == [1e-3, 1e-3], optimizer["param_groups"]
