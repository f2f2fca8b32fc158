"""Resume versus the data folders through the real CLI: a changed stream is refused with what changed, unless
``--new-data-epoch``, which is said and recorded; a checkpoint without a data record still resumes.

Before the record existed, every resume below continued silently (its saved position pointing into another
stream). Exact resume on unchanged data is covered by test_train_resume.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtune.training import checkpoint as ckpt
from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow  # four CLI runs on the tiny model


def _refused(config: str, *extra: str) -> str:
    proc = run_cli("train", config, "train.max_steps=6", "--resume", "latest", *extra, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "the training data changed since it was saved" in proc.stderr and "--new-data-epoch" in proc.stderr
    return proc.stderr


def test_changed_data_is_refused_then_a_new_data_epoch_is_recorded(tmp_path: Path) -> None:
    photos = make_images(tmp_path / "photos", 4, captions=["a red disc", "a disc on red"])
    run = tmp_path / "run"
    cfg = tiny_config(run, {"train_dir": str(photos)}, {"max_steps": 4}, checkpoint={"every": 2, "keep": 10})
    run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    config = str(run / "config.yaml")
    assert json.loads((run / "checkpoints" / "step-000004" / "data.json").read_text())["subsets"]

    original = {p: p.read_bytes() for p in photos.iterdir()}
    pixels = np.asarray(Image.open(photos / "img02.png")).copy()
    pixels[0, 0] ^= 1  # one bit of one pixel
    Image.fromarray(pixels).save(photos / "img02.png")
    (photos / "img01.png").unlink()
    (photos / "img00.txt").write_text("a blue disc", encoding="utf-8")
    Image.new("RGB", (40, 36)).save(photos / "img09.png")
    (photos / "img09.txt").write_text("a black square", encoding="utf-8")
    stderr = _refused(config)  # every kind at once (tests/unit/training/test_data_resume.py: each alone)
    assert ("1 image added, 1 image removed, 1 image edited (other bytes: pixels, size or bucket may differ), "
            "1 caption changed (img09.png, img01.png, img02.png, img00.png)") in stderr, stderr
    assert "step-000004" in stderr and "new data epoch at step 4" in stderr, stderr
    for path in (photos / "img09.png", photos / "img09.txt"):
        path.unlink()
    for path, data in original.items():
        path.write_bytes(data)

    (photos / "img00.txt").write_text("a blue disc", encoding="utf-8")
    resumed = run_cli("train", config, "train.max_steps=6", "--resume", "latest", "--new-data-epoch")
    assert "a new data epoch starts at step 4" in resumed.stdout and "1 caption changed" in resumed.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["history"][-1]["data"]["new_data_epoch"] is True
    assert "1 caption changed (img00.png)" in metrics["history"][-1]["data"]["changed"][0]
    assert "a new data epoch started" in (run / "config.yaml").read_text()
    state = json.loads((run / "checkpoints" / "step-000006" / ckpt.STATE_FILE).read_text())
    assert state["extra"]["data_origin"] == 4 and state["history"][-1]["data"]["new_data_epoch"] is True

    (run / "checkpoints" / "step-000006" / ckpt.DATA_FILE).unlink()  # as a checkpoint of an older sdtune
    old = run_cli("train", config, "train.max_steps=7", "--resume", "latest")
    assert "note: checkpoint without a data record" in old.stdout and "done: 7 steps" in old.stdout
