"""The ``sdtune`` command line: thin wrappers that parse arguments, load a config and call the library.

Sub-commands live in ``sdtune.commands.*``; each module exposes ``register(app)`` and is discovered here, so
adding a command never means editing this file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sys
import warnings

import typer

from sdtune.errors import Interrupted, SdtuneError
from sdtune.helptext import prepare_help

app = typer.Typer(
    name="sdtune",
    help=(
        "Teach Stable Diffusion new concepts and new people, and prove it did.\n\n"
        "Typical flow: `sdtune dataset build` -> `sdtune train CONFIG.yaml` -> `sdtune generate RUN` -> "
        "`sdtune eval`. Every command has --help."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_commands() -> None:
    import sdtune.commands as commands

    modules = [importlib.import_module(f"sdtune.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    for module in sorted(modules, key=lambda m: getattr(m, "ORDER", 100)):
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
    prepare_help(app)  # docstrings re-wrap at the terminal's width (sdtune.helptext)


# Libraries whose deprecation notices are about how sdtune calls them (e.g. diffusers' "`torch_dtype` is
# deprecated ... use `dtype`"): nothing a user can act on, printed on every run.
QUIETED = ("diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "torch", "tokenizers", "safetensors",
           "datasets", "torchmetrics")


def quiet_libraries() -> None:
    """Keep library chatter (torchvision hints, deprecation notices) out of the user's terminal.

    Environment variables, read when the libraries are imported, so that `--help` imports none of them; and
    warning filters for FutureWarning/DeprecationWarning raised from inside those libraries (``QUIETED``).
    sdtune's own warnings are untouched, and so is everything when the user chose filters (``-W`` or
    PYTHONWARNINGS: set ``PYTHONWARNINGS=default`` to see the libraries' notices).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    if sys.warnoptions:
        return
    libraries = "|".join(re.escape(name) for name in QUIETED)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"({libraries})(\.|$)")
    # deprecation notices some libraries raise as UserWarning (huggingface_hub's `local_dir_use_symlinks`, from
    # diffusers' own calls): about their code, nothing the user can change
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*\bdeprecated\b", module=rf"({libraries})(\.|$)")


_register_commands()


def main(args: list[str] | None = None) -> None:
    """Console entry point: user errors become one clear line and exit status 2; a stopped run exits 130.

    ``args``: the command line without the program name (default: ``sys.argv[1:]``), e.g. for tests.
    """
    calm_progress_bars_in_logs()
    quiet_libraries()
    try:
        app(args=args, prog_name="sdtune")
    except SdtuneError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except Interrupted as exc:
        typer.secho(f"interrupted: {exc}", err=True)
        sys.exit(130)
    except OSError as exc:  # a permission failure the commands' checks (sdtune.writable) could not foresee
        from sdtune.writable import denied_line

        if (line := denied_line(exc)) is None:
            raise
        typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except SystemExit as exc:
        interrupt = _keyboard_interrupt_behind(exc)
        if interrupt is None:
            raise
        _interrupted(interrupt)


LOG_BAR_SECONDS = "30"


def calm_progress_bars_in_logs() -> None:
    """Progress bars redraw up to ten times a second; into a log file (nohup, Slurm, a CI job) each redraw is kept,
    and a run's log becomes one line of thousands of carriage returns. When stderr is not a terminal, bars redraw
    at most every 30 s (tqdm reads ``TQDM_MININTERVAL`` when it is first imported; a value you set wins); their
    first and last state are always written."""
    if not sys.stderr.isatty() and "tqdm" not in sys.modules:
        os.environ.setdefault("TQDM_MININTERVAL", LOG_BAR_SECONDS)


def _keyboard_interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """typer turns a KeyboardInterrupt into a silent ``sys.exit(130)``; find the interrupt behind that exit."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _interrupted(exc: KeyboardInterrupt) -> None:
    """Exit 130 with one line (a second Ctrl-C's message says what was not saved)."""
    typer.secho(str(exc) if str(exc) else "interrupted (Ctrl-C)", err=True)
    sys.exit(130)


if __name__ == "__main__":
    main()
