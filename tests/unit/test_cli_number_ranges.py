"""Every number a command takes has a range: `sdtune demo --seeds -3` trained for two minutes and then failed in
evaluation with a traceback, `--seeds 0` silently meant 6, `--threads 0` was torch's traceback (found by a
newcomer). Typer refuses a value outside an option's range in one line, before anything runs."""

from __future__ import annotations

import typing

import typer

from sdtune.cli import app

# numbers any value of which is meaningful
UNBOUNDED = {("jobs submit", "priority")}


def _commands(group, prefix: str = ""):
    if hasattr(group, "commands"):
        for name, command in group.commands.items():
            yield from _commands(command, f"{prefix} {name}".strip())
    else:
        yield prefix, group


def _unbounded_number(param) -> bool:
    """A number option without min or max (typer >= 0.2x keeps them on the parameter; older typer: click ranges)."""
    if "Option" not in type(param).__name__:
        return False
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        kinds = typing.get_args(descriptor.annotation) or (descriptor.annotation,)
        return any(k in (int, float) for k in kinds) and param.min is None and param.max is None
    return type(param.type).__name__ in ("IntParamType", "FloatParamType")


def test_every_number_option_has_a_range() -> None:
    root = typer.main.get_command(app)
    unbounded = [(name, param.name) for name, command in _commands(root) for param in command.params
                 if _unbounded_number(param) and (name, param.name) not in UNBOUNDED]
    assert not unbounded, f"give these a min= (or list them in UNBOUNDED): {unbounded}"
