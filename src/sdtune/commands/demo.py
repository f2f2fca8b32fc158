"""``sdtune demo``: the README's main command - the whole flow, offline, on the built-in toy model."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 5


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where datasets, runs and the report go"),
    quick: bool = typer.Option(False, "--quick", help="a few dozen steps and two seeds (a smoke test, ~1 min)"),
    seeds: int = typer.Option(None, help="evaluation seeds per prompt (default 4, --quick 2)"),
    threads: int = typer.Option(1, help="torch threads; 1 because a 32 px model gains little from more, and on a "
                                "shared CPU two threads per process ran up to 6x slower (measured)"),
) -> None:
    """Two-stage fine-tuning on the toy model, measured: the concept (a LoRA), then a person DreamBooth LoRA on the
    concept model, then evaluation of base / stage 1 / stage 2 (judge accuracy, forgetting, CLIP score) with an
    HTML report. Offline, CPU, about 3.5 minutes. Re-running continues: finished stages are kept."""
    import torch

    from sdtune.commands.args import output_folder
    from sdtune.toy.demo import DemoSettings, format_table, run_demo

    output_folder(out, "--out")
    torch.set_num_threads(threads)
    settings = DemoSettings.quick() if quick else DemoSettings()
    if seeds:
        settings.seeds = seeds
    result = run_demo(out, settings, echo=typer.echo)
    typer.echo("")
    typer.echo(format_table(result["table"]))
    typer.echo("\nfractions of images (prompt x seed) the toy judge reads as asked. old acc: colour and shape right "
               "on the pretraining world (forgetting); concept: the new glyph; person: 'a photo of sks blue star' "
               "by judge / pixel check; class solid: 'a photo of a blue star' still plain (drift); CLIP: toy CLIP")
    for name, path in result["paths"].items():
        typer.echo(f"  {name}: {path}")
    typer.echo(f"  total: {sum(result['seconds'].values()):.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
