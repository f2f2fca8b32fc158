"""The job store: states move only the allowed ways, by priority, and concurrent writers never lose a change."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading

import pytest

from sdtune.jobs.store import JobError, JobStore


def _submit_many(path: str, n: int, tag: str) -> None:
    store = JobStore(path)
    for i in range(n):
        store.submit("train", ["train", f"{tag}-{i}.yaml"], name=f"{tag}{i}")


def _cancel_all(path: str) -> None:
    store = JobStore(path)
    for job in store.jobs(("queued",)):
        try:
            store.cancel(job.id)
        except JobError:
            pass  # taken by the worker meanwhile: refused, never half-done


def test_priority_then_age(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    low = store.submit("train", ["train", "a.yaml"], priority=0)
    high = store.submit("eval", ["eval", "r"], priority=5)
    low2 = store.submit("train", ["train", "b.yaml"], priority=0)
    assert [store.claim_next().id for _ in range(3)] == [high.id, low.id, low2.id]
    assert store.claim_next() is None
    assert store.get(high.id).attempts == 1 and store.get(high.id).state == "running"


def test_state_changes_and_refusals(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    queued = store.submit("train", ["train", "a.yaml"])
    assert store.cancel(queued.id).state == "cancelled"
    with pytest.raises(JobError, match="cancelled: it cannot be cancelled"):
        store.cancel(queued.id)
    assert store.retry(queued.id).state == "queued"
    job = store.claim_next()
    assert store.stop(job.id).state == "stopping"
    ended = store.ended(job.id, 130, "stopped")
    assert ended.state == "stopped" and ended.exit_code == 130
    with pytest.raises(JobError, match="stopped: it cannot be stopped"):
        store.stop(job.id)
    store.retry(job.id)
    job = store.claim_next()
    assert job.attempts == 2
    assert store.ended(job.id, 0).state == "finished"
    with pytest.raises(JobError, match="finished: it cannot be retried"):
        store.retry(job.id)
    with pytest.raises(JobError, match="no job 99"):
        store.get(99)
    failed = store.submit("pick", ["pick", "r"])
    store.claim_next()
    assert store.ended(failed.id, 1, "boom").state == "failed"
    with pytest.raises(JobError, match="unknown job kind"):
        store.submit("shell", ["rm", "-rf", "/"])


def test_cancel_of_a_running_job_wins_over_its_exit_code(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    store.submit("train", ["train", "a.yaml"])
    job = store.claim_next()
    store.cancel(job.id)
    assert store.ended(job.id, 130).state == "cancelled"


def test_recover_after_a_dead_worker(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    for i in range(3):
        store.submit("train", ["train", f"{i}.yaml"])
    running, stopping, _ = store.claim_next(), store.claim_next(), None
    store.stop(stopping.id)
    recovered = {j.id: j.state for j in store.recover()}
    assert recovered == {running.id: "queued", stopping.id: "stopped"}
    again = store.claim_next()
    assert again.id == running.id and again.attempts == 2  # the same job resumes first (older id)


def test_concurrent_processes_and_threads_never_corrupt(tmp_path):
    path = str(tmp_path / "jobs.sqlite")
    JobStore(path)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_submit_many, args=(path, 40, f"p{k}")) for k in range(2)]
    for p in procs:
        p.start()
    claimed: list[int] = []
    lock = threading.Lock()

    def claim_some() -> None:
        store = JobStore(path)
        for _ in range(30):
            job = store.claim_next()
            if job is not None:
                with lock:
                    claimed.append(job.id)

    threads = [threading.Thread(target=claim_some) for _ in range(2)]
    threads += [threading.Thread(target=_cancel_all, args=(path,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = JobStore(path)
    jobs = store.jobs()
    assert len(jobs) == 80  # no submit lost
    assert len(claimed) == len(set(claimed))  # no job taken twice
    for job in jobs:
        assert job.state in ("queued", "running", "cancelled")
        assert (job.state == "running") == (job.id in claimed)
        assert job.attempts == (1 if job.state == "running" else 0)
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
