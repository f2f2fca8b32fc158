"""Stopping on request (Ctrl-C, SIGTERM): one handler for a whole command, checked where stopping is safe.

Why not Python's default: Ctrl-C raises ``KeyboardInterrupt`` wherever the main thread happens to be, inside
library code that may swallow it (bare ``except:`` in import fallbacks, ``Exception ignored in`` from
finalizers) or in typer, which turns it into a silent exit 130; SIGTERM kills the process (exit 143, nothing
said). And a background job of a shell without job control starts with SIGINT *ignored* (POSIX; ``sh -c 'set
-m; cmd &'`` on dash, whose ``set -m`` fails without a terminal): Python then installs no Ctrl-C handler at all,
so before the training loop took SIGINT over, Ctrl-C was lost and the run trained to its end with exit 0.

Inside :func:`stop_scope` both signals only set a flag and print one line at once, on process 0: what will
happen now (``notice``). The code that owns a phase checks :attr:`Stop.requested` where stopping is safe
(between training steps, class-image batches, validation prompts and output files) and says what it saved.

A second Ctrl-C quits at once, raising :class:`~sdtune.errors.QuitWithoutSaving` with a message that names
what was not saved (``quit_note``); writes in progress clean up their temporary files. A second SIGTERM does
not: launchers deliver SIGTERM twice (torchrun forwards the signal to workers the terminal or scheduler
signalled already), and a preemption must never turn into a lost run; SIGKILL is the way to quit now.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sdtune.errors import Interrupted, QuitWithoutSaving

SIGNALS = (signal.SIGINT, signal.SIGTERM)
QUIT_HINT = "Ctrl-C again to quit without saving"
QUIT_NOW = "Ctrl-C again to quit now"


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def say(text: str) -> None:
    """One line on stderr, from process 0 only, safe inside a signal handler (no buffered ``print``)."""
    if _is_main_rank():
        try:
            os.write(2, f"\n{text}\n".encode())
        except OSError:
            pass


class NotStarted(Interrupted):  # noqa: N818 - a state, like Interrupted
    """A run stopped before its first training step (nothing to save); ``step`` is where it would have started."""

    def __init__(self, message: str, step: int = 0):
        super().__init__(message)
        self.step = step


class Stop:
    """The process's stop request: which signal asked (``signal``), what to say and what a quit loses."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.notice = "stopping at the next safe point"
        self.hint = QUIT_NOW
        self.quit_note: Callable[[], str] = lambda: "quit: nothing was saved"
        self._depth = 0
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def phase(self, notice: str, quit_note: str | Callable[[], str], hint: str = QUIT_HINT) -> None:
        """From now on: what the first signal announces (``notice``, then ``hint`` for Ctrl-C), and what a second
        Ctrl-C's message says (``quit_note``: a text, or a function called at that moment)."""
        self.notice, self.hint = notice, hint
        self.quit_note = quit_note if callable(quit_note) else (lambda: quit_note)

    @contextmanager
    def during(self, notice: str, quit_note: str | Callable[[], str], hint: str = QUIT_HINT) -> Iterator[Stop]:
        """:meth:`phase` for a block; the phase before it comes back afterwards."""
        previous = self.notice, self.quit_note, self.hint
        self.phase(notice, quit_note, hint)
        try:
            yield self
        finally:
            self.notice, self.quit_note, self.hint = previous

    def _handle(self, signum: int, frame) -> None:  # noqa: ARG002
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = name
            say(f"stopping: {self.notice} ({self.hint})" if signum == signal.SIGINT
                else f"stopping ({name}): {self.notice}")
        elif signum == signal.SIGINT:
            raise QuitWithoutSaving(self.quit_note())
        else:
            say(f"already stopping; another {name} changes nothing (Ctrl-C or SIGKILL quits without saving)")

    def _install(self) -> None:
        self.signal = None
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)  # also over an inherited SIG_IGN
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.signal = None
        self.phase("stopping at the next safe point", "quit: nothing was saved", QUIT_NOW)


STOP = Stop()


@contextmanager
def stop_scope() -> Iterator[Stop]:
    """Inside: SIGINT/SIGTERM set :data:`STOP`'s flag instead of raising or killing. Nested scopes share it.

    The outermost scope installs the handler and, on leaving, restores the previous ones and forgets the request.
    """
    if STOP._depth == 0:
        STOP._install()
    STOP._depth += 1
    try:
        yield STOP
    finally:
        STOP._depth -= 1
        if STOP._depth == 0:
            STOP._restore()


__all__ = ["NotStarted", "STOP", "Stop", "say", "stop_scope"]
