"""CLI sub-commands. Each module defines ``register(app: typer.Typer)`` and an optional ``ORDER`` for --help."""
