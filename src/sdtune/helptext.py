"""``--help`` that re-wraps at the terminal's width, from docstrings written at 120 columns.

Typer renders help with rich, which keeps every newline of a docstring: a paragraph hard-wrapped in the source
then breaks mid-sentence at 80 columns ("...interrupted / ones resume. A subject with / bad photos..."). So
before typer sees them, docstrings are reflowed by the rules their authors follow:

- a run of unindented lines is prose: joined into one line, which rich wraps at the terminal's width;
- a line starting with a list marker (``-``, ``*``, ``1.``) starts an item; more-indented lines after it
  continue the item (joined);
- any other indented line is preformatted (an example command) and kept as written;
- blank lines separate paragraphs; click's ``\\b`` marker lines are dropped (rich shows them as empty lines).

Rich reads ``[...]`` as markup (``[default: x]`` vanished); all help text here is plain, so it is escaped.
Without rich, click's own formatter wraps paragraphs and honours ``\\b``: nothing is changed then.

Typer's rich help prints a value type beside every option, ``<bool>`` too, although a flag takes no value
(``--strict <bool>`` reads as if it wanted ``--strict true``). Flags, ``--help`` included, get an empty
metavar, so their type column stays empty.
"""

from __future__ import annotations

import inspect
import re

import typer
import typer.core
import typer.models

_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s")


def reflow(text: str) -> str:
    """Docstring text -> one line per prose paragraph, list item or preformatted line (see the module doc)."""
    blocks = []
    for block in inspect.cleandoc(text).split("\n\n"):
        units: list[str] = []
        kind, item_indent = "", 0
        for line in block.split("\n"):
            stripped = line.strip()
            if not stripped or stripped == "\b":
                continue
            indent = len(line) - len(line.lstrip())
            if _ITEM.match(line):
                units.append(line.rstrip())
                kind, item_indent = "item", indent
            elif indent == 0:
                if kind == "prose":
                    units[-1] += " " + stripped
                else:
                    units.append(stripped)
                    kind = "prose"
            elif kind == "item" and indent > item_indent:
                units[-1] += " " + stripped
            else:
                units.append(line.rstrip())
                kind = "pre"
        if units:
            blocks.append("\n".join(units))
    return "\n\n".join(blocks)


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _params(callback) -> None:  # noqa: ANN001 - any command function
    for param in inspect.signature(callback).parameters.values():
        info = param.default
        if isinstance(info, typer.models.ParameterInfo) and isinstance(info.help, str):
            info.help = _plain(info.help)
        if isinstance(info, typer.models.OptionInfo) and param.annotation in (bool, "bool") and info.metavar is None:
            info.metavar = ""  # a flag takes no value: no "<bool>" beside it


def _plain_help_flag(base: type) -> type:
    """``base`` (a click command or group class) whose ``--help`` shows no ``<bool>`` type."""
    if getattr(base, "_sdtune_plain_help", False):
        return base

    class PlainHelp(base):  # type: ignore[valid-type,misc]
        _sdtune_plain_help = True

        def get_help_option(self, ctx):  # noqa: ANN001, ANN202 - click's signature
            option = super().get_help_option(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""
            return option

    PlainHelp.__name__ = PlainHelp.__qualname__ = base.__name__
    return PlainHelp


def _explicit(*values):  # noqa: ANN002, ANN202 - typer's DefaultPlaceholder or a class
    for value in values:
        if value is not None and not isinstance(value, typer.models.DefaultPlaceholder):
            return value
    return None


def prepare_help(app: typer.Typer) -> None:
    """Reflow and escape the help of ``app``, its commands, their options and its sub-apps (once, at start-up).

    Sets the help that typer renders (``CommandInfo.help``, the group's help); docstrings stay as written.
    """
    if not typer.core.HAS_RICH:
        return
    if isinstance(app.info.help, str):
        app.info.help = _plain(reflow(app.info.help))
    app.info.cls = _plain_help_flag(_explicit(app.info.cls) or typer.core.TyperGroup)
    _prepare(app)


def _prepare(app: typer.Typer) -> None:
    for command in app.registered_commands:
        command.cls = _plain_help_flag(_explicit(command.cls) or typer.core.TyperCommand)
        doc = command.help if isinstance(command.help, str) else inspect.getdoc(command.callback)
        if doc:
            command.help = _plain(reflow(doc))
        if command.callback is not None:
            _params(command.callback)
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        group.cls = _plain_help_flag(_explicit(group.cls, sub.info.cls) or typer.core.TyperGroup)
        doc = group.help if isinstance(group.help, str) else sub.info.help
        if isinstance(doc, str):
            group.help = _plain(reflow(doc))
        if sub.registered_callback is not None and sub.registered_callback.callback is not None:
            _params(sub.registered_callback.callback)
        _prepare(sub)
