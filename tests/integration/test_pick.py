"""``sdtune pick``: every checkpoint of a LoRA run measured on the same prompts and seeds, the kept one named with
its numbers and exported (a run folder with its diffusers LoRA, and a kohya file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sdtune.evaluation.testing import build_tiny_clip
from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def test_pick_names_the_checkpoint_with_its_numbers_and_exports_it(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path / "run", {"instance_dir": str(make_images(tmp_path / "me", 3)),
                                         "instance_prompt": "a photo of sks dog"},
                      {"max_steps": 6, "lora": {"rank": 2}}, checkpoint={"every": 2, "keep": 5})
    run_cli("train", str(write_config(tmp_path / "run.yaml", cfg)))
    clip = build_tiny_clip(tmp_path / "clip")
    proc = run_cli("pick", str(tmp_path / "run"), "--prompt", "a photo of sks dog giving a thumbs up",
                   "--reference", str(tmp_path / "me"), "--clip", str(clip), "--seeds", "2", "--steps", "2",
                   env={"OMP_NUM_THREADS": "1"})
    record = json.loads((tmp_path / "run" / "picked" / "pick.json").read_text())
    assert [r["step"] for r in record["checkpoints"]] == [2, 4, 6]
    assert record["step"] in (2, 4, 6) and "<- keep" in proc.stdout and "CLIP-I" in proc.stdout
    kept = [r for r in record["checkpoints"] if r.get("kept")]
    assert len(kept) == 1 and kept[0]["step"] == record["step"] and kept[0]["values"]["clip_t"] > 0
    picked = load_file(str(tmp_path / "run" / "picked" / "lora" / "pytorch_lora_weights.safetensors"))
    checkpoint = load_file(str(tmp_path / "run" / "checkpoints" / f"step-{record['step']:06d}" /
                               "trainable.safetensors"))
    assert len(picked) == len(checkpoint)
    kohya = tmp_path / "run" / "export" / f"run-step-{record['step']:06d}.safetensors"
    assert any(k.startswith("lora_unet_") for k in load_file(str(kohya)))
    page = (tmp_path / "run" / "pick" / "report.html").read_text()
    assert "<title>sdtune pick: run</title>" in page and f"kept: step {record['step']}" in page  # the decision too
    assert (tmp_path / "run" / "picked" / "config.yaml").is_file(), "a run folder: sdtune generate takes it"
