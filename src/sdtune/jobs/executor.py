"""The worker's side of the engine (``sdtune.engine``): a job's command line in, an exit code out."""

from __future__ import annotations

from pathlib import Path

from sdtune.errors import SdtuneError
from sdtune.jobs.store import Job


class EngineExecutor:
    """Runs each job's unit of work on an :class:`sdtune.engine.Engine` (local Ray, or a cluster at ``address``)."""

    def __init__(self, address: str | None = None) -> None:
        try:
            from sdtune.engine import Engine
        except ImportError as exc:
            raise SdtuneError(f"the job engine is not available ({exc}); install sdtune with Ray") from None
        self.engine = Engine(address)

    def start(self, job: Job, log: Path) -> str:
        return self.engine.submit(job.argv, log=log, cwd=job.cwd, name=f"job-{job.id}", run_dir=job.run_dir)

    def exit_code(self, handle: str) -> int | None:
        return self.engine.poll(handle)

    def stop(self, handle: str) -> None:
        self.engine.cancel(handle)

    def close(self) -> None:
        self.engine.shutdown()


def engine_executor(address: str | None = None) -> EngineExecutor:
    return EngineExecutor(address)
