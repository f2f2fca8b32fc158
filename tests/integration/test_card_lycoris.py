"""A LoHa / LoKr run's model card loads what the run wrote (found by a newcomer: it told diffusers to load
``RUN/lora/pytorch_lora_weights.safetensors``, which such a run does not have, so the pasted code failed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_images

pytestmark = pytest.mark.slow


def test_a_loha_card_runs_as_pasted(tmp_path: Path) -> None:
    data = make_images(tmp_path / "data", 2, captions=["a red ball"])
    run = tmp_path / "run"
    (tmp_path / "c.yaml").write_text("model:\n  base: tiny\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trained = subprocess.run([sys.executable, "-m", "sdtune", "train", str(tmp_path / "c.yaml"),
                              f"data.train_dir={data}", "data.resolution=32", "train.max_steps=2",
                              "train.lora.kind=loha", "train.lora.rank=2", f"output_dir={run}",
                              "logging.trackers=[]", "save.verify=false"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert not (run / "lora" / "pytorch_lora_weights.safetensors").exists()
    code = re.search(r"```python\n(.*?)```", (run / "README.md").read_text(), re.S).group(1)  # type: ignore[union-attr]
    assert "pytorch_lora_weights" not in code and "lycoris.safetensors" in code, code
    code = re.sub(r"pipe\((.*?)\)\.images\[0\]", r"pipe(\1, num_inference_steps=2).images[0]", code)  # fast, same code
    (tmp_path / "card.py").write_text(code, encoding="utf-8")
    ran = subprocess.run([sys.executable, "card.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (tmp_path / "sample.png").stat().st_size > 0
