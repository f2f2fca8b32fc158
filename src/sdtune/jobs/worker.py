"""The worker: takes queued jobs by priority, runs each on the engine, records how it ended. Nothing else.

One worker per workspace (``WS/worker.lock``, an advisory lock the OS drops when the process dies): `sdtune serve`
runs one in a thread, `sdtune jobs work` runs one without the page; a second is refused with the first's pid.

At start, attempts a dead worker left ``running`` go back to the queue (:meth:`JobStore.recover`) and resume from
their newest checkpoint (a train job runs ``sdtune train CONFIG --resume latest``). At a clean shutdown the
attempts in flight are stopped (the run saves a checkpoint) and queued again, so the next start continues them.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sdtune.errors import SdtuneError
from sdtune.jobs.store import Job, JobStore


class Executor(Protocol):
    """What the worker needs of the engine (``sdtune.engine``): start a unit of work, ask, stop, close."""

    def start(self, job: Job, log: Path) -> str: ...
    def exit_code(self, handle: str) -> int | None: ...  # None while it runs
    def stop(self, handle: str) -> None: ...  # SIGTERM: a training run saves a checkpoint and exits 130
    def close(self) -> None: ...


def log_path(workspace: Path, job_id: int) -> Path:
    return workspace / "jobs" / f"{job_id}.log"


class WorkerLock:
    """``WS/worker.lock`` held for the worker's life; :meth:`holder` tells `submit` whether a worker runs."""

    def __init__(self, workspace: Path) -> None:
        self.path = workspace / "worker.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SdtuneError(self._held(self.path.read_text(encoding="utf-8").strip() or "?")) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def check_free(self) -> None:
        """Raise SdtuneError when another worker holds the lock (asked before a worker starts its engine)."""
        if (pid := self.holder()) is not None:
            raise SdtuneError(self._held(pid))

    def _held(self, pid: object) -> str:
        return (f"a worker already runs jobs of this workspace (pid {pid}; {self.path}); one per workspace: stop it "
                "first, or give another --workspace")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid of the running worker, None when no worker holds the lock."""
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = self.path.read_text(encoding="utf-8").strip()
            return int(text) if text.isdigit() else -1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


@dataclass
class Worker:
    """Runs the queue of ``workspace`` on ``executor`` with at most ``slots`` jobs at once."""

    workspace: Path
    executor: Executor
    slots: int = 1
    poll_seconds: float = 1.0
    say: Callable[[str], None] = print
    stop_event: threading.Event = field(default_factory=threading.Event)
    running: dict[int, str] = field(default_factory=dict)  # job id -> engine handle
    _asked: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.store = JobStore.in_workspace(self.workspace)
        self.lock = WorkerLock(self.workspace)

    def serve(self) -> None:
        """Hold the lock, recover, then loop until :attr:`stop_event` is set; stops and re-queues what runs."""
        self.lock.acquire()
        started = time.time()
        try:
            for job in self.store.recover():
                self.say(f"job {job.id} ({job.name}): {job.state} after the previous worker ended")
            while not self.stop_event.is_set():
                self.store.beat(started)
                self.tick()
                self.stop_event.wait(self.poll_seconds)
        finally:
            self._shutdown()
            self.lock.release()

    def tick(self) -> None:
        """One round: ask what was asked to stop to stop, record what ended, start what fits."""
        for job_id, handle in list(self.running.items()):
            job = self.store.get(job_id)
            if job.state == "stopping" and job_id not in self._asked:
                self.executor.stop(handle)
                self._asked.add(job_id)
            code = self.executor.exit_code(handle)
            if code is not None:
                del self.running[job_id]
                self._asked.discard(job_id)
                ended = self.store.ended(job_id, code, _ending(code, log_path(self.workspace, job_id)))
                self._log(job_id, f"--- attempt {ended.attempts} ended: {ended.state} (exit {code})")
                self.say(f"job {job_id} ({ended.name}): {ended.state}")
        while len(self.running) < self.slots and not self.stop_event.is_set():
            job = self.store.claim_next()
            if job is None:
                break
            self._log(job.id, f"--- attempt {job.attempts}: sdtune {' '.join(job.argv)}")
            try:
                handle = self.executor.start(job, log_path(self.workspace, job.id))
            except Exception as exc:  # noqa: BLE001 - an engine that cannot start it: the job failed, say why
                self.store.ended(job.id, None, f"could not start: {exc}")
                self._log(job.id, f"--- could not start: {exc}")
                continue
            self.store.set_handle(job.id, handle)
            self.running[job.id] = handle
            self.say(f"job {job.id} ({job.name}): started")

    def _shutdown(self, grace_seconds: float = 120.0) -> None:
        """Stop the attempts in flight (each saves a checkpoint) and queue them again for the next worker."""
        for handle in self.running.values():
            self.executor.stop(handle)
        deadline = time.time() + grace_seconds
        while self.running and time.time() < deadline:
            for job_id, handle in list(self.running.items()):
                if self.executor.exit_code(handle) is not None:
                    self._requeue_or_end(job_id)
                    del self.running[job_id]
            time.sleep(0.2)
        for job_id in list(self.running):
            self._requeue_or_end(job_id)
        self.running.clear()
        self.executor.close()

    def _requeue_or_end(self, job_id: int) -> None:
        job = self.store.get(job_id)
        if job.state == "stopping":  # the user's stop / cancel wins over the restart
            self.store.ended(job_id, 130, "stopped")
        else:
            self.store.requeue(job_id, "the worker stopped; it resumes when a worker starts")
            self._log(job_id, "--- the worker stopped: queued again, resumes from its checkpoint")

    def _log(self, job_id: int, line: str) -> None:
        path = log_path(self.workspace, job_id)
        with open(path, "a+b") as fh:
            fh.seek(0, 2)
            fresh_line = fh.tell() == 0 or (fh.seek(-1, 2) or True) and fh.read(1) in (b"\n", b"\r")
            fh.seek(0, 2)  # a progress bar's last redraw ends without a newline: start a line of our own
            fh.write(("" if fresh_line else "\n").encode() + f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n".encode())


def _ending(code: int, log: Path | None = None) -> str:
    """The job's message for exit status ``code``: for a failure, the command's own ``error:`` line from the end
    of ``log`` (what `sdtune jobs list` and the page show), else the status and where to look."""
    if code == 0:
        return ""
    if code == 130:
        return "stopped (checkpoint saved; resume continues it)"
    reason = failure_line(log) if log is not None else None
    return reason or f"exited with status {code} (the log's last lines say why)"


def job_message(workspace: Path, job: Job) -> str:
    """The job's message; for a failure recorded before the worker kept the error line (or by an engine that could
    not say), the error line read from its log now."""
    if job.state == "failed" and job.message.startswith("exited with status"):
        return failure_line(log_path(workspace, job.id)) or job.message
    return job.message


def failure_line(log: Path, tail_bytes: int = 16_384) -> str | None:
    """The last ``error: ...`` line the command printed in this attempt (its one-line reason, continuation lines
    joined), or the last line of a traceback; None when the log's tail has neither."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - tail_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.rstrip() for line in text.replace("\r", "\n").splitlines()]
    start = max((i for i, line in enumerate(lines) if line.startswith("=== ")), default=0)  # this attempt only
    lines = lines[start:]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            more = [line.strip() for line in lines[i + 1 : i + 4] if line.startswith("  ")]
            return " ".join([lines[i], *more])[:500]
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        last = next((line for line in reversed(lines) if line and not line[0].isspace()
                     and not line[:4].isdigit()), None)  # not the worker's own time-stamped lines
        return last[:500] if last else None
    return None
