"""How far a job's run is, read from its run folder (the truth): step / steps, loss curve, ETA, samples, outputs."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from sdtune.jobs.store import Job

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def samples(run_dir: Path, limit: int = 24) -> list[str]:
    """Validation images, newest step first, as paths relative to the run folder (``samples/step-000004/0.png``)."""
    root = run_dir / "samples"
    if not root.is_dir():
        return []
    found: list[str] = []
    for step_dir in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        for image in sorted(step_dir.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
                found.append(image.relative_to(run_dir).as_posix())
                if len(found) >= limit:
                    return found
    return found


def run_state(run_dir: Path, points: int = 400) -> dict[str, Any]:
    """Progress of ``run_dir``: ``step``, ``max_steps``, ``loss``, ``eta_seconds`` (median of the last 20 step times
    x steps left), ``finished``, ``curve`` ([[step, loss], ...], thinned to ``points``), ``samples``, ``outputs``."""
    from sdtune.run_status import run_progress
    from sdtune.training.progress_log import read_progress

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
    outputs = [name for name in ("lora/pytorch_lora_weights.safetensors", "README.md", "metrics.json")
               if (run_dir / name).is_file()]
    return {"step": step, "max_steps": max_steps, "loss": last.get("loss"), "eta_seconds": eta,
            "finished": status.finished, "curve": [[r["step"], r["loss"]] for r in thin],
            "samples": samples(run_dir), "outputs": outputs}


def job_progress(job: Job) -> dict[str, Any] | None:
    """:func:`run_state` of a job with a run folder, None for one without (an eval, a caption job)."""
    if not job.run_dir or not Path(job.run_dir).is_dir():
        return None
    return run_state(Path(job.run_dir))


def progress_line(job: Job) -> str:
    """``step 120/800, loss 0.1234, ETA 14m`` for `sdtune jobs list`; empty without a run folder."""
    state = job_progress(job)
    if not state or not state["step"]:
        return ""
    text = f"step {state['step']}/{state['max_steps'] or '?'}"
    if state["loss"] is not None:
        text += f", loss {state['loss']:.4f}"
    if state["eta_seconds"] and job.state == "running":
        minutes = state["eta_seconds"] / 60
        text += f", ETA {minutes:.0f}m" if minutes >= 1 else f", ETA {state['eta_seconds']:.0f}s"
    return text
