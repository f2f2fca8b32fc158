"""Problems found in a dataset: one line each, naming the file and the reason; repeated kinds summarized."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Level = Literal["error", "warning"]

# What a kind of problem is called when many of one kind are summarized ("... and 197 more <label>").
KIND_LABELS = {
    "small": "images smaller than the training resolution",
    "unreadable": "unreadable images",
    "missing caption": "images without a caption",
    "long caption": "captions longer than the text encoder reads",
    "duplicate": "exact duplicates",
    "near-duplicate": "near-duplicates",
    "animated": "animated images",
    "file not used": "files not used",
    "caption/row problem": "caption or row problems",
    "unknown caption column": "unknown caption columns",
    "skipped": "skipped files",
    "mask missing": "images without a mask",
    "mask unreadable": "unreadable masks",
    "mask size": "masks of another size than their image",
    "mask empty": "empty masks",
    "mask ambiguous": "images with more than one mask",
}


@dataclass(frozen=True)
class Problem:
    """``where`` is a path (or ``file:line`` of a captions file); ``reason`` says what is wrong and what to do.

    ``kind`` (e.g. ``small``, ``duplicate``) groups problems of one kind, so that 200 under-size class images are
    summarized instead of printed one line each (:func:`summarize_problems`).
    """

    where: str
    reason: str
    level: Level = "error"
    kind: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason, "level": self.level}


def summarize(lines: list[str], limit: int = 20) -> list[str]:
    """The first ``limit`` lines and a count of the rest: a report of 5,000 small images must stay readable."""
    if len(lines) <= limit:
        return lines
    return [*lines[:limit], f"... and {len(lines) - limit} more"]


def summarize_problems(problems: list[Problem], per_kind: int = 3, limit: int = 50) -> list[str]:
    """One line per problem, except that a kind with more than ``per_kind + 1`` problems shows its first
    ``per_kind`` and a count (``... and 197 more images smaller than the training resolution``).

    Problems without a kind are each shown; at most ``limit`` lines in all (then a count of the rest). Order:
    kinds in the order their first problem was found.
    """
    groups: dict[str, list[Problem]] = {}
    for i, problem in enumerate(problems):
        groups.setdefault(problem.kind or f"\0{i}", []).append(problem)
    lines: list[str] = []
    for kind, items in groups.items():
        if len(items) <= per_kind + 1 or kind.startswith("\0"):
            lines += [str(p) for p in items]
        else:
            lines += [str(p) for p in items[:per_kind]]
            lines.append(f"... and {len(items) - per_kind} more {KIND_LABELS.get(kind, f'of this kind ({kind})')}")
    return summarize(lines, limit)
