"""``sdtune personalize SUBJECTS.csv --concept RUN``: one LoRA per person on one concept model."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 25


def personalize_command(
    subjects: Path = typer.Argument(..., help="CSV with a header: name,photos,token,class (photos: a folder, "
                                    "relative to the CSV)"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides for every subject, e.g. "
                                          "train.max_steps=600 train.lora.rank=16"),
    concept: Path = typer.Option(..., "--concept", help="the concept run folder (e.g. runs/two-stage/concept)"),
    out: Path = typer.Option(Path("runs/people"), "--out", "-o", help="subjects go to OUT/<name>/"),
    config: Path = typer.Option(None, "--config", help="run config YAML every subject starts from, or a recipe "
                                "(its --stage is used)"),
    stage: str = typer.Option("person", "--stage", help="which stage of a recipe --config to use"),
    instance_prompt: str = typer.Option(None, "--instance-prompt",
                                        help="default: 'a photo of {token} {class}' ({name} also works)"),
    class_prompt: str = typer.Option(None, "--class-prompt", help="default: 'a photo of a {class}'"),
    concept_prior: int = typer.Option(None, "--concept-prior", min=0, help="also keep the concept: this many "
                                      "class images of the concept run's own prompts, drawn by the concept model, "
                                      "in every subject's prior (default: the recipe stage's concept_prior; 0: off)"),
    strict: bool = typer.Option(False, "--strict", help="exit with status 3 when a subject failed (default: 0, "
                                "failures are in the summary)"),
) -> None:
    """Personalize the concept model on each subject: a DreamBooth LoRA each, in OUT/<name>/.

    Spread over GPUs (or CPU processes) with a launcher; each process trains its share of the subjects:

        torchrun --nproc_per_node 4 -m sdtune personalize people.csv \\
            --concept runs/two-stage/concept

    Process 0 writes OUT/summary.csv and OUT/summary.md (subject, status, steps, final loss, time, output).
    Rerun the same command to continue: finished subjects are skipped, interrupted ones resume. A subject with
    bad photos is reported in the summary; the others still train. Exit status: 0 done (failed subjects are in
    the summary), 3 with --strict when a subject failed, 130 stopped (rerun to resume).
    """
    from sdtune.commands.args import existing_file, existing_folder, output_folder
    from sdtune.recipes.personalize import personalize

    existing_file(subjects, "subjects CSV")
    existing_folder(concept, "--concept run folder")
    existing_file(config, "--config", " (a run config or recipe YAML)")
    output_folder(out, "--out")
    result = personalize(subjects, concept, out, template=config, stage=stage, overrides=overrides or [],
                         instance_prompt=instance_prompt, class_prompt=class_prompt, concept_prior=concept_prior,
                         echo=typer.echo)
    failed = [o.subject for o in result.summary if o.status != "finished"]
    if failed and result.rank == 0:
        typer.echo(f"not finished: {', '.join(failed)} (see {result.out_dir / 'summary.md'})", err=True)
    code = result.exit_code(strict)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("personalize")(personalize_command)
