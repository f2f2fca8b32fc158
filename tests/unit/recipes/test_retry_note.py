"""A finished person's retry note says what its train.log shows, never a resume that did not happen.

Found by CI: a person whose run finished just before its Ray worker was killed was retried, the retry found the
run finished and started nothing, and the summary still said "resumed from its latest checkpoint"."""

from __future__ import annotations

from pathlib import Path

from sdtune.engine.unit import attempt_header
from sdtune.recipes.people_on_engine import retry_note
from sdtune.training.resume import resumed_line

# written by the same functions the engine and the trainer write with (one format, one place)
TRAIN = attempt_header(0, "vm", "cuda:0", ["/v/bin/python", "-m", "sdtune", "train", "/p/bob/config.yaml"]
                       ).replace("attempt 0 ", "attempt {n} ")
PICK = attempt_header(1, "vm", "cuda:0", ["/v/bin/python", "-m", "sdtune", "pick", "/p/bob", "--prompts", "x"])
RESUMED = resumed_line("/p/bob/checkpoints/step-000006", 6) + "\n"


def _log(tmp_path: Path, text: str) -> Path:
    log = tmp_path / "train.log"
    log.write_text(text, encoding="utf-8")
    return log


def test_a_retry_that_resumed_names_its_step(tmp_path: Path) -> None:
    text = TRAIN.format(n=1) + "  run folder: /p/bob\n" + TRAIN.format(n=2) + \
        RESUMED + PICK
    assert retry_note(_log(tmp_path, text), 2) == "retried 1x, resumed from step 6"


def test_a_retry_with_no_checkpoint_started_over(tmp_path: Path) -> None:
    text = TRAIN.format(n=1) + TRAIN.format(n=2) + "  run folder: /p/bob\n"
    assert retry_note(_log(tmp_path, text), 2) == "retried 1x, started over (no checkpoint yet)"


def test_a_retry_that_found_the_run_finished_says_so(tmp_path: Path) -> None:
    """The last attempt (2) wrote no header: the run had finished; the earlier resume line is attempt 1's own."""
    text = TRAIN.format(n=1) + resumed_line("/p/bob/checkpoints/step-000002", 2) + "\n" + PICK
    assert retry_note(_log(tmp_path, text), 2) == "retried 1x: the run had already finished"
