"""``sdtune train`` and ``sdtune config-keys``."""

from __future__ import annotations

from pathlib import Path

import typer

from sdtune.errors import SdtuneError
from sdtune.words import counted

ORDER = 10


def train_command(
    config: Path = typer.Argument(..., help="run config YAML (see configs/), or a run folder (its config.yaml) "
                                  "to continue or re-run that run"),
    overrides: list[str] = typer.Argument(None, help="key=value overrides, e.g. train.max_steps=500 "
                                          "data.instance_dir=photos/ output_dir=runs/me"),
    resume: str = typer.Option(None, "--resume", help="'latest' (newest complete checkpoint of output_dir) "
                               "or a checkpoint folder (an older one starts a branch: newer ones are moved aside)"),
    new_data_epoch: bool = typer.Option(False, "--new-data-epoch", help="with --resume, when the data folders "
                                        "changed since the checkpoint (refused without it): train on the data as "
                                        "it is now, starting a new data epoch at the checkpoint's step (recorded)"),
) -> None:
    """Fine-tune Stable Diffusion: text-to-image or DreamBooth, LoRA or full, as the config says.

    Outputs go to output_dir: config.yaml, checkpoints/, lora/ or model/, samples/, logs/, README.md.
    An interrupted run (Ctrl-C, SIGTERM, a crash) continues exactly with --resume latest. Ctrl-C or SIGTERM
    finishes the step, saves a checkpoint and exits with status 130 (during the final outputs: completes the
    final checkpoint; --resume latest then writes the outputs); a second Ctrl-C quits at once without saving
    (also 130; it names the checkpoint to resume from). Overrides given with --resume change the run from the
    checkpoint on (learning rate and schedule, max_steps, checkpoint/validation/logging settings; recorded in
    config.yaml and metrics.json); changes that cannot apply to a checkpoint (model, LoRA shape, data, batch,
    seed) are refused with the key named; so are changed data folders (images added, removed or edited, captions
    changed), unless --new-data-epoch. Resuming from an older checkpoint moves the newer ones aside.
    """
    from sdtune.stopping import stop_scope

    with stop_scope():  # the whole command, imports included (sdtune.stopping)
        from sdtune.commands.args import run_config
        from sdtune.config import load_config
        from sdtune.training.loop import train

        config = run_config(config)
        cfg = load_config(config, overrides or [])
        from sdtune.config_resume import unused_overrides

        foreign_output_dir(config, cfg.output_dir, overrides or [])
        notes = [*unused_overrides(overrides or [], cfg.model_dump(mode="json")),
                 "note: --new-data-epoch has no effect without --resume" if new_data_epoch and not resume else None]
        for note in notes:
            if note and _is_main_process():
                typer.echo(note, err=True)
        try:
            result = train(cfg, resume=resume, new_data_epoch=new_data_epoch)
        finally:
            _end_process_group()
    if result.status != "finished":
        raise typer.Exit(130)  # unfinished: `sdtune train ... && sdtune export ...` must not go on
    if _is_main_process():
        typer.echo(f"done: {counted(result.step, 'step')}, final loss {result.final_loss:.4f}")
        for name, path in result.outputs.items():
            typer.echo(f"  {name}: {path}")
        typer.echo(f"  run folder: {result.run_dir}")


RUN_MARKERS = ("checkpoints", "lora", "model", "metrics.json")


def foreign_output_dir(config: Path, output_dir: Path, overrides: list[str]) -> None:
    """SdtuneError when ``config`` is a run folder's config.yaml that writes to ANOTHER folder.

    A run's config.yaml stores its output_dir as an absolute path, so a copied (or moved) run folder, trained or
    resumed from its own config.yaml, would otherwise continue (and rotate the checkpoints of) the original, or
    start a new run where the folder used to be: the user named one folder and another changed. An output_dir
    override chooses either explicitly.
    """
    folder = config.resolve().parent
    if config.name != "config.yaml" or not any((folder / m).exists() for m in RUN_MARKERS):
        return
    if any(o.split("=", 1)[0].strip() == "output_dir" for o in overrides):
        return  # chosen on the command line
    target = Path(output_dir).expanduser()
    target = target if target.is_absolute() else Path.cwd() / target
    if target.resolve() == folder:
        return
    raise SdtuneError(f"{config} writes to its output_dir {target}, not to {folder} (a copied or moved run?): add "
                      f"output_dir={folder} to continue this folder, or output_dir={target} to write there")


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _end_process_group() -> None:
    """torchrun reports a failure unless every rank leaves the process group cleanly."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def config_keys_command() -> None:
    """List every config key with its type, default and meaning."""
    from sdtune.config import list_keys

    for key, type_name, default in list_keys():
        typer.echo(f"{key:38s} {type_name:36s} {default}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("config-keys")(config_keys_command)
