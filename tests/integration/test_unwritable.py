"""Folders a command cannot write are named before its first step, never a late ``PermissionError`` traceback.

The folders are really unwritable for root (``tests.helpers.locked_folder``: ``chattr +i`` or sysfs), since tests
and CI run as root, which ignores mode bits. The feature cache is the one exception: a run trains without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import locked_folder, make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _refused(*args: str, key: str, folder: Path, env: dict | None = None) -> str:
    proc = run_cli(*args, check=False, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write to {folder}") and f"({key})" in line, proc.stderr
    return proc.stdout + proc.stderr


def _config(tmp_path: Path, **data) -> Path:
    data = {"instance_dir": str(make_images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks dog"} | data
    return write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", data, {"lora": {"rank": 2},
                                                                                   "max_steps": 2}))


def test_an_unwritable_feature_cache_trains_uncached_with_a_note(tmp_path: Path) -> None:
    with locked_folder(tmp_path) as locked:
        proc = run_cli("train", str(_config(tmp_path, cache_dir=str(locked / "features"))))
    assert "done: 2 steps" in proc.stdout
    assert f"note: cannot write to {locked / 'features'} (data.cache_dir)" in proc.stdout
    assert "training without the latent/text cache" in proc.stdout
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
