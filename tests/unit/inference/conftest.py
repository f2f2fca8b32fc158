"""Fake run folders built once per session from the tiny model (a LoRA run, a full run, a second LoRA)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.inference.testing import make_lora_file, make_run_folder


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "lora": make_run_folder(root / "lora-run", kind="lora", seed=1),
        "full": make_run_folder(root / "full-run", kind="full", seed=2),
        "other_lora": make_lora_file(root / "other-lora", seed=3),
    }
