"""Problems found in a dataset: one line each, naming the file and the reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """``where`` is a path (or ``file:line`` of a captions file); ``reason`` says what is wrong and what to do."""

    where: str
    reason: str
    level: Level = "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def summarize(lines: list[str], limit: int = 20) -> list[str]:
    """The first ``limit`` lines and a count of the rest: a report of 5,000 small images must stay readable."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... and {len(lines) - limit} more"]
