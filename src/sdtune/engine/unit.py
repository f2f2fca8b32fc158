"""One unit of work: an ``sdtune`` command line run in a child process, its state read back from files.

The engine (:mod:`sdtune.engine.ray_engine`) decides where and when a unit runs; this module runs one attempt of it
wherever it was placed, and knows nothing of Ray. Why a child process and not a call: ``sdtune train`` owns its
process (an ``Accelerator``, signal handlers, GPU memory), a crash or an out-of-memory must not take the scheduler's
worker with it, and a child is what can be stopped (SIGTERM: it saves a checkpoint and exits 130) and killed.

The child runs in its own session (so a terminal's Ctrl-C reaches it only through the engine, once) with a
parent-death signal (Linux ``PR_SET_PDEATHSIG`` = SIGKILL): when the process supervising it dies (a killed Ray
worker, a lost node), the child dies too instead of holding its GPU. A run folder (``run_dir``) is locked for the
child's whole life (``RUN/.engine.lock``, an ``flock`` the child inherits), so a retry never writes into a folder
an earlier attempt still writes.

Exit codes of a unit (``UnitResult.returncode``): 0 done; 2 bad input (``SdtuneError``: config, photos, a refused
resume; never retried); 130 stopped on request (a checkpoint was saved); anything else a crash (Python error,
killed by a signal: negative, 137 when the supervising worker itself was lost), which a retry resumes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # sdtune's one-line user errors (cli.main): fixing the input is the only cure
EXIT_STOPPED = 130  # stopped on request after saving a checkpoint (sdtune train's code for that)
EXIT_LOST = 137  # the worker (or node) supervising the child died: the child was killed with it
LOCK_NAME = ".engine.lock"
PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.25
LOCK_WAIT_SECONDS = 600.0  # an earlier attempt's child on another node (no parent-death signal across hosts)
STOP_GRACE_SECONDS = 900.0  # a stopped child finishes its step and saves; past this it is killed


@dataclass(frozen=True)
class Unit:
    """What to run: ``python -m sdtune *argv`` with stdout/stderr appended to ``log``.

    ``run_dir``: the run folder a ``train`` unit writes (idempotence, resume, lock, progress); None for commands
    without one (eval, caption). Paths should be absolute: a worker's working directory is the engine's.
    """

    argv: tuple[str, ...]
    log: Path
    name: str = ""
    run_dir: Path | None = None
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    module: str = "sdtune"  # what ``python -m`` runs (tests run small stand-ins)

    @property
    def control(self) -> Path:
        """``.<log name>.engine/`` beside the log: the attempt file and the stop request (hidden in a run folder)."""
        return self.log.parent / f".{self.log.name}.engine"

    def command(self) -> list[str]:
        argv = list(self.argv)
        if argv and argv[0] == "train" and self.run_dir is not None and not any(
                a == "--resume" or a.startswith("--resume=") for a in argv):
            argv += ["--resume", "latest"]  # a new run starts at 0; an interrupted one resumes exactly
        return [sys.executable, "-m", self.module, *argv]


@dataclass
class UnitResult:
    """How one attempt ended. ``kind``: ok | bad_input | stopped | crash | lost (the last two are retried)."""

    name: str
    returncode: int
    kind: str
    error: str = ""
    seconds: float = 0.0
    node: str = ""
    device: str = ""
    attempt: int = 1
    skipped: bool = False  # finished before: no child was started

    @property
    def status(self) -> str:
        return {"ok": "finished", "stopped": "stopped"}.get(self.kind, "failed")

    @property
    def retryable(self) -> bool:
        return self.kind in ("crash", "lost")


def classify(returncode: int, stop_asked: bool) -> str:
    """The kind of an exit code (module docstring); a 130 nobody asked for (a preempted node's SIGTERM) is a crash:
    the unit did not finish and a retry resumes it."""
    if returncode == EXIT_OK:
        return "ok"
    if returncode == EXIT_BAD_INPUT:
        return "bad_input"
    if returncode == EXIT_STOPPED and stop_asked:
        return "stopped"
    if returncode == EXIT_LOST:
        return "lost"
    return "crash"


def _die_with_parent(parent: int) -> Callable[[], None]:
    """``preexec_fn``: SIGKILL this child when its parent thread ends; exit at once if the parent is gone already.

    ``prctl`` is looked up here, before the fork: a ``dlopen`` in the forked child of a threaded parent (a Ray
    worker) could wait forever on a lock another thread held.
    """
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # died between fork and prctl
            os._exit(EXIT_LOST)

    return setup


def error_line(log: Path, offset: int = 0) -> str:
    """The first line that says what went wrong in ``log`` after ``offset``: sdtune's ``error:`` line, else the
    last lines of a traceback, joined."""
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1]
    return " / ".join(lines[-2:])[:400]


def device_of(gpu_ids: list[str] | None) -> str:
    return f"cuda:{','.join(gpu_ids)}" if gpu_ids else "cpu"


def attempt_header(attempt: int, node: str, device: str, command: list[str]) -> str:
    """The line each attempt appends to its unit's log before the command's own output (read back by
    :func:`attempt_numbers`): ``=== 2026-12-07 15:00:00 attempt 2 on host (cuda:0): python -m sdtune train ...``."""
    return f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt} on {node} ({device}): {' '.join(command)}\n"


_HEADER = re.compile(r"^=== \S+ \S+ attempt (\d+) on .*?\): (.*)$", re.M)


def attempt_numbers(log_text: str, command_part: str = "") -> list[tuple[int, int]]:
    """``(attempt, offset just after its header)`` for each :func:`attempt_header` in a log, in order; with
    ``command_part``, only attempts whose command contains it (e.g. ``-m sdtune train``, not a later ``pick``)."""
    return [(int(m.group(1)), m.end()) for m in _HEADER.finditer(log_text) if command_part in m.group(2)]


def read_attempt(unit: Unit) -> dict[str, Any]:
    """What the running (or last) attempt wrote about itself: attempt, node, device, pid, started; {} if none."""
    try:
        data = json.loads((unit.control / "attempt.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def request_stop(unit: Unit, token: str) -> None:
    """Ask the attempt ``token`` (or every attempt: ``*``) of ``unit`` to stop at a checkpoint; read by
    :func:`run_unit` wherever it runs (the log's folder is on shared storage, as run folders are)."""
    unit.control.mkdir(parents=True, exist_ok=True)
    (unit.control / "stop").write_text(token, encoding="utf-8")


def _stop_requested(unit: Unit, token: str) -> bool:
    try:
        asked = (unit.control / "stop").read_text(encoding="utf-8").strip()
    except OSError:
        return False
    return asked in (token, "*")


def _finished(run_dir: Path | None) -> bool:
    if run_dir is None:
        return False
    from sdtune.run_status import run_progress

    return run_progress(run_dir).finished


class _RunLock:
    """``RUN/.engine.lock``: an exclusive flock, inherited by the child, so it lasts as long as either holds it."""

    def __init__(self, run_dir: Path | None) -> None:
        self.fd: int | None = None
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, give_up: Callable[[], bool], timeout: float = LOCK_WAIT_SECONDS) -> bool:
        if self.fd is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if give_up() or time.monotonic() > deadline:
                    return False
                time.sleep(POLL_SECONDS)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the last holder (the child has ended by now)
            self.fd = None


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run_unit(unit: Unit, *, attempt: int = 1, token: str = "", gpu_ids: list[str] | None = None,
             stop: Callable[[], bool] | None = None) -> UnitResult:
    """Run one attempt of ``unit`` here and wait for it; never raises for the unit's own failures.

    ``token``: this attempt's name for stop requests (:func:`request_stop`); ``gpu_ids``: the devices it may use
    (``CUDA_VISIBLE_DEVICES``; None: left as inherited); ``stop``: an extra stop condition polled while it runs.
    A KeyboardInterrupt while waiting (a signal, ``ray.cancel``) stops the child at a checkpoint first.
    """
    node, device = socket.gethostname(), device_of(gpu_ids)
    started = time.time()
    result = UnitResult(unit.name, EXIT_OK, "ok", node=node, device=device, attempt=attempt)
    if _finished(unit.run_dir):
        result.skipped = True
        return result
    asked = lambda: _stop_requested(unit, token) or bool(stop and stop())  # noqa: E731
    unit.control.mkdir(parents=True, exist_ok=True)
    lock = _RunLock(unit.run_dir)
    try:
        if not lock.acquire(asked):
            stopped = asked()
            result.returncode = EXIT_STOPPED if stopped else 1
            result.kind = "stopped" if stopped else "crash"
            result.error = "" if stopped else f"{unit.run_dir} stayed locked by an earlier attempt"
            return result
        if _finished(unit.run_dir):  # an earlier attempt finished it while we waited
            result.skipped = True
            return result
        if asked():  # stopped while it was queued
            result.returncode, result.kind = EXIT_STOPPED, "stopped"
            return result
        env = {**os.environ, **unit.env}
        if gpu_ids is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
        unit.log.parent.mkdir(parents=True, exist_ok=True)
        command = unit.command()
        with open(unit.log, "ab") as log:
            offset = log.tell()
            log.write(attempt_header(attempt, node, device, command).encode())
            log.flush()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=unit.cwd, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent(os.getpid()),
                                     pass_fds=() if lock.fd is None else (lock.fd,))
        info = {"attempt": attempt, "token": token, "node": node, "device": device, "pid": child.pid,
                "started": started}
        (unit.control / "attempt.json").write_text(json.dumps(info), encoding="utf-8")
        stop_sent = _supervise(child, asked)
        result.returncode = child.returncode
        result.kind = classify(child.returncode, stop_sent)
        if result.kind == "ok" and unit.run_dir is not None and not _finished(unit.run_dir):
            result.kind, result.returncode = "crash", 1  # exit 0 without a finished run: not done
            result.error = "the command exited 0 but the run is not finished"
        elif result.kind not in ("ok", "stopped"):
            result.error = error_line(unit.log, offset) or f"exit status {child.returncode}"
        return result
    finally:
        lock.close()
        result.seconds = round(time.time() - started, 2)


def _supervise(child: subprocess.Popen, asked: Callable[[], bool]) -> bool:
    """Wait for ``child``; on a stop request (or an interrupt here) SIGTERM its group once, kill it past the grace.
    Returns whether a stop was sent. The child's group is SIGKILLed if this function is left by an exception."""
    stop_sent_at: float | None = None
    try:
        while True:
            try:
                if child.poll() is not None:
                    return stop_sent_at is not None
                if stop_sent_at is None and asked():
                    _kill_group(child.pid, signal.SIGTERM)
                    stop_sent_at = time.monotonic()
                elif stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_GRACE_SECONDS:
                    _kill_group(child.pid, signal.SIGKILL)
                time.sleep(POLL_SECONDS)
            except KeyboardInterrupt:
                if stop_sent_at is None:
                    _kill_group(child.pid, signal.SIGTERM)
                    stop_sent_at = time.monotonic()
    finally:
        if child.poll() is None:
            _kill_group(child.pid, signal.SIGKILL)
            child.wait()


def result_dict(result: UnitResult) -> dict[str, Any]:
    return asdict(result)


def unit_progress(run_dir: Path) -> tuple[int | None, int | None, float | None]:
    """``(step, steps, loss)`` of a run now: the last line of ``RUN/logs/progress.jsonl`` when the trainer writes
    one, else the newest checkpoint's step and the config's ``train.max_steps`` (no loss). Reads only the file's
    tail (``sdtune.run_folder.last_progress``): called every second for every unit."""
    from sdtune.run_folder import last_progress
    from sdtune.run_status import run_progress

    for row in last_progress(run_dir, 1):
        loss = row.get("loss")
        return row["step"], row.get("max_steps"), float(loss) if isinstance(loss, int | float) else None
    progress = run_progress(run_dir)
    return (progress.step or None), progress.max_steps, None
