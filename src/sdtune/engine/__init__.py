"""Many runs on one engine: units of work (an sdtune command line in a child process) scheduled on Ray.

``from sdtune.engine import Engine`` is cheap: Ray is imported when an :class:`Engine` is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdtune.engine.unit import EXIT_BAD_INPUT, EXIT_LOST, EXIT_OK, EXIT_STOPPED, Unit, UnitResult

if TYPE_CHECKING:
    from sdtune.engine.ray_engine import Engine, UnitStatus


def __getattr__(name: str) -> Any:
    if name in ("Engine", "UnitStatus"):
        from sdtune.engine import ray_engine

        return getattr(ray_engine, name)
    raise AttributeError(name)


__all__ = ["EXIT_BAD_INPUT", "EXIT_LOST", "EXIT_OK", "EXIT_STOPPED", "Engine", "Unit", "UnitResult", "UnitStatus"]
