"""``sdtune demo``: the README's main command - the whole flow, offline, on the built-in toy model."""

from __future__ import annotations

from pathlib import Path

import typer

from sdtune.words import counted

ORDER = 5


def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="where datasets, runs and the report go"),
    quick: bool = typer.Option(False, "--quick", help="a few dozen steps and two seeds (a smoke test, ~20 s)"),
    seeds: int = typer.Option(None, min=1, help="evaluation seeds per prompt (default 6, the benchmark's: other "
                              "values make a run that is not one of the benchmark's; --quick 2)"),
    threads: int = typer.Option(1, min=1, help="torch threads for training; 1 because a 32 px model gains little "
                                "from more, and on a shared CPU two threads per process ran up to 6x slower "
                                "(measured). The evaluation runs two models at once, one thread each"),
) -> None:
    """Two-stage fine-tuning on the toy model, measured: the concept (a LoRA), then the person by pivotal tuning
    (a new token's embedding, then a LoRA around it, from photos in four poses, captioned) on the concept model,
    then evaluation of base / stage 1 / the person stage's checkpoints / stage 2 (forgetting, concept, person,
    class drift, and the composite: the person doing the concept) with an HTML report. Offline, CPU, about
    3 minutes. Re-running continues: finished stages are kept."""
    import torch

    from sdtune.commands.args import output_folder
    from sdtune.toy.demo import DemoSettings, run_demo
    from sdtune.toy.report import COLUMNS, format_table

    output_folder(out, "--out")
    torch.set_num_threads(threads)
    settings = DemoSettings.quick() if quick else DemoSettings()
    if seeds is not None:
        settings.seeds = seeds
    result = run_demo(out, settings, echo=typer.echo)
    typer.echo("")
    typer.echo(format_table(result["table"], result["benchmark"]))
    bench = result["benchmark"]
    typer.echo("\nThis is ONE run: other seeds or machines move these numbers." + (
        f" The benchmark rows are mean ± std over {counted(len(bench['seeds']), 'training seed')} of the same "
        "settings (benchmarks/two_stage.py), and its run of this training seed." if bench and bench["matches"] else ""))
    typer.echo("Fractions of images (prompt x seed) the toy judge reads as asked:")
    for _, label, what in COLUMNS:
        typer.echo(f"  {label}: {what}")
    for note in result["notes"]:
        typer.echo(f"  {note}")
    typer.echo("Which person checkpoint to keep, by the numbers: sdtune pick " + result["paths"]["person run"])
    for name, path in result["paths"].items():
        typer.echo(f"  {name}: {path}")
    typer.echo(f"  total: {sum(result['seconds'].values()):.0f} s")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
