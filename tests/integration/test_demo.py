"""``sdtune demo --quick``: the README's main command runs end to end, offline, and reports where things are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtune.toy import world
from tests.browser import assert_fits
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_demo_quick(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--out", str(out))
    assert "stage 2: person" in proc.stdout and "report:" in proc.stdout and "ONE run" in proc.stdout
    assert "then person pivotal tuning)" in proc.stdout and "person LoRA" not in proc.stdout  # its real method
    assert "the person's token learns alone for its first 15 steps" in proc.stdout  # what checkpoint 15 is
    results = json.loads((out / "report" / "results.json").read_text())
    assert list(results["table"]) == ["base", "stage 1: concept", "stage 2: person"]
    for row in results["table"].values():
        assert 0.0 <= row["old_both"] <= 1.0 and row["clip_score_old"] > 0
        assert 0.0 <= row["composite"] <= 1.0 and "clip_score_person" not in row  # the misleading score is gone
    assert list(results["chart"]) == ["base", "stage 1", "step 15", "step 30"]  # stages and checkpoints
    assert results["results"]["stage 2: person"]["composite"]["prompts"] == [world.PERSON.composite_prompt()]
    seen = assert_fits(out / "report" / "index.html")
    assert seen["charts"] == 1 and seen["images"] >= 5 * 4  # every group's grid for every model
    # the person is learned by pivotal tuning: an embedding file and a LoRA around the token
    assert (out / "person" / "embeddings" / f"{world.PERSON.token}.safetensors").exists()
    assert (out / "person" / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert (out / "concept" / "model" / "model_index.json").exists()
