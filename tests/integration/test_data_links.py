"""A dataset of links through the real CLI: ``dataset check``, ``dataset build`` and a short ``train``.

The folder a user curates from a photo library: file links (absolute and relative), a linked sub-folder and a
broken link, captioned by ``metadata.jsonl``. Before the link rule (``sdtune.data.walk``) check refused every
link as "escapes the source folder" and "not listed", train stopped and build wrote one image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli, tiny_config, write_config


def _linked_dataset(tmp_path: Path) -> Path:
    lib, ds = tmp_path / "library", tmp_path / "dataset"
    for i, name in enumerate(["p0.png", "p1.png", "album/a0.png", "album/a1.png"]):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(lib / name)
    ds.mkdir()
    (ds / "p0.png").symlink_to(lib / "p0.png")
    (ds / "p1.png").symlink_to(Path("../library/p1.png"))
    (ds / "album").symlink_to(lib / "album", target_is_directory=True)
    (ds / "gone.png").symlink_to(lib / "deleted.png")
    rows = [{"file_name": n, "text": f"a photo {i}"} for i, n in enumerate(["p0.png", "p1.png", "album/a0.png",
                                                                           "album/a1.png"])]
    (ds / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ds


@pytest.mark.slow  # three CLI starts and a 2-step training on the tiny model
def test_a_folder_of_links_checks_builds_and_trains(tmp_path: Path) -> None:
    ds = _linked_dataset(tmp_path)
    check = run_cli("dataset", "check", str(ds), "--json")
    report = json.loads(check.stdout)
    assert report["ok"] and report["images"] == 4 and report["errors"] == [], check.stdout
    assert [w for w in report["warnings"] if "gone.png" in w and "broken link" in w], report["warnings"]
    assert not [w for w in report["warnings"] if "escapes" in w or "not listed" in w], report["warnings"]

    out = tmp_path / "built"
    built = run_cli("dataset", "build", str(ds), str(out), "--no-progress")
    assert "wrote 4 images" in built.stdout, built.stdout
    assert not any(p.is_symlink() for p in out.rglob("*"))  # the targets' pixels, never a link
    assert (out / "album" / "a1.png").is_file()

    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path / "run", {"train_dir": str(ds)},
                                                             {"max_steps": 2}))
    trained = run_cli("train", str(config))
    assert "Traceback" not in trained.stdout + trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["status"] == "finished" and metrics["steps"] == 2 and metrics["images"] == 4, metrics
