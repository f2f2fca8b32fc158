"""What the page reads: a job's progress from its run folder, the SSE stream, results and downloads, pick's prompts."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from PIL import Image

from sdtune.jobs.store import JobStore
from sdtune.server.app import create_app

ORIGIN = {"origin": "http://127.0.0.1:7860"}


def _run(ws, name="me", steps=6, base="toy", finished=True):
    run = ws / "runs" / name
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text(json.dumps({"model": {"base": base}, "train": {"max_steps": steps},
                                                 "validation": {"prompts": ["a photo of sks person"]}}))
    rows = [{"step": s, "max_steps": steps, "loss": 1.0 / s, "lr": 1e-3, "seconds": 0.5} for s in range(1, steps + 1)]
    rows += [{"step": 3, "max_steps": steps, "loss": 9.0, "lr": 1e-3, "seconds": 0.5}]  # a resumed branch's step 3
    (run / "logs" / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "lo')
    (run / "samples" / "step-000004").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(run / "samples" / "step-000004" / "0.png")
    (run / "lora").mkdir()
    (run / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    (run / "README.md").write_text("# me\n")
    if finished:
        (run / "metrics.json").write_text(json.dumps({"status": "finished", "steps": steps}))
    return run


def test_job_progress_stream_and_results(tmp_path):
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    run = _run(ws)
    store = JobStore.in_workspace(ws)
    job = store.submit("train", ["train", "x.yaml"], name="me", run_dir=run)
    store.claim_next()
    store.ended(job.id, 0)
    listed = client.get("/api/jobs").json()[0]
    assert listed["progress"]["step"] == 6 and listed["progress"]["finished"]  # metrics.json, not the log's last line
    detail = client.get(f"/api/jobs/{job.id}").json()
    progress = detail["progress"]
    assert progress["curve"] == [[1, 1.0], [2, 0.5], [3, 9.0], [4, 0.25], [5, 0.2], [6, 1 / 6]]
    assert progress["samples"] == ["samples/step-000004/0.png"] and progress["finished"]
    assert client.get("/api/files/runs/me/samples/step-000004/0.png").headers["content-type"] == "image/png"
    with client.stream("GET", f"/api/jobs/{job.id}/events") as stream:
        text = "".join(stream.iter_text())
    assert text.startswith("event: progress\ndata: ") and text.rstrip().endswith("event: end\ndata: {}")
    assert json.loads(text.split("data: ", 1)[1].split("\n", 1)[0])["state"] == "finished"
    runs = client.get("/api/runs").json()
    assert runs == [{"name": "me", "path": "runs/me", "kind": "run", "step": 6, "max_steps": 6, "finished": True,
                     "lora": True}]
    detail = client.get("/api/runs/me").json()
    labels = [d["label"] for d in detail["downloads"]]
    assert labels[:2] == ["LoRA (diffusers)", "model card (README.md)"] and detail["card"] == "# me\n"
    download = client.get("/api/files/runs/me/lora/pytorch_lora_weights.safetensors", params={"download": 1})
    assert download.content == b"x" and "attachment" in download.headers["content-disposition"]
    assert client.get("/api/files/jobs.sqlite").status_code == 404  # the store is not a file the page serves
    assert client.get("/api/runs/..").status_code in (400, 404)


def test_pick_and_export_jobs_from_the_page(tmp_path):
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    _run(ws, "toyrun")
    _run(ws, "sdrun", base="stabilityai/stable-diffusion-2-1-base")
    toy = client.post("/api/jobs/other", json={"kind": "pick", "run": "runs/toyrun"}).json()
    assert toy["argv"] == ["pick", str(ws / "runs" / "toyrun")] and toy["name"] == "pick-toyrun"
    sd = client.post("/api/jobs/other", json={"kind": "pick", "run": "runs/sdrun"}).json()
    assert sd["argv"][2:] == ["--prompt=a photo of sks person"]
    export = client.post("/api/jobs/other", json={"kind": "export", "run": "runs/sdrun"}).json()
    assert export["argv"] == ["export", str(ws / "runs" / "sdrun"), "--format", "kohya"]
    caption = client.post("/api/jobs/other", json={"kind": "caption", "dataset": "runs/sdrun"}).json()
    assert "say how to caption" in caption["error"]
    (ws / "models" / "blip").mkdir(parents=True)
    for captioner, expected in (("Salesforce/blip-image-captioning-base", "Salesforce/blip-image-captioning-base"),
                                ("models/blip", str(ws / "models" / "blip"))):
        job = client.post("/api/jobs/other", json={"kind": "caption", "dataset": "runs/sdrun",
                                                   "captioner": captioner}).json()
        assert job["argv"][:2] == ["dataset", "build"]
        assert job["argv"][4:] == [f"--captioner={expected}", "--mode=fill"]
        assert job["argv"][3] == str(ws / "datasets" / "sdrun-captioned")
    job = client.post("/api/jobs/other", json={"kind": "caption", "dataset": "runs/sdrun", "captioner": "florence-2",
                                               "mode": "prefix", "trigger": "sks", "class_word": "person"}).json()
    assert job["argv"][4:] == ["--captioner=florence-2", "--mode=prefix", "--trigger=sks", "--class=person"]
    for bad in ("/etc", "../blip", "models/../../blip"):
        r = client.post("/api/jobs/other", json={"kind": "caption", "dataset": "runs/sdrun", "captioner": bad})
        assert r.status_code == 403, (bad, r.text)
    tilde = client.post("/api/jobs/other", json={"kind": "caption", "dataset": "runs/sdrun", "captioner": "~/m"})
    assert tilde.json()["argv"][4] == f"--captioner={ws / '~' / 'm'}"  # a folder named ~ in the workspace


def test_eval_and_pick_tables(tmp_path):
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    run = _run(ws)
    (run / "pick").mkdir()
    (run / "pick" / "results.json").write_text(json.dumps({
        "metrics": {"clip_t": {}, "dino": {}},
        "models": [{"label": "step-000004", "metrics": {"clip_t": {"mean": 31.25, "std": 1.5}, "dino": {}}},
                   {"label": "step-000006", "metrics": {"clip_t": {"mean": 30.0, "std": None}}}, "junk"]}))
    tables = client.get("/api/runs/me").json()["tables"]
    assert tables == [{"title": "pick", "columns": ["model", "clip_t", "dino"],
                       "rows": [["step-000004", "31.2 ± 1.5", ""], ["step-000006", "30", ""]]}]
    r = client.post("/api/jobs/other", json={"kind": "eval", "runs": ["runs/me"], "prompts": ["a\nb", "c"]}).json()
    prompts = r["argv"][r["argv"].index("--prompts") + 1]
    assert r["argv"][:2] == ["eval", str(run)] and open(prompts).read() == "a b\nc\n"
    assert r["argv"][-2] == "--out" and r["argv"][-1].startswith(str(ws / "runs" / "eval-"))


def test_every_refusal_has_one_shape_with_a_readable_line(tmp_path):
    """Found by a newcomer: a malformed request got FastAPI's ``{"detail": [...]}`` (the page showed "Unprocessable
    Entity"), and a form without data read "invalid config the form: ..."."""
    client = TestClient(create_app(tmp_path / "ws"), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    for response, field in ((client.get("/api/jobs/abc"), "job_id"),
                            (client.post("/api/configs/check", content=b"not json",
                                         headers={"content-type": "application/json"}), "body"),
                            (client.post("/api/configs/check", json={"priority": "high"}), "priority"),
                            (client.get("/api/dataset/thumb", params={"path": "x"}), "file")):
        body = response.json()
        assert response.status_code == 422 and "detail" not in body, body
        assert body["error"].startswith("bad request: ") and field in body["fields"], body
    form = client.post("/api/configs/check", json={"ready": "toy-dreambooth-lora"}).json()
    assert form["error"].startswith("invalid config in the form: data: no training data"), form


def test_a_loha_run_offers_its_lycoris_file(tmp_path):
    """A LoHa / LoKr run has no diffusers file, only RUN/lora/lycoris.safetensors: the Results page listed no LoRA
    download for it and said lora: false (found with the model card that named a file such a run does not have)."""
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    run = _run(ws, "loha")
    (run / "lora" / "pytorch_lora_weights.safetensors").rename(run / "lora" / "lycoris.safetensors")
    (run / "config.yaml").write_text(json.dumps({"model": {"base": "toy"}, "train": {"lora": {"kind": "loha"}}}))
    assert client.get("/api/runs").json()[0]["lora"] is True
    downloads = {d["label"]: d["path"] for d in client.get("/api/runs/loha").json()["downloads"]}
    assert downloads["LoHa, kohya/LyCORIS layout (AUTOMATIC1111 / ComfyUI)"] == "runs/loha/lora/lycoris.safetensors", \
        downloads
    store = JobStore.in_workspace(ws)
    job = store.submit("train", ["train", "x.yaml"], name="loha", run_dir=run)
    assert "lora/lycoris.safetensors" in client.get(f"/api/jobs/{job.id}").json()["progress"]["outputs"]


def test_each_ended_state_offers_buttons_named_for_what_they_do(tmp_path):
    """Found by a newcomer: a failed job offered "Resume" (it retries); every state's buttons, and each one works."""
    from sdtune.jobs.store import STATES
    from sdtune.server.jobs_api import ACTIONS

    assert set(ACTIONS) == set(STATES)
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    store = JobStore.in_workspace(ws)
    labels = {}
    for exit_code in (1, 130):  # failed, stopped
        job = store.submit("eval", ["eval", "x"], name="e")
        store.claim_next()
        labels[store.ended(job.id, exit_code).state] = job.id
    labels["cancelled"] = store.cancel(store.submit("eval", ["eval", "x"], name="c").id).id
    views = {state: client.get(f"/api/jobs/{job_id}").json()["actions"] for state, job_id in labels.items()}
    assert views["failed"] == [{"action": "retry", "label": "Retry"}]
    assert views["stopped"] == [{"action": "resume", "label": "Resume"}, {"action": "cancel", "label": "Cancel"}]
    assert views["cancelled"] == [{"action": "retry", "label": "Run again"}]
    for state, job_id in labels.items():
        action = views[state][0]["action"]
        assert client.post(f"/api/jobs/{job_id}/{action}").json()["state"] == "queued", state


def test_downloads_name_the_adapter_a_run_trained(tmp_path):
    """A LoHa run's files were offered as "LyCORIS" and its export as "LoRA (kohya ...)": the page names the kind."""
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    run = _run(ws, "hada")
    (run / "config.yaml").write_text(json.dumps({"model": {"base": "toy"}, "train": {"lora": {"kind": "loha"}}}))
    (run / "lora" / "pytorch_lora_weights.safetensors").unlink()
    (run / "lora" / "lycoris.safetensors").write_bytes(b"x")
    (run / "export").mkdir()
    (run / "export" / "hada.safetensors").write_bytes(b"x")
    labels = [d["label"] for d in client.get("/api/runs/hada").json()["downloads"]]
    assert labels[:2] == ["LoHa, kohya/LyCORIS layout (AUTOMATIC1111 / ComfyUI)",
                          "LoHa (kohya/LyCORIS / AUTOMATIC1111 / ComfyUI): hada.safetensors"], labels
    assert not any(label.startswith("LoRA") for label in labels)


def test_an_exports_embedding_is_offered_as_an_embedding(tmp_path):
    """A pivotal run's export writes its embedding for ComfyUI into export/<LoRA file's stem>/ (the file's name is
    the prompt word, so each export keeps its own): offered as that export's embedding, never as a LoRA (it once lay
    beside the LoRA files and was listed as one)."""
    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    run = _run(ws, "piv")
    (run / "export" / "piv-step-000400").mkdir(parents=True)
    (run / "export" / "piv-step-000400" / "_sks_.safetensors").write_bytes(b"x")
    downloads = client.get("/api/runs/piv").json()["downloads"]
    labels = {d["label"]: d["path"] for d in downloads}
    assert labels["embedding _sks_ of the export piv-step-000400 (AUTOMATIC1111 / ComfyUI embeddings/)"] == \
        "runs/piv/export/piv-step-000400/_sks_.safetensors", labels
    assert not any("_sks_" in label for label in labels if label.startswith("LoRA")), labels
