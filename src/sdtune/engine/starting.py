"""Start the engine in the background while the caller prepares its units, then hand it over.

Why: an embedded Ray takes seconds to start (about 4 s on an idle machine, 7-14 s on this shared 2-core one, Ray
2.60; more with its warm workers, :meth:`Engine.ready`), and a caller such as ``sdtune personalize`` has slow work
of its own before its first unit (fusing the concept LoRA, drawing class images). Done one after the other, the
start-up adds to the wall time; done at once, it hides behind the preparation. :class:`EngineStart` starts
:class:`~sdtune.engine.ray_engine.Engine` in a thread at once and :meth:`EngineStart.engine` waits for it.

Two traps decide the shape:

- **The thread lives as long as the engine.** Ray starts its GCS and raylet with ``PR_SET_PDEATHSIG``
  (``ray._private.services``), and Linux sends that signal when the *thread* that forked them ends, not the
  process: a thread that called ``ray.init`` and returned takes Ray down with it (measured: the cluster died, the
  driver lost its GCS a minute later). So the thread starts the engine and then waits, and :meth:`close` shuts the
  engine down before it lets the thread go.
- **Nothing outlives the caller.** :meth:`close` (in the caller's ``finally``: a failed preparation, Ctrl-C,
  SIGTERM) waits for a start in progress (``ray.init`` cannot be interrupted), then shuts Ray down: no process is
  left, whatever happened while it started.

``ray.init`` off the main thread also leaves the caller's SIGTERM handler alone (on the main thread it installs
its own: see :class:`Engine`).
"""

from __future__ import annotations

import threading
import time

from sdtune.engine.ray_engine import Engine


class EngineStart:
    """An :class:`Engine` being started in a thread; see the module docstring.

    ``requested``/``up`` (``time.time()``): when the start was asked for and when the engine was up (None before).
    """

    def __init__(self, address: str | None = None, num_gpus: float | None = None,
                 num_cpus: float | None = None) -> None:
        self.requested = time.time()
        self.up: float | None = None
        self._engine: Engine | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()  # the start ended (engine up, or an error)
        self._release = threading.Event()  # the engine was shut down: the thread may end
        self._closed = False
        self._thread = threading.Thread(target=self._start, args=(address, num_gpus, num_cpus),
                                        name="sdtune-engine-start", daemon=True)
        self._thread.start()

    def _start(self, address: str | None, num_gpus: float | None, num_cpus: float | None) -> None:
        try:
            self._engine = Engine(address, num_gpus=num_gpus, num_cpus=num_cpus)
            self.up = time.time()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by engine()
            self._error = exc
        finally:
            self._done.set()
        self._release.wait()  # Ray's processes die with this thread (PR_SET_PDEATHSIG): keep it until shutdown

    @property
    def started(self) -> bool:
        """True once the start has ended (the engine is up, or it failed)."""
        return self._done.is_set()

    def engine(self, timeout: float | None = None, poll: float = 0.2) -> Engine:
        """The engine, once up (waits; signal handlers run meanwhile). Raises the start's own error (e.g. a
        cluster that refused), or TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(poll):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the Ray engine did not start in time")
        if self._error is not None:
            raise self._error
        assert self._engine is not None
        return self._engine

    def close(self, grace: float = 0.0) -> None:
        """Shut the engine down (waiting for a start in progress first), then let the thread end. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._done.wait()
            if self._engine is not None:
                self._engine.shutdown(grace=grace)
        finally:
            self._release.set()
            self._thread.join(timeout=30)
