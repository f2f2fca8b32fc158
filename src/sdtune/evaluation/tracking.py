"""Send evaluation results to TensorBoard or Weights & Biases, next to the training curves of the same runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdtune.evaluation.report import summary_rows


def _scalars(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for model in results["models"]:
        for name, metric in model["metrics"].items():
            if metric.get("mean") is not None:
                out[f"eval/{name}/{model['label']}"] = float(metric["mean"])
                if metric.get("std") is not None:
                    out[f"eval/{name}_std/{model['label']}"] = float(metric["std"])
    return out


def _markdown(results: dict[str, Any]) -> str:
    header, rows = summary_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def log_tensorboard(results: dict[str, Any], logdir: Path, step: int = 0) -> None:
    """Scalars ``eval/<metric>/<model>`` and the summary table as text."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for tag, value in _scalars(results).items():
            writer.add_scalar(tag, value, step)
        writer.add_text("eval/summary", _markdown(results), step)
    finally:
        writer.close()


def log_wandb(results: dict[str, Any], project: str, out_dir: Path, run_name: str | None = None) -> None:
    """One wandb run with the scalars, the summary table and each model's grid (offline unless WANDB_MODE says)."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project=project, name=run_name, job_type="eval", dir=str(out_dir),
                     config={"settings": results["settings"], "backbones": results["backbones"]})
    try:
        header, rows = summary_rows(results)
        payload: dict[str, Any] = dict(_scalars(results))
        payload["eval/summary"] = wandb.Table(columns=header, data=rows)
        for grid in sorted((Path(out_dir) / "grids").glob("*.png")):
            payload[f"eval/grid/{grid.stem}"] = wandb.Image(str(grid))
        run.log(payload)
    finally:
        run.finish()
