"""How far a job's run is, read from its run folder (the truth): step / steps, loss curve, ETA, samples, outputs."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sdtune.jobs.store import Job


def run_state(run_dir: Path, points: int = 400) -> dict[str, Any]:
    """Progress of ``run_dir``: ``step``, ``max_steps``, ``loss``, ``eta_seconds`` (median of the last 20 step times
    x steps left), ``finished``, ``curve`` ([[step, loss], ...], thinned to ``points``), ``samples``, ``outputs``."""
    from sdtune.run_folder import (
        CARD_FILE,
        LORA_DIR,
        LORA_WEIGHTS_NAME,
        LYCORIS_NAME,
        METRICS_FILE,
        list_samples,
        read_progress,
    )
    from sdtune.run_status import run_progress

    rows = read_progress(run_dir, max_points=100_000)
    status = run_progress(run_dir)
    last = rows[-1] if rows else {}
    step = max(status.step, last.get("step", 0)) if rows else status.step
    max_steps = last.get("max_steps") or status.max_steps
    times = [r["seconds"] for r in rows[-20:] if isinstance(r.get("seconds"), int | float)]
    eta = None
    if times and max_steps and not status.finished:
        eta = round(statistics.median(times) * max(max_steps - step, 0), 1)
    thin = rows if len(rows) <= points else [rows[int(i * len(rows) / points)] for i in range(points)] + [rows[-1]]
    named = (f"{LORA_DIR}/{LORA_WEIGHTS_NAME}", f"{LORA_DIR}/{LYCORIS_NAME}", CARD_FILE, METRICS_FILE)
    outputs = [name for name in named if (run_dir / name).is_file()]
    return {"step": step, "max_steps": max_steps, "loss": last.get("loss"), "eta_seconds": eta,
            "finished": status.finished, "curve": [[r["step"], r["loss"]] for r in thin],
            "samples": list_samples(run_dir), "outputs": outputs}


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What a list shows, cheaply (no torch, no full log): ``step``, ``max_steps``, ``loss``, ``eta_seconds`` from
    the end of the progress log, ``finished`` from metrics.json."""
    from sdtune.run_folder import last_progress, read_metrics

    rows = last_progress(run_dir)
    metrics = read_metrics(run_dir) or {}
    finished = metrics.get("status") == "finished"
    last = rows[-1] if rows else {}
    step = metrics.get("steps", 0) if finished else last.get("step", 0)
    max_steps = last.get("max_steps") or metrics.get("steps")
    times = [r["seconds"] for r in rows if isinstance(r.get("seconds"), int | float)]
    eta = None
    if times and max_steps and not finished:
        eta = round(statistics.median(times) * max(max_steps - step, 0), 1)
    return {"step": step, "max_steps": max_steps, "loss": last.get("loss"), "eta_seconds": eta, "finished": finished}


def job_progress(job: Job, full: bool = True) -> dict[str, Any] | None:
    """:func:`run_state` (``full``) or :func:`run_summary` of a job's run folder; None without one (eval, caption)."""
    if not job.run_dir or not Path(job.run_dir).is_dir():
        return None
    return run_state(Path(job.run_dir)) if full else run_summary(Path(job.run_dir))


def progress_line(job: Job) -> str:
    """``step 120/800, loss 0.1234, ETA 14m`` for `sdtune jobs list`; empty without a run folder."""
    state = job_progress(job, full=False)
    if not state or not state["step"]:
        return ""
    text = f"step {state['step']}/{state['max_steps'] or '?'}"
    if state["loss"] is not None:
        text += f", loss {state['loss']:.4f}"
    if state["eta_seconds"] and job.state == "running":
        minutes = state["eta_seconds"] / 60
        text += f", ETA {minutes:.0f}m" if minutes >= 1 else f", ETA {state['eta_seconds']:.0f}s"
    return text
