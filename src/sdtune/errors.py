"""User-facing errors.

Anything a user can fix (a bad config, a missing folder, a corrupt image) is raised as a
:class:`SdtuneError`. The CLI prints its message on one line and exits with status 2 — no traceback,
because a traceback hides the one sentence that says what to do.
"""

from __future__ import annotations


def listing(head: str, items: list[str], tail: str = "") -> str:
    """A message naming several things readably: ``head``, then one indented line per item, then ``tail``.

    One item stays on one line (``head item. tail``). Keeps refusals that list keys or files from becoming one
    330-character line of nested parentheses.
    """
    if len(items) == 1:
        return f"{head} {items[0]}" + (f". {tail}" if tail else "")
    lines = [head, *(f"  {item}" for item in items)]
    return "\n".join([*lines, tail] if tail else lines)


class SdtuneError(Exception):
    """An error whose message tells the user what is wrong and how to fix it."""


class ConfigError(SdtuneError):
    """The run configuration is invalid (unknown key, wrong type, impossible combination)."""


class DataError(SdtuneError):
    """A dataset or an image cannot be used; the message names the file."""


class ModelLoadError(SdtuneError):
    """A base model, LoRA or checkpoint cannot be loaded."""


class DamagedFileError(ModelLoadError):
    """A weights file is cut short or garbled (a copy cut short, a disk that filled); the message names it.

    ``file`` and ``detail`` (what the reader found) let a caller that knows a better fix say it instead
    (``sdtune.models.safetensors_files``).
    """

    def __init__(self, message: str, file: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.detail = detail


class TrainingStopped(SdtuneError):
    """Training stopped on purpose (NaN loss); a last good checkpoint was written."""


class DiskFullError(SdtuneError):
    """A write failed because the disk (or a quota / file-size limit) is full; nothing half-written was left."""


class Interrupted(Exception):  # noqa: N818 - a state, not a failure; not an SdtuneError (exit 130, not 2)
    """A run stopped on request (Ctrl-C, SIGTERM) after saving what it needs to continue: exit status 130.

    The message says what was saved and how to continue. Commands that only learn about an interruption from a
    result (``sdtune train``, ``sdtune run``) exit 130 themselves; library code several layers down raises this.
    """


class QuitWithoutSaving(KeyboardInterrupt):
    """A second Ctrl-C: quit at once without saving (exit 130); the message names the newest saved state.

    A ``KeyboardInterrupt``, so everything that cleans up after one (temporary files, manifests) does so.
    """


_NOTED: set[str] = set()


def note_once(text: str) -> None:
    """Print a note (not an error: the command goes on) on stderr, once per process: resolving a model name can
    happen several times in one command, and the same note repeated hides the rest of the output."""
    import sys

    if text not in _NOTED:
        _NOTED.add(text)
        print(text, file=sys.stderr)
