"""A new job never gets a run folder another job of the queue holds (queued, running, stopped, failed, cancelled).

Found by a newcomer: a sweep of one config without --name (`sdtune jobs submit toy-db.yaml train.learning_rate=1e-3`,
then `... train.learning_rate=1e-4 train.max_steps=30`) queued both jobs into runs/toy-db; the second "finished" in
a second (it resumed the first one's finished run), and run by hand it mixed two configs in one folder. Submit only
avoided a folder that existed on disk, not one reserved by a job still in the queue. The same with `--name first`
given twice, and on the page (the form's name).
"""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from sdtune.jobs.kinds import train_submission
from sdtune.jobs.store import JobStore
from sdtune.jobs.workspace import find_workspace

ORIGIN = {"origin": "http://127.0.0.1:7860"}


def _config(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir(exist_ok=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "photos" / "a.png")
    config = tmp_path / "toy-db.yaml"
    config.write_text(yaml.safe_dump({"model": {"base": "tiny"}, "data": {
        "instance_dir": "photos", "instance_prompt": "a photo of sks person", "resolution": 32}}), encoding="utf-8")
    return config


def _submit(ws: Path, tmp_path: Path, *args: str):
    from sdtune.cli import app

    result = CliRunner().invoke(app, ["jobs", "submit", *args, "--workspace", str(ws)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _output_dir(job) -> Path:
    """The run folder the job's command line really trains into (its fixed config's output_dir)."""
    return Path(yaml.safe_load(Path(job.argv[1]).read_text(encoding="utf-8"))["output_dir"])


def test_a_sweep_of_one_config_gets_a_run_folder_per_job(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ws = find_workspace(tmp_path / "ws")
    config = _config(tmp_path)
    _submit(ws, tmp_path, str(config), "train.learning_rate=1e-3")
    second = _submit(ws, tmp_path, str(config), "train.learning_rate=1e-4", "train.max_steps=30")
    assert "note: runs/toy-db is the run folder of job 1 (queued): this job trains into runs/toy-db-2" in (
        second.stderr), second.stderr
    _submit(ws, tmp_path, str(config), "--name", "first")
    store = JobStore.in_workspace(ws)
    store.cancel(3)  # a cancelled job can be run again (`retry`): it still holds its folder
    again = _submit(ws, tmp_path, str(config), "--name", "first")
    assert "runs/first is the run folder of job 3 (cancelled): this job trains into runs/first-2" in again.stderr
    jobs = {job.id: job for job in store.jobs()}
    assert [Path(jobs[i].run_dir).name for i in (1, 2, 3, 4)] == ["toy-db", "toy-db-2", "first", "first-2"]
    assert [jobs[i].name for i in (1, 2, 3, 4)] == ["toy-db", "toy-db-2", "first", "first-2"]
    for job in jobs.values():
        assert _output_dir(job) == Path(job.run_dir)  # the command line trains where the queue says


def test_a_finished_job_no_longer_holds_a_folder_that_is_gone(tmp_path: Path) -> None:
    from sdtune.jobs.kinds import queue_submission

    ws = find_workspace(tmp_path / "ws")
    store = JobStore.in_workspace(ws)
    config = _config(tmp_path)
    job = queue_submission(store, train_submission(ws, config, [], cwd=tmp_path, store=store))
    store.claim_next()
    store.ended(job.id, 0)  # finished; its folder was then deleted by hand: free again
    assert queue_submission(store, train_submission(ws, config, [], cwd=tmp_path, store=store)).run_dir == (
        job.run_dir)


def test_the_folder_is_chosen_inside_the_queue_transaction(tmp_path: Path) -> None:
    """Two submits that both checked before either was queued (two terminals, two page requests) still get two
    folders: the choice is made again under the store's write lock, and the job's config is rewritten to match."""
    from sdtune.jobs.kinds import queue_submission

    ws = find_workspace(tmp_path / "ws")
    store = JobStore.in_workspace(ws)
    config = _config(tmp_path)
    subs = [train_submission(ws, config, [f"train.max_steps={n}"], cwd=tmp_path, store=store) for n in (10, 20)]
    assert subs[0].run_dir == subs[1].run_dir  # both saw a free runs/toy-db
    jobs = [queue_submission(store, sub) for sub in subs]
    assert [Path(j.run_dir).name for j in jobs] == ["toy-db", "toy-db-2"]
    assert [_output_dir(j) for j in jobs] == [Path(j.run_dir) for j in jobs]
    assert subs[1].notes == ["runs/toy-db is the run folder of job 1 (queued): this job trains into runs/toy-db-2"]
    many = [train_submission(ws, config, [], name="race", cwd=tmp_path, store=store) for _ in range(6)]
    threads = [threading.Thread(target=queue_submission, args=(JobStore.in_workspace(ws), sub)) for sub in many]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folders = [j.run_dir for j in store.jobs() if j.name.startswith("race")]
    assert len(folders) == 6 and len(set(folders)) == 6, folders


def test_an_output_dir_given_that_a_queued_job_holds_is_refused(tmp_path: Path) -> None:
    import pytest

    from sdtune.errors import SdtuneError
    from sdtune.jobs.kinds import queue_submission

    ws = find_workspace(tmp_path / "ws")
    store = JobStore.in_workspace(ws)
    config = _config(tmp_path)
    first = queue_submission(store, train_submission(ws, config, [], cwd=tmp_path, store=store))
    with pytest.raises(SdtuneError, match=r"output_dir .*toy-db is the run folder of job 1 \(queued\)"):
        queue_submission(store, train_submission(ws, config, [f"output_dir={first.run_dir}"], cwd=tmp_path,
                                                 store=store))
    assert len(store.jobs()) == 1


def test_the_page_gets_a_free_folder_from_the_same_code(tmp_path: Path, monkeypatch) -> None:
    import time

    from sdtune.server.app import create_app

    ws = tmp_path / "ws"
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860", headers=ORIGIN)
    (ws / "datasets" / "me").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(ws / "datasets" / "me" / "a.png")
    first = client.post("/api/jobs/train", json={"dataset": "datasets/me"}).json()
    assert client.post("/api/configs/check", json={"dataset": "datasets/me"}).json()["name"] == "me-2"
    second = client.post("/api/jobs/train", json={"dataset": "datasets/me"}).json()
    named = [client.post("/api/jobs/train", json={"dataset": "datasets/me", "name": "x"}).json() for _ in "ab"]
    assert [j["run"] for j in (first, second, *named)] == ["runs/me", "runs/me-2", "runs/x", "runs/x-2"]
    for job in (first, second, *named):
        assert _output_dir(JobStore.in_workspace(ws).get(job["id"])) == Path(job["run_dir"])
    monkeypatch.setattr(time, "strftime", lambda *_: "20260101-000000")  # two eval jobs in one second
    evals = [client.post("/api/jobs/other", json={"kind": "eval", "runs": ["runs/me"], "prompts": ["a"]}).json()
             for _ in "ab"]
    outs = [e["argv"][e["argv"].index("--out") + 1] for e in evals]
    assert outs == [str(ws.resolve() / "runs" / f"eval-20260101-000000{end}") for end in ("", "-2")], outs
    prompts = [e["argv"][e["argv"].index("--prompts") + 1] for e in evals]
    assert prompts[0] != prompts[1]  # each job reads its own prompts file
