"""The Ray engine on a local Ray with two fake GPUs: slots, retries, bad input, cancel, a killed worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from sdtune.engine import EXIT_BAD_INPUT, EXIT_STOPPED, Unit
from sdtune.engine.unit import read_attempt

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


SIGTERM_AFTER_INIT: list = []


@pytest.fixture(scope="module")
def engine() -> Iterator:
    from sdtune.engine import Engine

    def own_handler(signum, frame) -> None:  # noqa: ARG001 - a caller's own (sdtune.stopping installs one)
        pass

    previous = signal.signal(signal.SIGTERM, own_handler)
    try:
        eng = Engine(num_gpus=2, num_cpus=2)  # on the main thread: ray.init installs a SIGTERM handler there
        SIGTERM_AFTER_INIT.append(signal.getsignal(signal.SIGTERM) is own_handler)
    finally:
        signal.signal(signal.SIGTERM, previous)
    yield eng
    eng.shutdown(grace=30)


def test_the_callers_sigterm_handler_survives_the_engine(engine) -> None:
    """ray.init replaced it with sys.exit(15): personalize then died on SIGTERM (exit 15, no summary) instead of
    stopping its people at a checkpoint."""
    assert SIGTERM_AFTER_INIT == [True]


def _unit(tmp: Path, name: str, mode: str, seconds: float = 1.0) -> Unit:
    return Unit((mode, str(tmp / name), str(seconds)), tmp / f"{name}.log", name, env=ENV, module="tests.engine_child")


def _spans(folder: Path) -> list[tuple[float, float]]:
    return [(float(p.read_text()), float((folder / p.name.replace("pid-", "done-")).read_text()))
            for p in folder.glob("pid-*") if (folder / p.name.replace("pid-", "done-")).exists()]


def test_workers_start_with_the_engine(engine, tmp_path: Path) -> None:
    """Ray starts a job's workers only at its first task (1-1.5 s here): the engine starts one per slot at once, so
    once ``ready()`` the first units run in workers that were up before they were submitted (and GPU units reuse the
    warm-up's workers: same kind)."""
    assert engine.ready(timeout=120)
    submitted = time.time()
    handles = [engine.submit(_unit(tmp_path, f"w{i}", "sleep", 3.0)) for i in range(2)]
    workers = []
    deadline = time.time() + 60
    while len(workers) < 2 and time.time() < deadline:
        workers = [psutil.Process(a.pid).parent() for h in handles if (a := engine.status(h)).pid]
        time.sleep(0.1)
    assert len(workers) == 2, [engine.status(h) for h in handles]
    assert all(w.create_time() < submitted for w in workers), "a unit waited for a new Ray worker"
    assert engine.wait(handles, timeout=120) and [engine.poll(h) for h in handles] == [0, 0]


def test_four_units_share_two_gpu_slots(engine, tmp_path: Path) -> None:
    assert engine.default_gpus == 1.0 and engine.resources["GPU"] == 2
    handles = [engine.submit(_unit(tmp_path, f"p{i}", "sleep", 2.0)) for i in range(4)]
    assert engine.wait(handles, timeout=120)
    assert [engine.poll(h) for h in handles] == [0, 0, 0, 0]
    spans = [s for i in range(4) for s in _spans(tmp_path / f"p{i}")]
    assert len(spans) == 4
    busiest = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
    assert busiest == 2, f"two slots: at most two at once, and both used ({spans})"
    devices = {(tmp_path / f"p{i}" / next((tmp_path / f"p{i}").glob("cuda-*")).name).read_text() for i in range(4)}
    assert devices == {"0", "1"}
    status = engine.status(handles[0])
    assert status.state == "finished" and status.device in ("cuda:0", "cuda:1") and status.attempts == 1


def test_crash_is_retried_bad_input_is_not(engine, tmp_path: Path) -> None:
    crash = engine.submit(_unit(tmp_path, "crash", "crash-once"), retries=1)
    bad = engine.submit(_unit(tmp_path, "bad", "bad"), retries=3)
    once = engine.submit(_unit(tmp_path, "nore", "crash-once"), retries=0)
    assert engine.wait(timeout=120)
    assert engine.poll(crash) == 0 and engine.status(crash).attempts == 2
    assert engine.poll(bad) == EXIT_BAD_INPUT and engine.status(bad).attempts == 1
    assert engine.result(bad).error == "error: data.instance_dir photos/ has no images"
    assert engine.poll(once) == 1 and engine.status(once).state == "failed"
    states = [e.state for e in engine.events() if e.handle == crash]
    assert states[0] == "queued" and "retrying" in states and states[-1] == "finished"


def test_cancel_stops_the_child_at_a_checkpoint(engine, tmp_path: Path) -> None:
    unit = _unit(tmp_path, "long", "sleep", 60)
    handle = engine.submit(unit)
    while engine.status(handle).state != "running":
        time.sleep(0.1)
    pid = read_attempt(unit)["pid"]
    engine.cancel(handle)
    assert engine.wait([handle], timeout=30)
    assert engine.poll(handle) == EXIT_STOPPED and engine.status(handle).state == "stopped"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_worker_is_retried_and_its_child_does_not_survive(engine, tmp_path: Path) -> None:
    unit = _unit(tmp_path, "victim", "sleep", 4)
    handle = engine.submit(unit, retries=1)
    while engine.status(handle).state != "running":
        time.sleep(0.1)
    child = psutil.Process(read_attempt(unit)["pid"])
    worker = child.parent()
    assert worker is not None and worker.pid != os.getpid()
    os.kill(worker.pid, signal.SIGKILL)
    child.wait(10)  # the parent-death signal
    assert engine.wait([handle], timeout=120)
    status = engine.status(handle)
    assert (status.state, status.attempts, engine.poll(handle)) == ("finished", 2, 0)
    assert len(list((tmp_path / "victim").glob("done-*"))) == 1


def test_a_killed_driver_leaves_nothing_running(tmp_path: Path) -> None:
    """kill -9 of the process that started the embedded Ray: its units' children and Ray's own processes end
    (Ray's agents survived this before the reaper)."""
    import subprocess
    import sys

    code = ("import sys, time; from pathlib import Path; from sdtune.engine import Engine, Unit; "
            "eng = Engine(num_gpus=1, num_cpus=1); "
            f"eng.submit(Unit(('sleep', {str(tmp_path / 'w')!r}, '120'), Path({str(tmp_path / 'u.log')!r}), "
            f"env={ENV!r}, module='tests.engine_child')); time.sleep(600)")
    driver = subprocess.Popen([sys.executable, "-c", code], env=os.environ | ENV, start_new_session=True)
    deadline = time.time() + 120
    while not list((tmp_path / "w").glob("pid-*")):
        assert driver.poll() is None and time.time() < deadline
        time.sleep(0.1)
    family = psutil.Process(driver.pid).children(recursive=True)
    family.append(psutil.Process(int(next((tmp_path / "w").glob("pid-*")).name.split("-")[1])))
    assert any("ray::" in " ".join(p.cmdline()) for p in family)
    driver.kill()
    driver.wait()
    deadline = time.time() + 30
    alive = family
    while alive and time.time() < deadline:
        time.sleep(1)
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not alive, f"left running after kill -9 of the driver: {[(p.pid, p.cmdline()[:2]) for p in alive]}"


def test_the_embedded_ray_listens_on_loopback_only(engine) -> None:
    """ray.init(_node_ip_address="127.0.0.1") alone left gcs_server and raylet on every interface (*:PORT): a job
    queue or web page on this machine exposed Ray's ports to the network (sdtune.engine.loopback)."""
    loopback = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    listening = []
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            listening += [(proc.name(), c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="tcp")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    assert any(name == "gcs_server" for name, _, _ in listening), listening  # Ray's servers are among them
    assert all(ip in loopback for _, ip, _ in listening), [s for s in listening if s[1] not in loopback]
