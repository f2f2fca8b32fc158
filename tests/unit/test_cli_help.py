"""Every ``--help`` re-wraps at the terminal's width: no sentence broken where the source docstring broke it.

Docstrings are hard-wrapped at 120 columns in the source; rendered at 80 they used to break mid-sentence
("...interrupted / ones resume. A subject with / bad photos..."). Checked on the real typer + rich rendering:
at a very wide terminal each prose paragraph and list item of a docstring is ONE line (so it re-wraps at any
width), example lines keep their own lines and fit 70 columns, and at 60/80/120 columns nothing is wider.
"""

from __future__ import annotations

import inspect
import re

import pytest
from typer.testing import CliRunner

from sdtune.cli import app

ITEM = re.compile(r"^\s*(?:[-*]|\d+[.)])\s")


def _commands() -> list[tuple[list[str], str | None]]:
    """(argv, the command's docstring) for the root, every sub-app and every command."""
    found: list[tuple[list[str], str | None]] = [([], None)]

    def walk(typer_app, path: list[str]) -> None:
        for command in typer_app.registered_commands:
            name = command.name or command.callback.__name__.replace("_", "-")
            found.append(([*path, name], inspect.getdoc(command.callback)))
        for group in typer_app.registered_groups:
            found.append(([*path, group.name], None))
            walk(group.typer_instance, [*path, group.name])

    walk(app, [])
    return found


def _units(doc: str) -> tuple[list[str], list[str]]:
    """Prose paragraphs and list items (each must render as one line), and example lines (kept as written).

    Prose: a run of unindented lines. Item: a line starting with -, * or 1., plus more-indented lines after it.
    Example: any other indented line. Paragraphs are separated by blank lines; click's \\b lines are ignored.
    """
    flowing, examples = [], []
    for block in doc.split("\n\n"):
        current: list[str] = []
        mode, item_indent = "", 0
        for line in block.splitlines():
            if not line.strip() or line.strip() == "\b":
                continue
            indent = len(line) - len(line.lstrip())
            if ITEM.match(line):
                flowing += [" ".join(current)] if current else []
                current, mode, item_indent = [line.strip()], "item", indent
            elif indent == 0 and mode == "prose" or mode == "item" and indent > item_indent:
                current.append(line.strip())
            elif indent == 0:
                flowing += [" ".join(current)] if current else []
                current, mode = [line.strip()], "prose"
            else:
                flowing += [" ".join(current)] if current else []
                current, mode = [], "example"
                examples.append(line.strip())
        flowing += [" ".join(current)] if current else []
    return flowing, examples


def _help(argv: list[str], columns: int) -> list[str]:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": str(columns), "TERMINAL_WIDTH": ""})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


COMMANDS = _commands()


@pytest.mark.parametrize("argv,doc", COMMANDS, ids=[" ".join(a) or "sdtune" for a, _ in COMMANDS])
def test_help_rewraps_at_the_terminal_width(argv: list[str], doc: str | None) -> None:
    for columns in (60, 80, 120):
        lines = _help(argv, columns)
        assert max(len(line) for line in lines) <= columns, "\n".join(lines)
    if not doc:
        return
    wide = [" ".join(line.split()) for line in _help(argv, 1000)]
    flowing, examples = _units(doc)
    for unit in flowing:
        assert " ".join(unit.split()) in wide, f"not one line at 1000 columns: {unit!r}"
    at_70 = [line.strip() for line in _help(argv, 70)]
    for example in examples:
        assert example in at_70, f"example line broken at 70 columns: {example!r}"


@pytest.mark.parametrize("argv", [a for a, _ in COMMANDS], ids=[" ".join(a) or "sdtune" for a, _ in COMMANDS])
def test_flags_show_no_value_type(argv: list[str]) -> None:
    """A flag takes no value: typer's rich help printed "<bool>" beside every flag, --help included."""
    text = "\n".join(_help(argv, 100))
    assert "bool>" not in text, text


def test_square_brackets_in_help_are_shown() -> None:
    assert "[default: openai/clip-vit-base-patch16]" in " ".join(" ".join(_help(["eval"], 1000)).split())
