"""/api/runs: what each run folder of the workspace holds — status, model card, eval / pick reports, downloads.

Read from the run folders only (the truth): RUN/metrics.json, RUN/README.md (the model card), RUN/lora/,
RUN/export/*.safetensors (kohya, from `sdtune export` or `pick`), RUN/pick/report.html and RUN/picked/pick.json,
and eval folders (``results.json`` + ``report.html``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from sdtune.jobs.progress import run_state
from sdtune.jobs.workspace import check_name, relative_name

router = APIRouter()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _downloads(ws: Path, run: Path) -> list[dict[str, str]]:
    found = []
    lora = run / "lora" / "pytorch_lora_weights.safetensors"
    if lora.is_file():
        found.append({"label": "LoRA (diffusers)", "path": relative_name(ws, lora)})
    for path in sorted((run / "export").glob("*.safetensors")) if (run / "export").is_dir() else []:
        found.append({"label": f"LoRA (kohya / AUTOMATIC1111 / ComfyUI): {path.name}", "path": relative_name(ws, path)})
    for path in sorted((run / "embeddings").glob("*.safetensors")) if (run / "embeddings").is_dir() else []:
        found.append({"label": f"embedding {path.stem}", "path": relative_name(ws, path)})
    if (run / "README.md").is_file():
        found.append({"label": "model card (README.md)", "path": relative_name(ws, run / "README.md")})
    if (run / "config.yaml").is_file():
        found.append({"label": "config.yaml", "path": relative_name(ws, run / "config.yaml")})
    return found


def _kind(run: Path) -> str:
    if (run / "results.json").is_file():
        return "eval"
    if (run / "manifest.json").is_file():
        return "recipe"
    return "run"


@router.get("/runs")
def runs(request: Request) -> list[dict[str, Any]]:
    ws = request.app.state.workspace
    out = []
    for run in sorted((ws / "runs").iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
        if not run.is_dir() or run.is_symlink() or run.name.startswith("."):
            continue
        kind = _kind(run)
        entry: dict[str, Any] = {"name": run.name, "path": relative_name(ws, run), "kind": kind}
        if kind == "run":
            state = run_state(run, points=0)
            entry.update(step=state["step"], max_steps=state["max_steps"], finished=state["finished"],
                         lora=(run / "lora" / "pytorch_lora_weights.safetensors").is_file())
        out.append(entry)
    return out


@router.get("/runs/{name}")
def run_detail(request: Request, name: str) -> dict[str, Any]:
    ws = request.app.state.workspace
    run = ws / "runs" / check_name(name, "run name")
    if not run.is_dir() or run.is_symlink():
        raise HTTPException(404, f"no run {name} in the workspace")
    detail: dict[str, Any] = {"name": name, "path": relative_name(ws, run), "kind": _kind(run),
                              "downloads": _downloads(ws, run)}
    if detail["kind"] == "run":
        detail["progress"] = run_state(run)
        detail["metrics"] = _read_json(run / "metrics.json")
    card = run / "README.md"
    detail["card"] = card.read_text(encoding="utf-8", errors="replace")[:20000] if card.is_file() else None
    pick = _read_json(run / "picked" / "pick.json")
    detail["pick"] = pick
    reports = [p for p in (run / "pick" / "report.html", run / "report.html") if p.is_file()]
    detail["reports"] = [relative_name(ws, p) for p in reports]
    results = _read_json(run / "results.json")
    detail["results"] = results.get("table") if isinstance(results, dict) and "table" in results else results
    return detail
