"""/api/runs: what each run folder of the workspace holds — status, model card, eval / pick reports, downloads.

Read from the run folders only (the truth): RUN/metrics.json, RUN/README.md (the model card), RUN/lora/,
RUN/export/*.safetensors (kohya, from `sdtune export` or `pick`), RUN/pick/report.html and RUN/picked/pick.json,
and eval folders (``results.json`` + ``report.html``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from sdtune.jobs.progress import run_state
from sdtune.jobs.workspace import check_name, relative_name
from sdtune.run_folder import (
    CARD_FILE,
    CONFIG_FILE,
    EMBEDDINGS_DIR,
    EXPORT_DIR,
    LORA_DIR,
    LORA_WEIGHTS_NAME,
    LYCORIS_NAME,
    read_json,
    read_metrics,
    read_run_config,
)

router = APIRouter()


def _adapter_label(run: Path) -> str:
    """The name of the adapter the run trained ("LoRA", "DoRA", "LoHa", "LoKr"): a LoHa's files are not a LoRA's."""
    from sdtune.models.lora_variants import KINDS

    try:
        lora = (read_run_config(run).get("train") or {}).get("lora") or {}
    except Exception:  # noqa: BLE001 - a label only: an unreadable config says LoRA, as before
        lora = {}
    kind = KINDS.get(str(lora.get("kind", "lora")) if isinstance(lora, dict) else "lora")
    return kind.label if kind is not None else "LoRA"


def _downloads(ws: Path, run: Path) -> list[dict[str, str]]:
    found = []
    label = _adapter_label(run)
    lora = run / LORA_DIR / LORA_WEIGHTS_NAME
    if lora.is_file():
        found.append({"label": f"{label} (diffusers)", "path": relative_name(ws, lora)})
    lycoris = run / LORA_DIR / LYCORIS_NAME  # DoRA / LoHa / LoKr runs: the kohya/LyCORIS file
    if lycoris.is_file():
        found.append({"label": f"{label}, kohya/LyCORIS layout (AUTOMATIC1111 / ComfyUI)",
                      "path": relative_name(ws, lycoris)})
    layout = "kohya" if label == "LoRA" else "kohya/LyCORIS"
    for path in sorted((run / EXPORT_DIR).glob("*.safetensors")) if (run / EXPORT_DIR).is_dir() else []:
        found.append({"label": f"{label} ({layout} / AUTOMATIC1111 / ComfyUI): {path.name}",
                      "path": relative_name(ws, path)})
    # an export's embedding file, in a folder named after its LoRA file (sdtune.commands.export_files.embedding_copy)
    for path in sorted((run / EXPORT_DIR).glob("*/*.safetensors")) if (run / EXPORT_DIR).is_dir() else []:
        found.append({"label": f"embedding {path.stem} of the export {path.parent.name} (AUTOMATIC1111 / ComfyUI "
                               "embeddings/)", "path": relative_name(ws, path)})
    for path in sorted((run / EMBEDDINGS_DIR).glob("*.safetensors")) if (run / EMBEDDINGS_DIR).is_dir() else []:
        found.append({"label": f"embedding {path.stem}", "path": relative_name(ws, path)})
    if (run / CARD_FILE).is_file():
        found.append({"label": "model card (README.md)", "path": relative_name(ws, run / CARD_FILE)})
    if (run / CONFIG_FILE).is_file():
        found.append({"label": "config.yaml", "path": relative_name(ws, run / CONFIG_FILE)})
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
                         lora=any((run / LORA_DIR / n).is_file() for n in (LORA_WEIGHTS_NAME, LYCORIS_NAME)))
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
        detail["metrics"] = read_metrics(run)
    card = run / CARD_FILE
    detail["card"] = card.read_text(encoding="utf-8", errors="replace")[:20000] if card.is_file() else None
    pick = read_json(run / "picked" / "pick.json")
    detail["pick"] = pick
    reports = [p for p in (run / "pick" / "report.html", run / "report.html") if p.is_file()]
    detail["reports"] = [relative_name(ws, p) for p in reports]
    sources = (("eval", run / "results.json"), ("pick", run / "pick" / "results.json"))
    detail["tables"] = [table for name, path in sources if (table := results_table(read_json(path), name)) is not None]
    return detail


def results_table(results: Any, title: str) -> dict[str, Any] | None:
    """An eval's results.json as a table: a row per model, a column per metric (mean ± std over seeds)."""
    if not isinstance(results, dict) or not isinstance(results.get("models"), list):
        return None
    names = [str(n) for n in (results.get("metrics") or {})]
    rows = []
    for model in results["models"]:
        if not isinstance(model, dict):
            continue
        cells = [str(model.get("label", ""))]
        for name in names:
            metric = (model.get("metrics") or {}).get(name) or {}
            mean, std = metric.get("mean"), metric.get("std")
            cells.append("" if not isinstance(mean, int | float) else
                         f"{mean:.3g} ± {std:.2g}" if isinstance(std, int | float) else f"{mean:.3g}")
        rows.append(cells)
    return {"title": title, "columns": ["model", *names], "rows": rows}
