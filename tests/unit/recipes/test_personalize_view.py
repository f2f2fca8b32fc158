"""The personalize board: a log line per state change, and a table with step, loss, where and ETA."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from sdtune.recipes.personalize_view import Board


def test_state_changes_are_logged_once_and_the_table_shows_progress(tmp_path: Path) -> None:
    said: list[str] = []
    board = Board(["ann", "bob"], tmp_path / "personalize.log", said.append, live=False)
    with board:
        board.change("ann", "queued")
        board.change("ann", "running", where="node1 cuda:0", attempts=1)
        board.change("ann", "running", where="node1 cuda:0", attempts=1)  # no change: no line
        board.progress("ann", 10, 100, 0.25)
        board.rows["ann"].pace = (board.rows["ann"].pace[0] - 10.0, 0)  # 10 steps in 10 s: 90 s left
        board.change("bob", "retrying", attempts=2, note="CUDA out of memory")
    log = (tmp_path / "personalize.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in log] == [
        "ann: queued", "ann: training on node1 cuda:0", "bob: retrying (attempt 2): CUDA out of memory"]
    assert said == [line.split(" ", 2)[2] for line in log], "without a terminal the lines go to stdout too"
    console = Console(file=io.StringIO(), width=120)
    console.print(board._table())
    text = console.file.getvalue()
    assert "ann" in text and "training" in text and "10/100" in text and "0.2500" in text and "node1 cuda:0" in text
    assert "90s" in text and "1 training, 1 retrying" in text
