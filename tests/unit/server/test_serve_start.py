"""`sdtune serve` and `sdtune jobs work` refuse in a second what would stop them after they started.

Found by a newcomer: `sdtune serve --port P` with P taken printed "sdtune serve: http://127.0.0.1:P/" (as if it
served), started the worker (which takes queued jobs), then died on uvicorn's bind error; `sdtune jobs work` beside
a running `serve` started a Ray engine before it found the workspace's worker lock taken.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from sdtune.cli import main
from sdtune.jobs.worker import WorkerLock
from sdtune.jobs.workspace import find_workspace


def _fails(capsys, *argv: str) -> str:
    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - started < 20, "refused only after starting the engine"
    return err


def test_a_taken_port_is_one_line_before_anything_starts(tmp_path, capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        err = _fails(capsys, "serve", "--workspace", str(tmp_path / "ws"), "--port", str(port), "--no-worker")
    assert f"cannot listen on 127.0.0.1:{port}: the port is in use" in err and "--port" in err
    assert not (tmp_path / "ws").exists()  # nothing was made


def test_a_second_worker_is_refused_before_its_engine_starts(tmp_path, capsys):
    ws = find_workspace(tmp_path / "ws")
    lock = WorkerLock(ws)
    lock.acquire()
    try:
        err = _fails(capsys, "jobs", "work", "--workspace", str(ws))
    finally:
        lock.release()
    assert "a worker already runs jobs of this workspace" in err
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "the engine was started before the lock was asked"
