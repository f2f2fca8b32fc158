"""Is a run folder finished, and are its outputs (lora/, model/) those of its newest training?

Decided from the disk alone: ``metrics.json`` says ``finished`` at step S (written after the outputs), and no
checkpoint lies beyond S. A finished run resumed with a larger ``train.max_steps`` and stopped at step 12 of 20
has a step-12 checkpoint while its metrics and outputs still say step 8: it is unfinished, and a command that
reads its outputs must say so instead of silently using the step-8 ones.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from sdtune.errors import SdtuneError


@dataclass
class RunProgress:
    """Where a run stands. ``step``: the newest checkpoint (or the finished step); ``max_steps``: its config's."""

    path: Path
    finished: bool
    step: int
    max_steps: int | None
    outputs_step: int | None  # the step lora/ and model/ were written at (metrics.json), None when never
    trained: bool = True  # False: no metrics.json and no checkpoint (a generation profile, a hand-made folder)

    def resume_command(self, shown: str | Path | None = None) -> str:
        return f"sdtune train {shlex.quote(str(shown or self.path))} --resume latest"

    def unfinished_line(self, shown: str | Path | None = None) -> str:
        """``r3 stopped at step 12 of 20; `sdtune train r3 --resume latest` to finish`` (plus what the old outputs
        are, when it has any)."""
        name = str(shown or self.path)
        total = f" of {self.max_steps}" if self.max_steps else ""
        if self.step == 0:
            text = f"{name} has not trained a step yet (no checkpoint); `sdtune train {shlex.quote(name)}` to train it"
        else:
            text = f"{name} stopped at step {self.step}{total}; `{self.resume_command(name)}` to finish"
        if self.outputs_step is not None:
            text += (f" (its lora/ and model/ are the outputs of step {self.outputs_step}, from before it was "
                     "resumed)")
        return text


def _max_steps(run_dir: Path) -> int | None:
    from sdtune.run_folder import read_run_config

    try:
        data = read_run_config(run_dir)
    except SdtuneError:
        return None
    value = (data.get("train") or {}).get("max_steps", 1000)
    return value if isinstance(value, int) else None


def run_progress(run_dir: str | Path) -> RunProgress:
    """Read a run folder's progress (see the module docstring); never raises for a missing or odd file."""
    from sdtune.run_folder import list_checkpoints, read_metrics, step_of

    path = Path(run_dir).expanduser()
    metrics = read_metrics(path) or {}
    done = metrics.get("status") == "finished"
    checkpoints = list_checkpoints(path / "checkpoints")
    newest = step_of(checkpoints[-1]) if checkpoints else 0
    steps = metrics.get("steps") if isinstance(metrics.get("steps"), int) else newest  # no count: the newest
    outputs_step = steps if done else metrics.get("outputs_step")
    finished = done and newest <= steps
    trained = bool(checkpoints) or (path / "metrics.json").is_file()
    return RunProgress(path, finished, max(newest, outputs_step or 0), _max_steps(path), outputs_step, trained)


def mark_unfinished(run_dir: Path, step: int) -> None:
    """After checkpoint ``step``: a metrics.json that says ``finished`` at an earlier step now says
    ``unfinished`` (with the step, and the step its outputs are from), so that people and tools reading it
    directly are not told the run is done. ``run_progress`` reaches the same verdict from the checkpoints."""
    from sdtune.atomic import atomic_write_json
    from sdtune.run_folder import read_metrics

    metrics = read_metrics(run_dir)
    if metrics is None or metrics.get("status") != "finished" or not isinstance(metrics.get("steps"), int):
        return
    if metrics["steps"] >= step:
        return
    max_steps = _max_steps(Path(run_dir))
    atomic_write_json(Path(run_dir) / "metrics.json", metrics | {
        "status": "unfinished", "step": step, "outputs_step": metrics["steps"],
        "note": f"resumed past step {metrics['steps']} (to train.max_steps={max_steps}); lora/ and model/ are the "
                f"outputs of step {metrics['steps']} until the run finishes"})


def require_finished(run_dir: str | Path, shown: str | Path | None = None) -> RunProgress:
    """Raise one line (what step it stopped at, how to finish it) unless the run's outputs are its final ones.

    A folder with neither metrics.json nor a checkpoint (a generation profile such as RUN/stack, a LoRA folder
    made by hand) passes: nothing says it was trained further than its files.
    """
    progress = run_progress(run_dir)
    if progress.trained and not progress.finished:
        raise SdtuneError(progress.unfinished_line(shown or run_dir))
    return progress
