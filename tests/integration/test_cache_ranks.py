"""The feature cache's "cannot be written" decision is taken by all processes together.

Each node checks its own disk (a cache folder may be node-local: writable on one node, read-only on another), and
attaching a cache waits at barriers that every process must reach; a rank that skipped the cache alone would
leave the others waiting forever. Two real processes (torchrun, gloo), each given a different cache folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = '''
import os, sys
from pathlib import Path
from accelerate import Accelerator
from sdtune.data.cache import _unwritable_on_any_rank
root = Path(sys.argv[1])
rank = int(os.environ["RANK"])
accelerator = Accelerator(cpu=True)
cache = root / ("writable" if rank == 0 else "a-file")  # rank 1's "folder" is a file: it cannot cache there
note = _unwritable_on_any_rank(cache, accelerator)
(root / f"rank{rank}.txt").write_text(repr(note))
accelerator.wait_for_everyone()
import torch.distributed as dist
dist.destroy_process_group()  # as `sdtune train` does: a rank that exits inside the group can abort in gloo's teardown
'''


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_one_rank_that_cannot_cache_turns_the_cache_off_on_every_rank(tmp_path: Path) -> None:
    (tmp_path / "writable").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert notes[0] == notes[1], notes
    assert "a-file" in notes[0] and "training without the latent/text cache" in notes[0], notes
