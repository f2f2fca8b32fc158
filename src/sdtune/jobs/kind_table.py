"""The one list of job kinds: each kind's sdtune sub-command and what its first argument is. The store's KINDS,
the refusal of an unknown kind and `sdtune jobs submit --help` are made from it. A module of its own, importing
nothing of the queue, so the store (below every other queue module) can read it."""

from __future__ import annotations

KIND_TABLE: dict[str, tuple[list[str], str]] = {
    "train": (["train"], "a run config"),
    "run": (["run"], "a recipe"),
    "personalize": (["personalize"], "a subjects CSV"),
    "caption": (["dataset", "build"], "dataset build: a source folder"),
    "eval": (["eval"], "run folders or models"),
    "pick": (["pick"], "a run folder"),
    "export": (["export"], "a run folder"),
}
COMMANDS: dict[str, list[str]] = {kind: command for kind, (command, _) in KIND_TABLE.items()}
KINDS_HELP = ", ".join(f"{kind} ({what})" for kind, (_, what) in KIND_TABLE.items())
