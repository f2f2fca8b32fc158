"""``sdtune eval``: CLIP score over seeds, subject fidelity and forgetting, side by side, with the pictures."""

from __future__ import annotations

from pathlib import Path

import typer

from sdtune.commands import args
from sdtune.commands.generate import SCHEDULER_HELP, parse_size
from sdtune.devices import DEVICE_HELP, DTYPE_HELP
from sdtune.errors import SdtuneError

ORDER = 45


def parse_seeds(seeds: str) -> list[int]:
    """``K`` means seeds 0..K-1; ``3,7,42`` lists them."""
    try:
        if "," in seeds:
            listed = [int(s) for s in seeds.split(",") if s.strip()]
            twice = sorted({s for s in listed if listed.count(s) > 1})
            if twice:  # the same seed twice is the same image twice: a spread of 0 that means nothing
                raise SdtuneError(f"--seeds {seeds!r}: seed {twice[0]} is listed twice; each seed must be another "
                                  "sample (e.g. 0,1,2,3 or a count: --seeds 4)")
            return listed
        k = int(seeds)
    except ValueError:
        raise SdtuneError(f"--seeds {seeds!r}: expected a count K or a list like 0,7,42") from None
    if k < 1:
        raise SdtuneError("--seeds must be at least 1 (4 or more give a useful spread)")
    return list(range(k))


def eval_command(
    models: list[str] = typer.Argument(..., help="base models and/or run folders to compare"),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="evaluation prompts, one per line"),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="an evaluation prompt; repeat for several"),
    seeds: str = typer.Option("4", "--seeds", help="K (seeds 0..K-1) or a list 0,7,42; spread is over seeds"),
    out: Path = typer.Option(Path("eval"), "--out", "-o", help="output folder; its cache/ is reused next time"),
    clip: str | None = typer.Option(None, "--clip", help="CLIP backbone: hub id, local folder, or toy (the "
                                    "built-in toy model's CLIP, the toy runs' default: offline, no download; its "
                                    "scores mean something only on toy-model pictures) "
                                    "[default: openai/clip-vit-base-patch16]"),
    reference: Path | None = typer.Option(None, "--reference", help="folder of real photos of the subject"),
    dino: str | None = typer.Option(None, "--dino", help="ViT backbone for DINO fidelity, e.g. facebook/dino-vits16"),
    generic_prompts: Path | None = typer.Option(None, "--generic-prompts", help="prompts NOT about the concept, "
                                                "to measure forgetting against each run's base"),
    base: str | None = typer.Option(None, "--base", help="base model for forgetting when a model is not a run folder"),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="negative prompt for every image"),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="a LoRA run folder stands for each of its "
                                     "checkpoints (which one to keep: `sdtune pick`)"),
    toy: bool | None = typer.Option(
        None, "--toy/--no-toy", show_default=False, metavar="", help="judge the toy suite (forgetting, concept, "
        "person, class, composite) [default: on for toy models when no prompts are given]"),
    steps: int | None = typer.Option(None, "--steps", min=1, help="denoising steps [default: 25; toy: 20]"),
    guidance: float | None = typer.Option(None, "--guidance", min=0.0, help="classifier-free guidance scale "
                                          "[default: 7.5; toy: 4, as the judge was calibrated]"),
    scheduler: str = typer.Option("dpm++", "--scheduler", help=SCHEDULER_HELP),
    size: str | None = typer.Option(None, "--size", help="N or WIDTHxHEIGHT; default: each model's native size"),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=f"auto (fp16 on a GPU, fp32 on a CPU), {DTYPE_HELP}"),
    tensorboard: Path | None = typer.Option(None, "--tensorboard", help="also log the results to this TB folder"),
    wandb_project: str | None = typer.Option(None, "--wandb", help="also log to this wandb project (offline by "
                                             "default; set WANDB_MODE=online to upload)"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="allow .bin/.ckpt weights (trusted files only)"),
) -> None:
    """Compare models on the same prompts and seeds: a table with spread, and the images behind every number.

    For each model x prompt x seed one image is generated (and cached in OUT/cache, so adding a model later
    generates only that model's images) and scored:

    - CLIP-T: 100*max(cos,0) between image and prompt, mean ± std over seeds. Numbers from different CLIP
      backbones do not compare, so the backbone is printed with every score.

    - CLIP-I / DINO (--reference, --dino): similarity to real photos of the subject (DreamBooth paper metrics).

    - Forgetting (--generic-prompts): on prompts not about the concept, the CLIP-T change against the run's
      base model and how similar the images stay to the base's at the same seed.

    - On the toy model (--toy): the judge's verdicts on the toy suite, as fractions of images: old-prompt
      accuracy and forgetting, the concept, the person, the class prompt kept plain, and the composite (the
      person doing the concept).

    - Over a run's checkpoints (--checkpoints): every LoRA checkpoint is a model of the table; `sdtune pick`
      names the one to keep and exports it. A pivotal run's checkpoints from before its LoRA started
      (train.textual_inversion.lora_start) are labelled "(token only)": their LoRA is the identity.

    Offline (no model hub): --clip toy scores with the built-in toy CLIP (no download; meaningful on toy-model
    pictures only), or pass --clip FOLDER with a CLIP saved by save_pretrained.

    Writes OUT/results.json, OUT/results.csv, OUT/results_per_prompt.csv and OUT/report.html (opens offline).

    Examples:

      sdtune eval runs/t2i runs/db --prompts prompts.txt --seeds 4

      sdtune eval runs/db --prompts p.txt --reference photos/ \\
          --dino facebook/dino-vits16 --generic-prompts g.txt

      sdtune eval runs/db --prompts p.txt \\
          --clip ~/models/clip-vit-large-patch14

      sdtune eval toy runs/demo/concept runs/demo/person --seeds 8

      sdtune eval runs/demo/person --checkpoints --seeds 8
    """
    from sdtune.evaluation.pick import mark_token_only
    from sdtune.evaluation.report import summary_rows, write_reports
    from sdtune.evaluation.runner import EvalRequest, run_eval
    from sdtune.evaluation.toy_suite import resolve_toy
    from sdtune.inference.generate import GenerationSettings, read_prompts

    device, dtype = args.device(device), args.dtype(dtype)
    for path, option in ((prompts_file, "--prompts"), (generic_prompts, "--generic-prompts")):
        args.existing_file(path, option)
    args.existing_folder(reference, "--reference")
    args.output_folder(out, "--out")
    args.output_folder(tensorboard, "--tensorboard")
    width, height = parse_size(size)
    toy, steps, guidance = resolve_toy(models, toy, bool(prompts_file or prompt), steps, guidance)
    request = EvalRequest(
        models=list(models), prompts=read_prompts(prompts_file, prompt), seeds=parse_seeds(seeds), out_dir=out,
        settings=GenerationSettings(steps=steps, guidance=guidance, scheduler=scheduler, width=width,
                                    height=height, negative_prompt=negative_prompt),
        clip=clip, dino=dino, reference_dir=reference,
        generic_prompts=read_prompts(generic_prompts) if generic_prompts else [], base=base,
        device=device, dtype=dtype, batch_size=batch_size, allow_pickle=allow_pickle, toy=toy,
        checkpoints=checkpoints,
    )
    if generic_prompts and not request.generic_prompts:
        raise SdtuneError(f"{generic_prompts}: no prompts in the file")
    with args.allow_pickle_option():
        results = run_eval(request)
    notes = mark_token_only(results)  # pivotal checkpoints before their LoRA started: labelled, and said
    paths = write_reports(results, out, lead=notes)
    used = {k: v for k, v in results["backbones"].items() if v}
    typer.echo("backbones: " + "; ".join(f"{k.upper()} = {v}" for k, v in used.items()))
    _print_table(*summary_rows(results, short=True))
    for note in notes:
        typer.echo(note)
    gen = results["generation"]
    typer.echo(f"images: {gen['generated']} generated, {gen['reused']} reused from {out / 'cache'}")
    typer.echo(f"report: {paths['html']}  (also {paths['json'].name}, {paths['csv'].name})")
    if tensorboard is not None:
        from sdtune.evaluation.tracking import log_tensorboard

        log_tensorboard(results, tensorboard)
    if wandb_project:
        from sdtune.evaluation.tracking import log_wandb

        log_wandb(results, wandb_project, out)


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned text when piped."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="mean ± std over seeds")
    for i, h in enumerate(header):  # Text, not markup: "[backbone, scale]" and paths must print as they are
        table.add_column(Text(h.replace(" [", "\n[")), justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    Console(width=max(Console().width, 100)).print(table)  # folded, never cut: every name is shown whole


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
