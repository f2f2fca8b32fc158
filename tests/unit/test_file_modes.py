"""Files sdtune writes take the umask's mode (0644 under umask 022), not safetensors' / mkstemp's 0600 (item 2)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdtune.atomic import atomic_save, write_folder
from sdtune.data.build_output import commit
from sdtune.models.kohya import export_kohya
from sdtune.models.lora import write_lora_file


@pytest.fixture(params=[0o022, 0o027])
def umask(request) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folders_and_files_written_atomically_follow_the_umask(tmp_path: Path, umask: int) -> None:
    def write(tmp: Path) -> None:
        save_file({"w": torch.zeros(2)}, str(tmp / "weights.safetensors"))
        (tmp / "sub").mkdir(mode=0o700)

    folder = write_folder(tmp_path / "lora", write)
    assert _mode(folder / "weights.safetensors") == 0o666 & ~umask
    assert _mode(folder) == _mode(folder / "sub") == 0o777 & ~umask
    one = atomic_save(tmp_path / "one.safetensors", lambda p: save_file({"w": torch.zeros(2)}, str(p)))
    assert _mode(one) == 0o666 & ~umask


def test_lora_export_and_dataset_metadata_follow_the_umask(tmp_path: Path, umask: int) -> None:
    lora = write_lora_file(tmp_path / "lora", {"down_blocks.0.attentions.0.proj.lora_A.weight": torch.ones(2, 4),
                                                "down_blocks.0.attentions.0.proj.lora_B.weight": torch.ones(4, 2)})
    kohya = export_kohya(lora, tmp_path / "export" / "k.safetensors")
    assert _mode(kohya) == 0o666 & ~umask
    out, staging = tmp_path / "data", tmp_path / "data" / ".staging"
    staging.mkdir(parents=True)
    (staging / "a.png").write_bytes(b"x")
    commit(out, staging, ["a.png"], [{"file_name": "a.png", "text": "a"}])
    assert _mode(out / "metadata.jsonl") == 0o666 & ~umask


def test_shared_feature_cache_entries_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from sdtune.data.feature_cache import FeatureStore

    store = FeatureStore(tmp_path / "features", "latents", "abc")
    store.write("k" * 64, torch.zeros(2))
    assert _mode(store.path("k" * 64)) == 0o666 & ~umask
