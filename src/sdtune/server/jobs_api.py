"""/api/jobs: the queue (list, submit through the schema, stop / resume / cancel), logs, live progress over SSE."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field

from sdtune.data.captioner import SHORT_NAMES
from sdtune.errors import SdtuneError
from sdtune.jobs.folders import free_folder, free_run_dir, queue_holders
from sdtune.jobs.kinds import command_submission, queue_submission, train_submission
from sdtune.jobs.progress import job_progress
from sdtune.jobs.store import ENDED, Job
from sdtune.jobs.worker import WorkerLock, job_message, log_path
from sdtune.jobs.workspace import check_name, inside, relative_name
from sdtune.server.training_form import FORM_KEYS, HUB_ID, bases, build_config, ready_configs

router = APIRouter()
SERVED = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".safetensors", ".md", ".html", ".json", ".csv", ".txt",
          ".log", ".yaml")


class TrainForm(BaseModel):
    ready: str = "toy-dreambooth-lora"
    dataset: str | None = None
    base: str | None = None
    values: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None
    priority: int = 0


class OtherJob(BaseModel):
    kind: str
    run: str | None = None  # pick / eval / export: a run folder inside the workspace
    runs: list[str] = Field(default_factory=list)
    dataset: str | None = None  # caption
    caption: str | None = None
    captioner: str | None = None  # caption: florence-2, joycaption, blip, a hub id or a workspace folder
    mode: Literal["fill", "replace", "prefix", "suffix"] = "fill"  # caption: which captions the captioner writes
    trigger: str | None = None  # caption: "sks" ...
    class_word: str | None = None  # ... and "person" kept in front: "sks person, <caption>"
    prompts: list[str] = Field(default_factory=list)
    name: str | None = None
    priority: int = 0


def _ws(request: Request) -> Path:
    return request.app.state.workspace


# state -> the buttons its job view offers, (action, label): the label says what the action does in that state
# (a stopped job resumes; a failed one is tried again, from its newest checkpoint; a cancelled one runs again)
ACTIONS: dict[str, list[tuple[str, str]]] = {
    "queued": [("cancel", "Cancel")],
    "running": [("stop", "Stop (keep checkpoint)"), ("cancel", "Cancel")],
    "stopping": [],
    "stopped": [("resume", "Resume"), ("cancel", "Cancel")],
    "failed": [("retry", "Retry")],
    "cancelled": [("retry", "Run again")],
    "finished": [],
}


def job_view(ws: Path, job: Job, progress: bool = True, full: bool = True) -> dict[str, Any]:
    """The job as the page sees it; ``progress``: read its run folder (``full``: curve and samples too);
    ``actions``: [{"action", "label"}] of the buttons its state offers (POST /api/jobs/ID/ACTION)."""
    data = job.to_dict()
    data["actions"] = [{"action": a, "label": label} for a, label in ACTIONS[job.state]]
    data["message"] = job_message(ws, job)
    data["run"] = relative_name(ws, Path(job.run_dir)) if job.run_dir else None
    data["progress"] = job_progress(job, full=full) if progress else None
    return data


@router.get("/status")
def status(request: Request) -> dict[str, Any]:
    ws = _ws(request)
    beat = request.app.state.store.worker_row()
    return {"workspace": str(ws), "worker_pid": WorkerLock(ws).holder(), "heartbeat": beat}


@router.get("/jobs")
def list_jobs(request: Request, limit: int = 200) -> list[dict[str, Any]]:
    ws, store = _ws(request), request.app.state.store
    return [job_view(ws, job, full=False) for job in store.jobs(limit=min(max(limit, 1), 1000))]


@router.get("/jobs/{job_id}")
def get_job(request: Request, job_id: int) -> dict[str, Any]:
    return job_view(_ws(request), request.app.state.store.get(job_id))


@router.get("/configs")
def configs() -> dict[str, Any]:
    return {"ready": {name: {"description": e["description"], "config": e["config"]}
                      for name, e in ready_configs().items()},
            "bases": bases(), "form_keys": list(FORM_KEYS)}


@router.get("/config-keys")
def config_keys() -> list[dict[str, str]]:
    from sdtune.config import list_keys

    return [{"key": k, "type": t, "default": d} for k, t, d in list_keys()]


def _job_name(ws: Path, form: TrainForm, store: Any) -> tuple[str, str]:
    """The form's job name (its name, else its dataset's, else its ready config's) and that name made free: no
    run folder on disk, none a job of the queue holds (the CLI's rule; :func:`queue_submission` makes the final
    choice under the queue's lock)."""
    base = check_name(form.name or (Path(form.dataset).name if form.dataset else form.ready), "job name")
    return base, free_run_dir(ws, base, queue_holders(store)).name


@router.post("/configs/check")
def check_config(request: Request, form: TrainForm) -> dict[str, Any]:
    """The form's config through the schema without queueing: ``{"ok": true}`` or 400 with ``fields``."""
    ws = _ws(request)
    _, name = _job_name(ws, form, request.app.state.store)
    path, _ = build_config(ws, form.ready, form.dataset, form.base, form.values, name)
    path.unlink(missing_ok=True)
    return {"ok": True, "name": name}


@router.post("/jobs/train")
def submit_train(request: Request, form: TrainForm) -> dict[str, Any]:
    ws, store = _ws(request), request.app.state.store
    base, name = _job_name(ws, form, store)
    path, _ = build_config(ws, form.ready, form.dataset, form.base, form.values, name)
    sub = train_submission(ws, path, [], name=base, cwd=ws, store=store)  # runs/NAME, or NAME-2... as the CLI
    job = queue_submission(store, sub, form.priority)
    return job_view(ws, job, progress=False)


@router.post("/jobs/other")
def submit_other(request: Request, body: OtherJob) -> dict[str, Any]:
    """caption / pick / eval / export jobs, each built from workspace paths only (no free command line)."""
    ws, store = _ws(request), request.app.state.store
    args: list[str]  # option values as --key=value: a value starting with '-' is never read as an option
    if body.kind == "caption":
        if not body.dataset:
            raise SdtuneError("a caption job needs a dataset")
        src = inside(ws, body.dataset, "dataset")
        out = ws / "datasets" / check_name(f"{src.name}-captioned", "dataset name")
        if body.captioner:
            named = HUB_ID.match(body.captioner) or body.captioner.lower() in SHORT_NAMES
            hub_id = named and not (ws / body.captioner).exists()
            model = body.captioner if hub_id else str(inside(ws, body.captioner, "captioner"))
            args = [str(src), str(out), f"--captioner={model}", f"--mode={body.mode}"]
            args += [f"--trigger={body.trigger}"] if body.trigger else []
            args += [f"--class={body.class_word}"] if body.class_word else []
        elif body.caption:
            args = [str(src), str(out), f"--caption={' '.join(body.caption.split())}"]
        else:
            raise SdtuneError("say how to caption: a captioner model (florence-2, joycaption, blip, a hub id or a "
                              "folder in the workspace) or a fixed caption")
    elif body.kind in ("pick", "export"):
        if not body.run:
            raise SdtuneError(f"a {body.kind} job needs a run")
        run = inside(ws, body.run, "run")
        args = [str(run)] + (["--format", "kohya"] if body.kind == "export" else _pick_prompts(run, body.prompts))
    elif body.kind == "eval":
        runs = [str(inside(ws, r, "run")) for r in body.runs]
        if not runs or not body.prompts:
            raise SdtuneError("an eval job needs runs and prompts")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        prompts = ws / "jobs" / f"prompts-{stamp}-{uuid.uuid4().hex[:8]}.txt"  # one file per job
        prompts.write_text("\n".join(p.replace("\n", " ") for p in body.prompts) + "\n", encoding="utf-8")
        out, _ = free_folder(ws / "runs", f"eval-{stamp}", queue_holders(store))
        args = [*runs, "--prompts", str(prompts), "--out", str(out)]
    else:
        raise SdtuneError(f"kind {body.kind!r} cannot be submitted from the page (caption, pick, eval, export); "
                          "use `sdtune jobs submit --kind` for run and personalize")
    label = {"caption": "caption", "pick": "pick", "export": "kohya", "eval": "eval"}[body.kind]
    sub = command_submission(body.kind, args, name=body.name or f"{label}-{Path(args[0]).name}", cwd=ws,
                             store=store)
    if body.kind == "eval":
        sub.writes_into(out, f"eval-{stamp}")  # its own folder, chosen again under the queue's lock
    job = queue_submission(store, sub, body.priority)
    return job_view(ws, job, progress=False)


def _pick_prompts(run: Path, prompts: list[str]) -> list[str]:
    """``--prompt`` options for `sdtune pick`: the request's, else the run's validation prompts; none on a toy run
    (pick then judges the toy suite)."""
    from sdtune.run_folder import read_run_config

    config = read_run_config(run)
    validation = (config.get("validation") or {}).get("prompts") or []
    base = (config.get("model") or {}).get("base")
    chosen = prompts or ([] if base == "toy" else validation)
    if not chosen and base != "toy":
        raise SdtuneError("pick needs the prompts to judge the checkpoints by: give prompts, or train with "
                          "validation prompts")
    return [f"--prompt={' '.join(prompt.split())}" for prompt in chosen]


@router.post("/jobs/{job_id}/{action}")
def act(request: Request, job_id: int, action: str) -> dict[str, Any]:
    store = request.app.state.store
    do = {"stop": store.stop, "cancel": store.cancel, "resume": store.retry, "retry": store.retry}.get(action)
    if do is None:
        raise SdtuneError(f"unknown action {action!r}: stop, resume, retry or cancel")
    return job_view(_ws(request), do(job_id), progress=False)


def tail(path: Path, lines: int) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    text = text.replace("\r", "\n")
    return "\n".join([line for line in text.split("\n") if line.strip()][-lines:])


@router.get("/jobs/{job_id}/log")
def job_log(request: Request, job_id: int, lines: int = 200) -> dict[str, str]:
    request.app.state.store.get(job_id)
    return {"log": tail(log_path(_ws(request), job_id), min(max(lines, 1), 5000))}


@router.get("/jobs/{job_id}/events")
async def job_events(request: Request, job_id: int) -> StreamingResponse:
    """Server-sent events: ``progress`` (the job, its run's step/steps, loss curve, ETA, samples, log tail) whenever
    it changes, polled from the store and the run folder each second; the stream ends after the job ended."""
    ws, store = _ws(request), request.app.state.store
    store.get(job_id)

    async def stream():
        last = None
        while True:
            if await request.is_disconnected():
                return
            job = await asyncio.to_thread(store.get, job_id)
            view = await asyncio.to_thread(job_view, ws, job)
            view["log_tail"] = await asyncio.to_thread(tail, log_path(ws, job_id), 30)
            text = json.dumps(view)
            if text != last:
                yield f"event: progress\ndata: {text}\n\n"
                last = text
            else:
                yield ": keep-alive\n\n"
            if job.state in ENDED:
                yield "event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(1.0)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/files/{path:path}")
def workspace_file(request: Request, path: str, download: bool = False) -> FileResponse:
    """A file inside the workspace (samples, reports, LoRA files, model cards); nothing else, no folder."""
    target = inside(_ws(request), path, "file")
    if target.suffix.lower() not in SERVED or not target.is_file():
        raise HTTPException(404, f"{path}: not a file the page serves")
    headers = {"Content-Security-Policy": "sandbox"} if target.suffix.lower() == ".html" else None
    return FileResponse(target, filename=target.name if download else None, headers=headers)
