"""The engine: units of work (:mod:`sdtune.engine.unit`) scheduled as Ray tasks, retried, stopped, watched.

Ray decides where and when (a unit starts as soon as a slot with its GPUs/CPUs frees up, on any node); this module
only translates: a unit in, a Ray task that runs it in a child process out, its state read back from files. The
only module that imports Ray (with :mod:`sdtune.engine.loopback`, which sets one of its switches).

- **Embedded by default.** No address (and no ``RAY_ADDRESS``): a local Ray listening on 127.0.0.1 only
  (:mod:`sdtune.engine.loopback`) with this machine's GPUs,
  or its CPUs when it has none (``num_gpus`` fakes GPUs for tests), no dashboard, a small object store (units pass
  paths, not tensors). With an address (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``): that cluster; its nodes need
  sdtune installed and the run folders on storage they all share.
- **Retries live here, not in Ray.** Each attempt is one task with ``max_retries=0``; a crash (the child's error,
  a signal, its worker or node lost) is resubmitted up to ``retries`` times, and since a train unit always resumes
  from its newest checkpoint, a retry is a resume. Counting here is what lets a caller see ``retrying`` and the
  number of attempts. Bad input (exit 2) is never retried.
- **Workers are reused** (``max_calls=0``): Ray's default for GPU tasks is a fresh worker per task (seconds of
  start-up each); the worker never touches the GPU, its child does, and the child's memory dies with it.
- **Workers are started with the engine** (embedded Ray): Ray starts a job's worker processes only when its first
  task arrives (measured: 1.0-1.5 s on this loaded 2-core machine, even after 8 s idle: the workers the raylet
  prestarts are not used, and Ray 2.60 has no setting for it), so :class:`Engine` submits one no-op task per slot
  at once, without waiting: the workers boot while the caller prepares its units (a job server's first job, a
  command's set-up). The no-op asks for a sliver of GPU when the cluster has GPUs: Ray reuses a worker only for
  tasks of the same kind (GPU or not). :meth:`Engine.ready` waits for them.
- **Stopping** writes a stop file beside the unit's log that the attempt polls (works on any node, and the task
  then returns normally, so :meth:`Engine.wait` knows when the child has really ended: ``ray.cancel`` returns
  before that).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdtune.engine.unit import (
    EXIT_LOST,
    EXIT_STOPPED,
    Unit,
    UnitResult,
    read_attempt,
    request_stop,
    run_unit,
    unit_progress,
)
from sdtune.errors import SdtuneError

OBJECT_STORE_BYTES = 100 * 1024 * 1024  # Ray's minimum is 75 MiB; units exchange only small results
FINAL = ("finished", "failed", "stopped")
COLLECT_SECONDS = 0.2


@dataclass
class UnitStatus:
    """Where a unit stands: ``state`` queued | running | retrying | finished | failed | stopped."""

    handle: str
    name: str
    state: str = "queued"
    attempts: int = 1
    node: str = ""
    device: str = ""
    pid: int | None = None
    started: float | None = None  # when the current attempt's child started (time.time())
    submitted: float = field(default_factory=time.time)
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    returncode: int | None = None
    error: str = ""
    seconds: float = 0.0  # summed over attempts, as their units measured them

    @property
    def final(self) -> bool:
        return self.state in FINAL


@dataclass
class _Record:
    unit: Unit
    gpus: float
    cpus: float
    retries: int
    status: UnitStatus
    token: str = ""
    ref: Any = None
    cancelled: bool = False
    result: UnitResult | None = None


def _attempt(unit: Unit, attempt: int, token: str) -> UnitResult:
    """The Ray task: one attempt of ``unit`` on this worker, with the GPUs Ray gave the task."""
    import ray

    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
    return run_unit(unit, attempt=attempt, token=token, gpu_ids=[str(i) for i in ids] or None)


WARM_SECONDS = 0.1  # each warm-up task holds its worker this long, so that the slots' tasks go to distinct workers


def _warm() -> None:
    """The warm-up task: nothing but being run, which starts a worker and loads this module in it."""
    time.sleep(WARM_SECONDS)


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds, in one line, when a ``HOST:PORT`` (or ``ray://HOST:PORT``) cluster address does not answer
    (Ray itself waits about a minute before saying so)."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SdtuneError(f"--address {address!r} is not a Ray address: use HOST:PORT (the head's `ray start --head` "
                          "prints it, e.g. 10.0.0.5:6379), ray://HOST:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SdtuneError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start it with "
                          f"`ray start --head` on that machine (docs/scale.md), or leave out --address and RAY_ADDRESS "
                          "to run on this machine") from None


def use_token_if_available() -> None:
    """Ray >= 2.52's ``ray start --head`` turns on token authentication when a token exists (``~/.ray/auth_token``,
    ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``), but a driver given an explicit address does not send it unless
    ``RAY_AUTH_MODE=token`` was set before Ray read its config: it is refused ("InvalidAuthToken") after a minute
    of retries. Do what Ray itself does for ``address="auto"`` (a chosen ``RAY_AUTH_MODE`` wins, e.g. disabled)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


class _QuietOffMainThread(logging.Filter):
    """Drops Ray's warning that ``ray.init`` off the main thread sets no SIGTERM handler: that is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """``ray.init`` on the main thread replaces the SIGTERM handler with ``sys.exit(15)`` (Ray 2.60,
    ``ray._private.worker.init``): a command that stops its runs at a checkpoint on SIGTERM (``sdtune.stopping``)
    would instead die with exit 15 and no summary. A handler the caller installed comes back afterwards (Ray's
    stays where there was none: it ends the driver through ``ray.shutdown``)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    quiet = _QuietOffMainThread()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
        if callable(previous) and signal.getsignal(signal.SIGTERM) is not previous:
            signal.signal(signal.SIGTERM, previous)


class Engine:
    """Submit units, poll them, cancel them; see the module docstring. Thread-safe."""

    def __init__(self, address: str | None = None, num_gpus: float | None = None, num_cpus: float | None = None,
                 *, object_store_bytes: int = OBJECT_STORE_BYTES) -> None:
        import ray

        self._ray = ray
        self._lock = threading.RLock()
        self._records: dict[str, _Record] = {}
        self._events: list[UnitStatus] = []
        self._id = uuid.uuid4().hex[:8]
        self._count = 0
        self._collected = 0.0
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.address = address
        self._owns = False  # this engine called ray.init (and ends it at shutdown)
        self._reaper = None
        self._restore_network: Any = None
        started = time.time()
        with _keep_sigterm_handler():
            self._init(ray, address, num_gpus, num_cpus, object_store_bytes)
        self.start_seconds = round(time.time() - started, 2)
        self._remote = ray.remote(max_calls=0, max_retries=0)(_attempt)
        self._warming = self._warm_workers() if self._owns and not address else []

    def _init(self, ray: Any, address: str | None, num_gpus: float | None, num_cpus: float | None,
              object_store_bytes: int) -> None:
        from sdtune.engine.loopback import is_loopback_address, loopback_only

        if ray.is_initialized():
            pass
        elif address:
            check_address(address)
            use_token_if_available()
            if is_loopback_address(address):  # a one-machine cluster on 127.0.0.1: this driver's node is loopback too
                self._restore_network = loopback_only()
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SdtuneError(f"cannot join the Ray cluster at {address}: {str(exc).strip().splitlines()[0]}"
                                  ) from None
            self._owns = True
        else:
            os.environ.pop("RAY_ADDRESS", None)
            self._restore_network = loopback_only()  # every Ray server on 127.0.0.1 (sdtune.engine.loopback)
            ray.init(num_cpus=int(num_cpus) if num_cpus is not None else os.cpu_count() or 1, num_gpus=num_gpus,
                     include_dashboard=False, object_store_memory=object_store_bytes, log_to_driver=False,
                     logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
            self._owns = True
            from sdtune.engine.reaper import start_reaper

            self._reaper = start_reaper()  # Ray's processes go even if this one is killed

    def _warm_workers(self) -> list[Any]:
        """Submit one no-op task per slot (GPU when there are GPUs, else CPU), not waited for: Ray starts the
        workers now rather than at the first unit. Local Ray only (a cluster's slots may be many and elsewhere)."""
        total = self.resources
        gpus, cpus = int(total.get("GPU", 0)), max(1, int(total.get("CPU", 1)))
        slots = min(gpus, cpus) if gpus else cpus
        warm = self._ray.remote(max_calls=0, max_retries=0)(_warm).options(
            num_cpus=0.01, num_gpus=0.01 if gpus else 0, name="sdtune:warm-up")
        return [warm.remote() for _ in range(max(1, slots))]

    def ready(self, timeout: float | None = 60.0) -> bool:
        """Wait (up to ``timeout`` seconds) until the workers started with the engine are up; True when they are
        (or there were none to start). Optional: units submitted before then simply wait for them."""
        if not self._warming:
            return True
        done, _ = self._ray.wait(self._warming, num_returns=len(self._warming), timeout=timeout)
        return len(done) == len(self._warming)

    @property
    def resources(self) -> dict[str, float]:
        """The cluster's total resources (``CPU``, ``GPU``, ...)."""
        return dict(self._ray.cluster_resources())

    @property
    def default_gpus(self) -> float:
        """GPUs a unit asks for when not told: 1 on a cluster with GPUs, 0 without."""
        return 1.0 if self.resources.get("GPU", 0) > 0 else 0.0

    def submit(self, unit: Unit | Sequence[str], *, log: Path | None = None, cwd: Path | None = None,
               name: str | None = None, run_dir: Path | None = None, gpus: float | None = None,
               cpus: float | None = None, retries: int = 0, env: Mapping[str, str] | None = None) -> str:
        """Queue a unit (or build one from ``argv`` and ``log``); returns its handle (a string, storable)."""
        if not isinstance(unit, Unit):
            if log is None:
                raise ValueError("submit(argv) needs log=")
            unit = Unit(tuple(str(a) for a in unit), Path(log), name or "", run_dir and Path(run_dir),
                        cwd and Path(cwd), dict(env or {}))
        gpus = self.default_gpus if gpus is None else float(gpus)
        cpus = 1.0 if cpus is None else float(cpus)
        with self._lock:
            self._count += 1
            handle = f"{self._id}-{self._count}"
            record = _Record(unit, gpus, cpus, retries, UnitStatus(handle, unit.name or handle))
            self._records[handle] = record
            self._launch(record)
            self._events.append(replace(record.status))
        return handle

    def _launch(self, record: _Record) -> None:
        record.token = f"{record.status.handle}-a{record.status.attempts}"
        options = {"num_gpus": record.gpus, "num_cpus": record.cpus, "name": f"sdtune:{record.status.name}"[:100]}
        record.ref = self._remote.options(**options).remote(record.unit, record.status.attempts, record.token)

    def _collect(self, force: bool = False) -> None:
        """Take the results that are ready, retry crashes, note which attempts have started. At most every
        ``COLLECT_SECONDS`` unless ``force``: a caller asking for each of a thousand units in a row reads the
        attempt files once, not a thousand times."""
        now = time.monotonic()
        if not force and now - self._collected < COLLECT_SECONDS:
            return
        self._collected = now
        pending = {r.ref: r for r in self._records.values() if not r.status.final and r.ref is not None}
        if pending:
            ready, _ = self._ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                self._ended(pending[ref], ref)
        for record in self._records.values():
            status = record.status
            if status.final:
                continue
            info = read_attempt(record.unit)
            if info.get("token") == record.token and status.state != "running":
                status.state = "running"
                status.node, status.device = info.get("node", ""), info.get("device", "")
                status.pid, status.started = info.get("pid"), info.get("started")
                self._events.append(replace(status))

    def _ended(self, record: _Record, ref: Any) -> None:
        status = record.status
        try:
            result: UnitResult = self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            result = UnitResult(record.unit.name, 1, "crash", f"{type(exc.cause).__name__}: {exc.cause}"[:400],
                                attempt=status.attempts)
        except self._ray.exceptions.RayError as exc:
            result = UnitResult(record.unit.name, EXIT_LOST, "lost", "its Ray worker or node died (killed, out of "
                                f"memory, preempted): {type(exc).__name__}", attempt=status.attempts,
                                node=status.node, device=status.device)
            if status.started:
                result.seconds = round(time.time() - status.started, 2)
        record.result = result
        status.seconds = round(status.seconds + result.seconds, 2)
        status.node, status.device = result.node or status.node, result.device or status.device
        status.returncode, status.error = result.returncode, result.error
        if record.cancelled and result.kind in ("crash", "lost"):
            status.state = "stopped" if result.kind == "lost" else "failed"
        elif result.retryable and status.attempts <= record.retries:
            status.attempts += 1
            status.state, status.pid, status.started = "retrying", None, None
            self._launch(record)
        else:
            status.state = result.status
        if status.state == "stopped":
            status.returncode = EXIT_STOPPED
        self._events.append(replace(status))

    def events(self) -> list[UnitStatus]:
        """State changes since the last call, oldest first (each a snapshot); updates every unit."""
        with self._lock:
            self._collect(force=True)
            events, self._events = self._events, []
        return events

    def status(self, handle: str) -> UnitStatus:
        """A unit's live state, with step/steps/loss read from its run folder when it has one."""
        with self._lock:
            self._collect()
            record = self._records[handle]
            status = replace(record.status)
        if record.unit.run_dir is not None:
            status.step, status.steps, status.loss = unit_progress(record.unit.run_dir)
        return status

    def poll(self, handle: str) -> int | None:
        """None while the unit is queued, running or retrying; then its final exit code (module :mod:`unit`)."""
        with self._lock:
            self._collect()
            status = self._records[handle].status
            return status.returncode if status.final else None

    def result(self, handle: str) -> UnitResult | None:
        """The last attempt's result once the unit is final (None before)."""
        with self._lock:
            self._collect()
            record = self._records[handle]
            return record.result if record.status.final else None

    def cancel(self, handle: str) -> None:
        """Stop the unit at a checkpoint (its child gets SIGTERM once, saves and exits 130); not retried."""
        with self._lock:
            record = self._records[handle]
            if record.status.final or record.cancelled:
                return
            record.cancelled = True
            request_stop(record.unit, record.token)

    def wait(self, handles: Iterable[str] | None = None, timeout: float | None = None, poll: float = 0.25) -> bool:
        """Block until the units (default: all) are final; False when ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = list(handles) if handles is not None else None
        while True:
            with self._lock:
                self._collect()
                records = [self._records[h] for h in wanted] if wanted is not None else list(self._records.values())
                if all(r.status.final for r in records):
                    return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(poll)

    def handles(self) -> list[str]:
        with self._lock:
            return list(self._records)

    def shutdown(self, grace: float = 300.0) -> None:
        """Stop what still runs (each at a checkpoint), wait up to ``grace`` seconds, and end the Ray this engine
        started (a cluster's Ray stays; this driver's tasks end with it)."""
        for handle in self.handles():
            self.cancel(handle)
        self.wait(timeout=grace)
        if self._owns and self._ray.is_initialized():
            from sdtune.engine.reaper import stop_reaper

            self._ray.shutdown()
            stop_reaper(self._reaper)
        if self._restore_network is not None:
            self._restore_network()
            self._restore_network = None
