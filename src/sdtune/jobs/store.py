"""The job store: what was asked (SQLite in the workspace), not how the run goes (the run folder says that).

One file, ``WS/jobs.sqlite``, in WAL mode, opened per operation; every change is one short ``BEGIN IMMEDIATE``
transaction whose ``UPDATE`` names the states it may leave, so two processes (the server, a CLI, a worker)
submitting and cancelling at once never lose a change and never move a job through an impossible state.

States::

    queued -> running -> finished | failed
                      -> stopping -> stopped | cancelled     (stop keeps the checkpoint; resume = retry)
    queued -> cancelled | stopped
    failed | stopped | cancelled -> queued                   (retry / resume: the unit of work resumes)

``running`` after the worker died is put back to ``queued`` by the next worker (:meth:`JobStore.recover`): the
unit of work resumes from its newest checkpoint, so a restart loses at most the steps after it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sdtune.errors import SdtuneError
from sdtune.jobs.kind_table import COMMANDS

KINDS = tuple(COMMANDS)  # the one list of kinds (sdtune.jobs.kind_table.KIND_TABLE)
STATES = ("queued", "running", "stopping", "finished", "failed", "stopped", "cancelled")
ACTIVE = ("queued", "running", "stopping")
ENDED = ("finished", "failed", "stopped", "cancelled")
HOLDING = tuple(s for s in STATES if s != "finished")  # states whose folders are or will be used (retry, resume)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    argv TEXT NOT NULL,            -- JSON list: the sdtune command line of the unit of work (no program name)
    run_dir TEXT,                  -- where its outputs go (absolute), read for progress
    cwd TEXT,                      -- the folder relative paths of argv are read from
    priority INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'queued',
    want TEXT,                     -- 'stop' or 'cancel' while stopping
    attempts INTEGER NOT NULL DEFAULT 0,
    handle TEXT,                   -- the engine's id of the attempt in flight
    exit_code INTEGER,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    ended REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (state, priority DESC, id);
CREATE TABLE IF NOT EXISTS worker (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    pid INTEGER, host TEXT, started REAL, beat REAL
);
"""


@dataclass
class Job:
    id: int
    kind: str
    name: str
    argv: list[str]
    run_dir: str | None
    cwd: str | None
    priority: int
    state: str
    want: str | None
    attempts: int
    handle: str | None
    exit_code: int | None
    message: str
    created: float
    started: float | None
    ended: float | None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}  # shallow: asdict deep-copies (slow in lists)
        data["argv"] = list(self.argv)
        return data


# ``place`` of :meth:`JobStore.submit`: the jobs holding folders -> the (name, argv, run_dir) to queue
Place = Callable[[list[Job]], tuple[str, list[str], "str | Path | None"]]


class JobError(SdtuneError):
    """A job request that cannot be done (unknown id, a state that does not allow it)."""


def _job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["argv"] = json.loads(data["argv"])
    return Job(**data)


class JobStore:
    """The queue in ``path`` (created with its tables on first use). Safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @classmethod
    def in_workspace(cls, workspace: Path) -> JobStore:
        return cls(workspace / "jobs.sqlite")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (``BEGIN IMMEDIATE`` takes the write lock at once: no upgrade deadlock)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def _read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        db = self._connect()
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    # ---- asking -------------------------------------------------------------------------------------------------
    def submit(self, kind: str, argv: list[str], *, name: str = "", run_dir: str | Path | None = None,
               priority: int = 0, cwd: str | Path | None = None, place: Place | None = None) -> Job:
        """Queue a job. ``place``, when given, is called inside the write transaction with every job whose folders
        are or will be used (all but the finished ones) and returns the ``(name, argv, run_dir)`` to queue: so a
        folder it chooses is one no other job holds, even when two submits run at once
        (:func:`sdtune.jobs.kinds.queue_submission`). It may raise to queue nothing."""
        if kind not in KINDS:
            raise JobError(f"unknown job kind {kind!r}; one of {', '.join(KINDS)}")
        with self._write() as db:
            if place is not None:
                marks = ",".join("?" * len(HOLDING))
                holders = [_job(r) for r in db.execute(f"SELECT * FROM jobs WHERE state IN ({marks})", HOLDING)]
                name, argv, run_dir = place(holders)
            if not all(isinstance(a, str) for a in argv):
                raise JobError("a job's command line must be a list of strings")
            cur = db.execute("INSERT INTO jobs (kind, name, argv, run_dir, cwd, priority, created) "
                             "VALUES (?,?,?,?,?,?,?)",
                             (kind, name or kind, json.dumps(argv), str(run_dir) if run_dir else None,
                              str(cwd) if cwd else None, int(priority), time.time()))
            row = db.execute("SELECT * FROM jobs WHERE id=?", (cur.lastrowid,)).fetchone()
        return _job(row)

    def get(self, job_id: int) -> Job:
        rows = self._read("SELECT * FROM jobs WHERE id=?", (int(job_id),))
        if not rows:
            raise JobError(f"no job {job_id} in {self.path} (`sdtune jobs list` shows the jobs)")
        return _job(rows[0])

    def jobs(self, states: tuple[str, ...] | None = None, limit: int = 1000) -> list[Job]:
        """Newest first; ``states`` filters."""
        if states:
            marks = ",".join("?" * len(states))
            rows = self._read(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
                              (*states, int(limit)))
        else:
            rows = self._read("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (int(limit),))
        return [_job(r) for r in rows]

    def _change(self, job_id: int, sets: dict[str, Any], from_states: tuple[str, ...], verb: str) -> Job:
        """Apply ``sets`` to a job in one of ``from_states``; otherwise say which state prevents ``verb``."""
        with self._write() as db:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id} (`sdtune jobs list` shows the jobs)")
            if row["state"] not in from_states:
                raise JobError(f"job {job_id} is {row['state']}: it cannot be {verb} "
                               f"(only a job that is {' or '.join(from_states)})")
            assignments = ", ".join(f"{k}=?" for k in sets)
            db.execute(f"UPDATE jobs SET {assignments} WHERE id=?", (*sets.values(), int(job_id)))
            return _job(db.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone())

    def cancel(self, job_id: int) -> Job:
        """A queued job is cancelled at once; a running one is asked to stop (its worker ends it)."""
        return self._stop_or_cancel(job_id, "cancel", "cancelled")

    def stop(self, job_id: int) -> Job:
        """Stop keeping the checkpoint: a running job saves and ends as ``stopped``; resume with :meth:`retry`."""
        return self._stop_or_cancel(job_id, "stop", "stopped")

    def _stop_or_cancel(self, job_id: int, want: str, final: str) -> Job:
        verb = "cancelled" if want == "cancel" else "stopped"
        job = self.get(job_id)
        if job.state == "queued":
            try:
                return self._change(job_id, {"state": final, "ended": time.time()}, ("queued",), verb)
            except JobError:
                job = self.get(job_id)  # the worker took it meanwhile: stop it running
        if want == "cancel" and job.state == "stopped":
            return self._change(job_id, {"state": "cancelled"}, ("stopped",), verb)
        if job.state in ENDED:
            raise JobError(f"job {job_id} is {job.state}: it cannot be {verb} (only a queued or running job)")
        return self._change(job_id, {"state": "stopping", "want": want}, ("running", "stopping"), verb)

    def retry(self, job_id: int) -> Job:
        """Queue an ended job again; its unit of work resumes from its newest checkpoint."""
        return self._change(job_id, {"state": "queued", "want": None, "ended": None, "exit_code": None,
                                     "handle": None, "message": ""},
                            ("failed", "stopped", "cancelled"), "retried")

    # ---- the worker ---------------------------------------------------------------------------------------------
    def claim_next(self) -> Job | None:
        """Take the queued job of highest priority (oldest first) and mark it running; None when none is queued."""
        with self._write() as db:
            row = db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY priority DESC, id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', started=?, attempts=attempts+1, message='', exit_code=NULL "
                       "WHERE id=?", (time.time(), row["id"]))
            return _job(db.execute("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone())

    def set_handle(self, job_id: int, handle: str | None) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET handle=? WHERE id=?", (handle, int(job_id)))

    def requeue(self, job_id: int, message: str = "") -> None:
        """A running job whose worker is shutting down (its unit stopped at a checkpoint): back to the queue, to
        resume first when a worker starts (``attempts`` keeps counting the attempts started)."""
        with self._write() as db:
            db.execute("UPDATE jobs SET state='queued', handle=NULL, message=? WHERE id=? AND state='running'",
                       (message, int(job_id)))

    def ended(self, job_id: int, exit_code: int | None, message: str = "") -> Job:
        """Record how an attempt ended: 0 finished; a stop or cancel asked for: stopped / cancelled; else failed."""
        with self._write() as db:
            row = db.execute("SELECT state, want FROM jobs WHERE id=?", (int(job_id),)).fetchone()
            if row is None:
                raise JobError(f"no job {job_id}")
            if row["want"] == "cancel":
                state = "cancelled"
            elif exit_code == 0:
                state = "finished"
            elif row["want"] == "stop" or exit_code == 130:
                state = "stopped"
            else:
                state = "failed"
            db.execute("UPDATE jobs SET state=?, want=NULL, handle=NULL, exit_code=?, message=?, ended=? WHERE id=?",
                       (state, exit_code, message, time.time(), int(job_id)))
            return _job(db.execute("SELECT * FROM jobs WHERE id=?", (int(job_id),)).fetchone())

    def recover(self) -> list[Job]:
        """At worker start: attempts left by a dead worker. ``running`` -> queued (resumes); ``stopping`` -> its end.

        Called only by the worker holding the workspace's worker lock, so no live attempt is touched.
        """
        with self._write() as db:
            rows = db.execute("SELECT id FROM jobs WHERE state IN ('running', 'stopping')").fetchall()
            db.execute("UPDATE jobs SET state='queued', handle=NULL, message='resumed after a worker restart' "
                       "WHERE state='running'")
            db.execute("UPDATE jobs SET state=CASE want WHEN 'cancel' THEN 'cancelled' ELSE 'stopped' END, "
                       "want=NULL, handle=NULL, ended=? WHERE state='stopping'", (time.time(),))
            ids = [r["id"] for r in rows]
        return [self.get(i) for i in ids]

    def beat(self, started: float) -> None:
        """The worker's heartbeat (what `jobs list` and the page show)."""
        with self._write() as db:
            db.execute("INSERT INTO worker (one, pid, host, started, beat) VALUES (1,?,?,?,?) ON CONFLICT(one) DO "
                       "UPDATE SET pid=excluded.pid, host=excluded.host, started=excluded.started, beat=excluded.beat",
                       (os.getpid(), socket.gethostname(), started, time.time()))

    def worker_row(self) -> dict[str, Any] | None:
        rows = self._read("SELECT pid, host, started, beat FROM worker WHERE one=1")
        return dict(rows[0]) if rows else None
