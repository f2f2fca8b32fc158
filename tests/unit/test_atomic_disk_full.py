"""A full disk while writing outputs: one clear error, no temporary leftovers, the previous version intact.

The failure is a real one from the OS: a child process with a file size limit (RLIMIT_FSIZE, SIGXFSZ ignored)
gets EFBIG from write(), as a full disk gives ENOSPC.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("resource")

CHILD = r"""
import os, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
import torch
from PIL import Image
from safetensors.torch import save_file
from sdtune.atomic import atomic_copy, atomic_save, atomic_write_text, write_folder
from sdtune.errors import DiskFullError

out = Path(sys.argv[1])
attempts = {
    "folder": lambda: write_folder(out / "lora", lambda tmp: save_file({"w": torch.zeros(10000)}, str(tmp / "w.st"))),
    "text": lambda: atomic_write_text(out / "metrics.json", "x" * 30000),
    "image": lambda: atomic_save(out / "samples" / "00.png",
                                 Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3)).save),
    "copy": lambda: atomic_copy(out / "big.safetensors", out / "export" / "sks.safetensors"),
}
for name, attempt in attempts.items():
    try:
        attempt()
        print(name, "written")
    except DiskFullError as exc:
        print(name, "DiskFullError", exc)
"""


def test_disk_full_leaves_old_outputs_and_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "old.st").write_text("previous adapter")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "big.safetensors").write_bytes(b"x" * 30000)  # an embedding to hand on, over the child's limit
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    for name in ("folder", "text", "image", "copy"):
        assert lines[name].startswith("DiskFullError could not write"), proc.stdout
        assert "File too large" in lines[name] and "Nothing half-written was left" in lines[name]
    assert "lora/" in lines["folder"] and "ulimit" in lines["folder"]
    assert (tmp_path / "lora" / "old.st").read_text() == "previous adapter"
    assert (tmp_path / "metrics.json").read_text() == "{}"
    leftovers = sorted(p.name for p in tmp_path.rglob(".*"))
    assert not leftovers, leftovers
    assert not (tmp_path / "samples" / "00.png").exists()
    assert not (tmp_path / "export" / "sks.safetensors").exists()  # a cut-short copy never takes the name
