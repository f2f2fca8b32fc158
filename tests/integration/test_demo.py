"""``sdtune demo --quick``: the README's main command runs end to end, offline, and reports where things are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_demo_quick(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--out", str(out))
    assert "stage 2: person" in proc.stdout and "report:" in proc.stdout
    results = json.loads((out / "report" / "results.json").read_text())
    assert list(results["table"]) == ["base", "stage 1: concept", "stage 2: person"]
    for row in results["table"].values():
        assert 0.0 <= row["old_both"] <= 1.0 and row["clip_score_old"] > 0
    html = (out / "report" / "index.html").read_text()
    assert html.count("<img") >= 12
    assert (out / "person" / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert (out / "concept" / "model" / "model_index.json").exists()
