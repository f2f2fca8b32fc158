"""``RUN/logs/progress.jsonl``: one line per optimizer step (step, of how many, loss, lr, seconds), for watchers.

The job page and `sdtune jobs list` draw live progress and the loss curve from the run folder alone (no tracker
needs to be on). Appended by process 0 and flushed per step: a few hundred bytes a step. A resumed run appends
steps again from its checkpoint on; ``sdtune.run_folder.read_progress`` keeps the last line of each step, so the
curve is the live branch's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sdtune.run_folder import PROGRESS_FILE


class ProgressLog:
    """Appends a step's numbers to ``RUN/logs/progress.jsonl`` (only when ``enabled``: process 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def step(self, step: int, max_steps: int, loss: float, lr: float, seconds: float,
             terms: dict[str, float] | None = None) -> None:
        """One line per step; ``terms``: the loss terms beside the diffusion loss (``preservation_loss``, ...),
        which ``loss`` includes."""
        if not self.enabled:
            return
        line = json.dumps({"step": step, "max_steps": max_steps, "loss": round(float(loss), 6), "lr": float(lr),
                           "seconds": round(float(seconds), 4), "time": round(time.time(), 3),
                           **{name: float(f"{value:.6g}") for name, value in (terms or {}).items()}})
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            self.enabled = False  # a full disk must not stop training over a watcher's file
