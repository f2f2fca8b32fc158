"""``sdtune pick RUN``: which checkpoint to keep, by the numbers, exported for use."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from sdtune.commands.evaluate import parse_seeds
from sdtune.words import plural

ORDER = 46


def pick_command(
    run: Path = typer.Argument(..., help="a LoRA or textual-inversion run folder with several checkpoints"),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="prompts of the composite, one per line "
                                             "(e.g. 'a photo of sks person giving a thumbs up')"),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="a composite prompt; repeat for several"),
    reference: Path | None = typer.Option(None, "--reference", help="photos of the subject (person fidelity)"),
    dino: str | None = typer.Option(None, "--dino", help="ViT for DINO fidelity, e.g. facebook/dino-vits16"),
    generic_prompts: Path | None = typer.Option(None, "--generic-prompts", help="prompts NOT about the subject "
                                                "(forgetting against the run's base)"),
    seeds: str = typer.Option("8", "--seeds", help="K (seeds 0..K-1) or a list 0,7,42"),
    max_forgetting: float | None = typer.Option(None, "--max-forgetting", min=0.0, help="checkpoints that forgot "
                                                "more are not kept [default: toy 0.05 old-prompt accuracy; "
                                                "otherwise 1.0 CLIP-T points on --generic-prompts]"),
    out: Path | None = typer.Option(None, "--out", "-o", help="evaluation folder [default: RUN/pick]"),
    export: bool = typer.Option(True, "--export/--no-export", help="write RUN/picked and the kohya file"),
    clip: str | None = typer.Option(None, "--clip", help="CLIP backbone: hub id, local folder, or toy (the "
                                    "built-in toy CLIP: offline, meaningful only on toy-model pictures) "
                                    "[default: as sdtune eval]"),
    toy: bool | None = typer.Option(
        None, "--toy/--no-toy", show_default=False, metavar="", help="judge the toy suite [default: toy runs without "
                                    "prompts]"),
    steps: int | None = typer.Option(None, "--steps", min=1, help="denoising steps [default: 25; toy: 20]"),
    guidance: float | None = typer.Option(None, "--guidance", min=0.0, help="guidance scale [default: 7.5; toy: 4]"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, mps"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on GPU), float32, float16, bfloat16"),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="images per forward pass"),
    by: str = typer.Option("subject", "--by", help="subject: judge generated images (the rule below); val_loss: "
                           "keep the checkpoint with the lowest validation loss measured in training "
                           "(validation.loss; no images are generated)"),
) -> None:
    """Evaluate every checkpoint of a run and keep the best one, with its numbers.

    Each checkpoint is measured as `sdtune eval --checkpoints` does (same prompts and seeds for all, images cached
    in OUT/cache): person fidelity (DINO or CLIP-I against --reference; on toy, the judge's person rate), the
    composite (CLIP-T on --prompts; on toy, the person doing the concept) and forgetting (--generic-prompts
    against the run's base; on toy, old-prompt accuracy lost). Kept: the best mean of fidelity and composite,
    each relative to its best, among checkpoints that forgot at most --max-forgetting; ties go to the earlier
    one.

    Writes OUT/report.html (every checkpoint side by side), RUN/picked/ (the kept checkpoint as a run folder:
    `sdtune generate RUN/picked`, its diffusers LoRA in RUN/picked/lora/, pick.json with the numbers) and
    RUN/export/<run>-step-N.safetensors (kohya, for AUTOMATIC1111 and ComfyUI; for a textual-inversion run, or a
    pivotal one kept before its LoRA started (train.textual_inversion.lora_start: that LoRA is the identity), the
    token's embedding file instead). Checkpoints saved before the LoRA started are labelled "(token only)".

    Examples:

      sdtune pick runs/demo/person

      sdtune pick runs/me --prompts composite.txt --reference data/me \\
          --dino facebook/dino-vits16 --generic-prompts generic.txt
    """
    from sdtune.commands import args
    from sdtune.commands.evaluate import _print_table
    from sdtune.errors import SdtuneError
    from sdtune.evaluation.pick import choose, describe, mark_token_only, token_only_line
    from sdtune.evaluation.report import summary_rows, write_reports
    from sdtune.evaluation.runner import EvalRequest, run_eval
    from sdtune.evaluation.toy_suite import resolve_toy
    from sdtune.inference.generate import GenerationSettings, read_prompts

    if by not in ("subject", "val_loss"):
        raise SdtuneError(f"--by {by}: choose subject or val_loss")
    if by == "val_loss":
        _pick_by_val_loss(args.existing_folder(run.expanduser(), "RUN").resolve(), out, export)
        return
    device, dtype = args.device(device), args.dtype(dtype)
    for path, option in ((prompts_file, "--prompts"), (generic_prompts, "--generic-prompts")):
        args.existing_file(path, option)
    args.existing_folder(reference, "--reference")
    args.output_folder(out, "--out")
    run = args.existing_folder(run.expanduser(), "RUN").resolve()
    if not (run / "config.yaml").is_file():
        stages = sorted(p.parent.name for p in run.glob("*/config.yaml"))
        inside = f"; the run folders in it: {', '.join(str(run / s) for s in stages)}" if stages else ""
        raise SdtuneError(f"{run} is not a run folder (no config.yaml){inside}")
    steps_kept = [p.name for p in (run / "checkpoints").glob("step-*") if p.is_dir()]
    if len(steps_kept) < 2:
        typer.echo(f"note: {run} has {len(steps_kept) or 'no'} {plural(len(steps_kept), 'checkpoint')}: "
                   "nothing to choose between. Keep several while training: checkpoint.every below "
                   "train.max_steps and checkpoint.keep large enough")
    has_prompts = bool(prompts_file or prompt)
    toy, steps, guidance = resolve_toy([str(run)], toy, has_prompts, steps, guidance)
    if not toy and not has_prompts:
        raise SdtuneError("pass the composite prompts to judge the checkpoints by (--prompts FILE or --prompt), "
                          "e.g. 'a photo of sks person giving a thumbs up'")
    out = out or run / "pick"
    from sdtune.writable import check_writable

    check_writable(out, "--out")  # checked before any checkpoint is evaluated
    if export:  # RUN/picked/ and RUN/export/ are written into the run folder
        check_writable(run, "RUN", "pick writes picked/ and export/ into the run folder: fix its permissions, or "
                       "pass --no-export")
    request = EvalRequest(
        models=[str(run)], prompts=read_prompts(prompts_file, prompt) if has_prompts else [],
        seeds=parse_seeds(seeds), out_dir=out, settings=GenerationSettings(steps=steps, guidance=guidance),
        clip=clip, dino=dino, reference_dir=reference,
        generic_prompts=read_prompts(generic_prompts) if generic_prompts else [],
        device=device, dtype=dtype, batch_size=batch_size, toy=toy, checkpoints=True)
    results = run_eval(request)
    notes = mark_token_only(results)  # checkpoints of a pivotal run before its LoRA started: labelled, and said
    _print_table(*summary_rows(results, short=True))
    choice = choose(results, max_forgetting)
    lines = describe(choice, results)
    kept_line = f"kept: step {choice.model['checkpoint']['step']} ({choice.model['label']})"
    paths = write_reports(results, out, title=f"sdtune pick: {run.name}", lead=[kept_line, lines[-1], *notes])
    typer.echo("\n".join([*lines, *notes]))
    if not choice.learned:
        typer.echo(f"warning: {run}: no checkpoint learned the subject (every {' and '.join(choice.subject)} is 0)",
                   err=True)
    typer.echo(f"report: {paths['html']}")
    if not export:
        return
    kept = Path(choice.model["ref"])
    step = choice.model["checkpoint"]["step"]
    token_only = token_only_line(choice.model["checkpoint"])
    record = {"run": str(run), "step": step, "label": choice.model["label"], "rule": lines[-1],
              "token_only": token_only, "checkpoints": choice.rows, "metrics": results["metrics"],
              "report": str(paths["html"])}

    _keep(run, kept, step, record, token_only)


def _keep(run: Path, kept: Path, step: int, record: dict, token_only: str | None = None) -> None:
    """Write RUN/picked (the kept checkpoint as a run folder, with pick.json) and its file for other tools.

    ``token_only``: why the kept checkpoint's LoRA is the identity (a pivotal run before ``lora_start``); its file
    for other tools is then the token's embedding alone, as for textual inversion: a LoRA file would change
    nothing."""
    from sdtune.atomic import atomic_copy, atomic_write_json, removing_new_folders, write_folder
    from sdtune.commands.export import _write_kohya
    from sdtune.commands.export_files import embedding_copy, embedding_use

    def fill(tmp: Path) -> None:
        shutil.copytree(kept, tmp, dirs_exist_ok=True)
        atomic_write_json(tmp / "pick.json", record)

    picked = write_folder(run / "picked", fill)
    export_file = run / "export" / f"{run.name}-step-{step:06d}.safetensors"
    embeddings = sorted((picked / "embeddings").glob("*.safetensors"))
    if embeddings and (token_only or not (picked / "lora").is_dir()):  # the one file every tool loads
        lora = "; its LoRA is the identity" if token_only else ""
        typer.echo(f"kept: step {step} -> {picked} (the token's embedding in {embeddings[0]}{lora})")
        export_file = embedding_copy(export_file, embeddings[0].name)  # the tools name it after its file
        with removing_new_folders(export_file.parent):  # a failed copy leaves no empty export/ behind
            atomic_copy(embeddings[0], export_file)
        alone = ", the token's embedding alone: no LoRA file, it would change nothing" if token_only else ""
        typer.echo(f"wrote {export_file} (step {step}{alone}). {embedding_use(export_file)}")
        return
    typer.echo(f"kept: step {step} -> {picked} (diffusers LoRA in {picked / 'lora'}"
               + (f", the token's embedding in {embeddings[0]})" if embeddings else ")"))
    _write_kohya(picked, export_file, "float32")  # pivotal tuning: the embedding bundled and beside it


def _pick_by_val_loss(run: Path, out: Path | None, export: bool) -> None:
    """Keep the checkpoint with the lowest validation loss (``sdtune.evaluation.pick.choose_by_val_loss``)."""
    from sdtune.evaluation.checkpoints import materialise
    from sdtune.evaluation.pick import TOKEN_ONLY, choose_by_val_loss, token_only_line

    rows, kept = choose_by_val_loss(run)
    for row in rows:
        mark = "  <- kept" if row is kept else ""
        shown = "not measured" if row["val_loss"] is None else f"{row['val_loss']:.6f}"
        typer.echo(f"step {row['step']:>7}: val_loss {shown}{TOKEN_ONLY if token_only_line(row) else ''}{mark}")
    token_only = token_only_line(kept)
    typer.echo(f"kept: step {kept['step']}, the lowest validation loss ({kept['val_loss']:.6f}; ties go to the "
               "earlier checkpoint)" + (f"; the kept {token_only}" if token_only else ""))
    if not export:
        return
    folder = materialise(run, Path(kept["checkpoint"]), (out or run / "pick") / "checkpoints" /
                         f"{run.name}-step-{kept['step']:06d}")
    _keep(run, folder, kept["step"], {"run": str(run), "step": kept["step"], "rule": "lowest validation loss",
                                      "token_only": token_only, "checkpoints": rows}, token_only)


def register(app: typer.Typer) -> None:
    app.command("pick")(pick_command)
