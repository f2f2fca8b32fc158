"""Tiny random CLIP / ViT backbones and fake run folders, built once per session (all offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtune.evaluation.testing import build_tiny_clip, build_tiny_vit
from sdtune.inference.testing import make_run_folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vit(tmp_path_factory.mktemp("vit") / "vit")


@pytest.fixture(scope="session")
def eval_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-runs")
    return {
        "lora": make_run_folder(root / "lora-run", kind="lora", seed=1),
        "full": make_run_folder(root / "full-run", kind="full", seed=2),
        "noop": make_run_folder(root / "noop-run", kind="lora", seed=3, scale=0.0),  # LoRA with B = 0: the base
    }


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("refs")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"ref{i}.jpg")
    return folder
