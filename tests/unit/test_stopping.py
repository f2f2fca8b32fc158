"""Ctrl-C / SIGTERM inside sdtune.stopping: real signals sent to this process, handled by the real handler."""

from __future__ import annotations

import os
import signal
import time

import pytest
import typer

from sdtune.cli import _keyboard_interrupt_behind
from sdtune.errors import QuitWithoutSaving
from sdtune.stopping import STOP, stop_scope


def _send(sig: signal.Signals) -> None:
    """Signal this process and let Python run the handler (it runs between bytecodes of the main thread)."""
    os.kill(os.getpid(), sig)
    for _ in range(100):
        time.sleep(0.001)


def test_first_signal_only_asks_and_says_so_at_once_a_second_ctrl_c_quits(capfd) -> None:
    # what was there before (Python's default handler; SIG_IGN when a shell started the tests in the background)
    previous = signal.getsignal(signal.SIGINT)
    with stop_scope() as stop:
        stop.phase("finishing this step and saving a checkpoint", lambda: "quit without saving at step 7: nothing "
                   "was saved after checkpoint step-000005")
        _send(signal.SIGINT)
        assert stop.requested and stop.signal == "SIGINT"
        assert ("stopping: finishing this step and saving a checkpoint (Ctrl-C again to quit without saving)"
                in capfd.readouterr().err)
        with pytest.raises(QuitWithoutSaving, match="nothing was saved after checkpoint step-000005"):
            _send(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous and not STOP.requested


def test_sigterm_twice_never_quits_without_saving(capfd) -> None:
    """torchrun and schedulers deliver SIGTERM twice; a preemption must still end with a checkpoint."""
    previous = signal.getsignal(signal.SIGTERM)
    with stop_scope() as stop:
        _send(signal.SIGTERM)
        _send(signal.SIGTERM)
        assert stop.signal == "SIGTERM"
    err = capfd.readouterr().err
    assert "stopping (SIGTERM): stopping at the next safe point" in err and "already stopping" in err
    assert signal.getsignal(signal.SIGTERM) is previous


def test_an_inherited_ignored_sigint_still_stops_inside_and_is_restored_after() -> None:
    """A background job of a shell without job control starts with SIGINT ignored: Ctrl-C was lost before the
    training loop took it over, and the run trained to its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_scope() as outer:
            with stop_scope(), outer.during("making class images", "quit: 3 of 8 made"):
                _send(signal.SIGINT)
                assert outer.notice == "making class images"
            assert outer.requested, "nested scopes share one request"
            assert outer.notice != "making class images"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_the_interrupt_behind_typers_silent_exit_130_is_found() -> None:
    """typer turns KeyboardInterrupt into a bare exit 130; the CLI finds it to print its message."""
    app = typer.Typer()

    @app.command()
    def quits() -> None:
        raise QuitWithoutSaving("quit without saving at step 3: no checkpoint of this run was saved")

    with pytest.raises(SystemExit) as exited:
        app([], prog_name="x")
    assert exited.value.code == 130
    found = _keyboard_interrupt_behind(exited.value)
    assert isinstance(found, QuitWithoutSaving) and "step 3" in str(found)
    assert _keyboard_interrupt_behind(SystemExit(2)) is None
