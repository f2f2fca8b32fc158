"""What ``sdtune personalize`` shows while people train: a live table on a terminal, a line per change in a log.

One row per person: state (queued, training, retrying, finished, failed, stopped, skipped), step/steps, loss, where
it runs (node, device), attempts and an ETA (the current attempt's pace so far times the steps left). Every state
change is also one line in ``OUT/personalize.log`` (and on stdout when it is not a terminal, e.g. nohup or Slurm),
so that a run of hundreds of people can be followed with ``tail -f``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHOWN = {"running": "training"}  # the engine's word -> this table's


@dataclass
class Row:
    name: str
    state: str = ""  # "" until submitted
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    where: str = ""
    attempts: int = 0
    note: str = ""
    pace: tuple[float, int] | None = None  # (time, step) when this attempt's progress was first seen

    def eta(self, now: float) -> str:
        if self.state != "training" or self.pace is None or self.step is None or not self.steps:
            return ""
        seconds, done = now - self.pace[0], self.step - self.pace[1]
        if done <= 0:
            return ""
        left = seconds / done * (self.steps - self.step)
        return f"{left / 60:.0f}m" if left >= 120 else f"{left:.0f}s"


class Board:
    """The rows, the log file, and (on a terminal) a rich live table redrawn by :meth:`refresh`."""

    def __init__(self, names: list[str], log: Path, echo: Callable[[str], None] = print,
                 live: bool | None = None) -> None:
        self.rows = {name: Row(name) for name in names}
        self.log_path = log
        self.echo = echo
        self.live_wanted = sys.stdout.isatty() if live is None else live
        self._live: Any = None

    def __enter__(self) -> Board:
        if self.live_wanted:
            from rich.live import Live

            self._live = Live(self._table(), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None

    def note(self, text: str) -> None:
        """A line for the log (and the console when there is no live table)."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self._live is not None:
            self._live.console.print(text)
        else:
            self.echo(text)

    def change(self, name: str, state: str, *, where: str = "", attempts: int | None = None, note: str = "") -> None:
        """A person's new state; logged when it differs from the last one."""
        row = self.rows[name]
        state = SHOWN.get(state, state)
        if attempts is not None:
            row.attempts = attempts
        if where:
            row.where = where
        if state == row.state and not note:
            return
        row.state, row.note = state, note or row.note
        row.pace = None
        extra = f" on {row.where}" if state == "training" and row.where else ""
        attempt = f" (attempt {row.attempts})" if row.attempts > 1 and state in ("training", "retrying") else ""
        self.note(f"{name}: {state}{extra}{attempt}{': ' + note if note else ''}")

    def progress(self, name: str, step: int | None, steps: int | None, loss: float | None) -> None:
        row = self.rows[name]
        row.step, row.steps, row.loss = step, steps or row.steps, loss if loss is not None else row.loss
        if row.state == "training" and row.pace is None and step is not None:
            row.pace = (time.time(), step)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._table())

    def _table(self):
        from rich.table import Table

        table = Table(show_lines=False, expand=False)
        for column in ("person", "state", "step", "loss", "where", "attempts", "ETA"):
            table.add_column(column, justify="right" if column in ("step", "loss", "attempts", "ETA") else "left")
        now = time.time()
        for row in self.rows.values():
            step = f"{row.step or 0}/{row.steps}" if row.steps else ("" if row.step is None else str(row.step))
            table.add_row(row.name, row.state, step, "" if row.loss is None else f"{row.loss:.4f}", row.where,
                          str(row.attempts or ""), row.eta(now))
        counts: dict[str, int] = {}
        for row in self.rows.values():
            if row.state:
                counts[row.state] = counts.get(row.state, 0) + 1
        table.caption = ", ".join(f"{n} {state}" for state, n in counts.items())
        return table
