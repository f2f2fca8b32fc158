"""``RUN/logs/progress.jsonl``: one line per optimizer step (step, of how many, loss, lr, seconds), for watchers.

The job page and `sdtune jobs list` draw live progress and the loss curve from the run folder alone (no tracker
needs to be on). Appended by process 0 and flushed per step: a few hundred bytes a step. Each start of training
first cuts the file to the steps up to where it starts (0 for a fresh run, the checkpoint's step on a resume):
the lines past it belong to a branch that no longer exists (a resume from an older checkpoint, a run started over
in its folder), so every line in the file is the live branch's and each step has one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sdtune.run_folder import PROGRESS_FILE, progress_row


class ProgressLog:
    """Appends a step's numbers to ``RUN/logs/progress.jsonl`` (only when ``enabled``: process 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True, from_step: int = 0) -> None:
        self.path = Path(run_dir) / PROGRESS_FILE
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._cut_to(from_step)

    def step(self, step: int, max_steps: int, loss: float, lr: float, seconds: float,
             terms: dict[str, float] | None = None) -> None:
        """One line per step; ``terms``: the loss terms beside the diffusion loss (``preservation_loss``, ...),
        which ``loss`` includes."""
        if not self.enabled:
            return
        line = json.dumps({"step": step, "max_steps": max_steps, "loss": round(float(loss), 6), "lr": float(lr),
                           "seconds": round(float(seconds), 4), "time": round(time.time(), 3),
                           **{name: float(f"{value:.6g}") for name, value in (terms or {}).items()}})
        self._append(line)

    def _cut_to(self, step: int) -> None:
        """Keep the lines of steps 1..``step`` (rewritten atomically, only when there is something to drop)."""
        from sdtune.atomic import atomic_write_text

        try:
            lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return
        kept = [line for line in lines if (row := progress_row(line)) is not None and row["step"] <= step]
        if kept != lines:
            try:
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))
            except OSError:
                self.enabled = False  # as below: the watcher's file never stops training

    def _append(self, line: str) -> None:
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            self.enabled = False  # a full disk must not stop training over a watcher's file

