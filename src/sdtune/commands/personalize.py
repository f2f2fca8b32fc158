"""``sdtune personalize SUBJECTS.csv --concept RUN``: a new token and a LoRA per person on one concept model, people
as Ray tasks."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 25


def personalize_command(
    subjects: Path = typer.Argument(..., help="CSV with a header: name,photos,token,class (photos: a folder, "
                                    "relative to the CSV; token: new to the tokenizer, e.g. <alice>)"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides for every subject, e.g. "
                                          "train.max_steps=600 train.lora.rank=16"),
    concept: Path = typer.Option(..., "--concept", help="the concept run folder (e.g. runs/two-stage/concept)"),
    out: Path = typer.Option(Path("runs/people"), "--out", "-o", help="subjects go to OUT/<name>/"),
    config: Path = typer.Option(None, "--config", help="run config YAML every subject starts from, or a recipe "
                                "(its --stage is used) [default: pivotal tuning, as configs/two-stage.yaml's "
                                "person stage]"),
    stage: str = typer.Option("person", "--stage", help="which stage of a recipe --config to use"),
    instance_prompt: str = typer.Option(None, "--instance-prompt",
                                        help="default: 'a photo of {token} {class}' ({name} also works)"),
    class_prompt: str = typer.Option(None, "--class-prompt", help="default: 'a photo of a {class}'"),
    concept_prior: int = typer.Option(None, "--concept-prior", min=0, help="also keep the concept: this many "
                                      "class images of the concept run's own prompts, drawn by the concept model, "
                                      "in every subject's prior (default: the recipe stage's concept_prior; 0: off)"),
    address: str = typer.Option(None, "--address", help="a Ray cluster (HOST:PORT, ray://HOST:10001, auto) "
                                "[default: RAY_ADDRESS, else a local Ray on this machine]"),
    gpus_per_person: float = typer.Option(None, "--gpus-per-person", min=0, help="GPUs each person trains on; 0.5 "
                                          "puts two people on one GPU [default: 1 where there are GPUs, else 0]"),
    cpus_per_person: float = typer.Option(1.0, "--cpus-per-person", min=0, help="CPU cores each person takes "
                                          "(without GPUs: how many people train at once = cores / this)"),
    retries: int = typer.Option(2, "--retries", min=0, help="a person whose training process or Ray worker dies "
                                "(out of memory, killed, a lost node) is tried again this many times, resuming from "
                                "its latest checkpoint; bad photos or config are never retried"),
    num_gpus: float = typer.Option(None, "--num-gpus", min=0, help="local Ray only: GPUs to schedule on "
                                   "[default: all of this machine's]"),
    num_cpus: float = typer.Option(None, "--num-cpus", min=1, help="local Ray only: CPU cores to schedule on "
                                   "[default: all of this machine's]"),
    prompts: Path = typer.Option(None, "--prompts", help="judge each finished person with `sdtune pick` on these "
                                 "composite prompts, one per line ({token}, {class}, {name} filled in): fidelity, "
                                 "composite and the checkpoint kept join the summary"),
    reference: Path = typer.Option(None, "--reference", help="with --prompts: a folder with one folder of "
                                   "reference photos per person (REF/<name>/) [default: each person's own photos]"),
    eval_seeds: int = typer.Option(4, "--eval-seeds", min=1, help="with --prompts: seeds per prompt"),
    eval_steps: int = typer.Option(None, "--eval-steps", min=1, help="with --prompts: denoising steps "
                                   "[default: sdtune pick's]"),
    clip: str = typer.Option(None, "--clip", help="with --prompts: CLIP backbone [default: sdtune pick's]"),
    strict: bool = typer.Option(False, "--strict", help="exit with status 3 when a subject failed (default: 0, "
                                "failures are in the summary)"),
) -> None:
    """Personalize the concept model on each subject, in OUT/<name>/: by default pivotal tuning, the subject's
    token (new to the tokenizer: <alice>, not a word it has) learned alone first, then a LoRA around it. The
    override train.textual_inversion=null trains a DreamBooth LoRA on an existing rare word instead (sks); --config
    starts every subject from another run config or recipe stage.

    Each person is a Ray task that starts as soon as a slot frees up: on this machine (an embedded Ray with all
    its GPUs, or its CPUs when it has none), or on a cluster with --address or RAY_ADDRESS (docs/scale.md):

        sdtune personalize people.csv --concept runs/two-stage/concept

        sdtune personalize people.csv --concept runs/concept \\
            --gpus-per-person 0.5

        RAY_ADDRESS=10.0.0.5:6379 sdtune personalize people.csv \\
            --concept /shared/concept --out /shared/people

    Before any training, one line each: duplicate names, missing photo folders, tokens the concept's tokenizer
    already has (or, for a DreamBooth LoRA, splits), people without usable photos (these are skipped; the others
    train), an unreachable --address. A live table shows each person's state, step, loss, where it runs and ETA
    (a line per change in OUT/personalize.log).
    A person whose process or worker dies resumes from its latest checkpoint (--retries). OUT/summary.csv and
    OUT/summary.md list status, steps, final loss, seconds, attempts, node and device per person; with --prompts
    also each person's fidelity, composite and the checkpoint `sdtune pick` kept (RUN/picked/).

    Rerun the same command to continue: finished subjects are skipped, interrupted ones resume. Ctrl-C or
    SIGTERM stops everyone at a checkpoint. Exit status: 0 done (failed subjects are in the summary), 3 with
    --strict when a subject failed, 130 stopped (rerun to resume).
    """
    from sdtune.commands.args import existing_file, existing_folder, output_folder
    from sdtune.recipes.people_on_engine import Judge, Scale
    from sdtune.recipes.personalize import personalize
    from sdtune.stopping import stop_scope

    existing_file(subjects, "subjects CSV")
    existing_folder(concept, "--concept run folder")
    existing_file(config, "--config", " (a run config or recipe YAML)")
    output_folder(out, "--out")
    existing_file(prompts, "--prompts")
    existing_folder(reference, "--reference")
    scale = Scale(address, gpus_per_person, cpus_per_person, retries, num_gpus, num_cpus)
    judge = None
    if prompts is not None:
        extra = (*(("--clip", clip) if clip else ()), *(("--steps", str(eval_steps)) if eval_steps else ()))
        judge = Judge(prompts.resolve(), reference.resolve() if reference else None, eval_seeds, extra)
    with stop_scope():
        result = personalize(subjects, concept, out, template=config, stage=stage, overrides=overrides or [],
                             instance_prompt=instance_prompt, class_prompt=class_prompt, concept_prior=concept_prior,
                             scale=scale, judge=judge, echo=typer.echo)
    failed = [o.subject for o in result.summary if o.status != "finished"]
    if failed:
        typer.echo(f"not finished: {', '.join(failed)} (see {result.out_dir / 'summary.md'})", err=True)
    code = result.exit_code(strict)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("personalize")(personalize_command)
