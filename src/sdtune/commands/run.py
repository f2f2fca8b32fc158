"""``sdtune run RECIPE.yaml``: several training stages as one run (e.g. a concept, then a person on it)."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 20


def run_command(
    recipe: Path = typer.Argument(..., help="recipe YAML: named stages, each a run config "
                                  "(see configs/two-stage.yaml)"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides; STAGE.key=value goes to one stage, e.g. "
                                          "person.data.instance_dir=me/ concept.train.max_steps=800 output_dir=runs/x"),
) -> None:
    """Run a recipe's stages in order, each in OUTPUT/<stage>/, with OUTPUT/manifest.json recording them.

    Run the same command again to continue: finished stages are skipped and an interrupted one resumes from its
    latest checkpoint. A full fine-tune stage also gets a LoRA extracted from it; a LoRA stage trained on an
    earlier stage gets OUTPUT/<stage>/stack/ (base + concept LoRA + its LoRA, weights in adapters.json).
    """
    from sdtune.commands.args import existing_file
    from sdtune.recipes import load_recipe, run_recipe

    existing_file(recipe, "recipe", " (a recipe YAML, e.g. configs/two-stage.yaml)")
    loaded = load_recipe(recipe, overrides or [])
    result = run_recipe(loaded, recipe_path=recipe.resolve(), echo=typer.echo)
    typer.echo("")
    for stage in result.stages:
        loss = f"{stage.final_loss:.4f}" if stage.final_loss is not None else "-"
        typer.echo(f"  {stage.name:16s} {stage.status:12s} steps {stage.step if stage.step is not None else '-':>6} "
                   f" loss {loss:>8}  {stage.run_dir}")
        for name, path in stage.outputs.items():
            typer.echo(f"      {name}: {path}")
    typer.echo(f"manifest: {result.manifest}")
    if result.status != "finished":
        typer.echo("interrupted: run the same command again to resume", err=True)
        raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
