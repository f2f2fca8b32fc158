"""``RUN/logs/progress.jsonl``: one line per optimizer step (step, of how many, loss, lr, seconds), for watchers.

The job page and `sdtune jobs list` draw live progress and the loss curve from the run folder alone (no tracker
needs to be on). Appended by process 0 and flushed per step: a few hundred bytes a step. A resumed run appends
steps again from its checkpoint on; :func:`read_progress` keeps the last line of each step, so the curve is the
live branch's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

FILE = Path("logs") / "progress.jsonl"


class ProgressLog:
    """Appends a step's numbers to ``RUN/logs/progress.jsonl`` (only when ``enabled``: process 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / FILE
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def step(self, step: int, max_steps: int, loss: float, lr: float, seconds: float) -> None:
        if not self.enabled:
            return
        line = json.dumps({"step": step, "max_steps": max_steps, "loss": round(float(loss), 6), "lr": float(lr),
                           "seconds": round(float(seconds), 4), "time": round(time.time(), 3)})
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError:
            self.enabled = False  # a full disk must not stop training over a watcher's file


def read_progress(run_dir: Path, max_points: int = 2000) -> list[dict[str, Any]]:
    """The steps logged so far, ordered by step (the last line of each step wins); unreadable lines are skipped.

    ``max_points`` thins a long curve evenly (the last step is always kept).
    """
    path = Path(run_dir) / FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            by_step[row["step"]] = row
    rows = [by_step[s] for s in sorted(by_step)]
    if len(rows) > max_points:
        stride = len(rows) / max_points
        rows = [rows[int(i * stride)] for i in range(max_points - 1)] + [rows[-1]]
    return rows
