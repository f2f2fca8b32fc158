"""``sdtune toy ...``: the toy world and the toy Stable Diffusion (pretrain, render datasets, judge, evaluate)."""

from __future__ import annotations

from pathlib import Path

import typer

from sdtune.words import counted

ORDER = 60

toy_app = typer.Typer(help="The built-in toy world of coloured shapes and the small Stable Diffusion trained on it.",
                      no_args_is_help=True)


@toy_app.command("pretrain")
def pretrain_command(
    out: Path = typer.Argument(..., help="output folder: pipeline/, clip/, judge/, pretrain.json (work/ = scratch)"),
    seed: int = typer.Option(0, min=0, help="one seed for data, initialisation and training"),
    vae_steps: int = typer.Option(1500, min=1), clip_steps: int = typer.Option(1500, min=1),
    judge_steps: int = typer.Option(500, min=1),
    unet_steps: int = typer.Option(6000, min=1), unet_batch: int = typer.Option(64, min=1),
    wide_images: int = typer.Option(8000, min=1, help="in-memory renders for the VAE, CLIP and judge"),
    pretrain_images: int = typer.Option(16000, min=1, help="captioned images the UNet is pretrained on"),
    eval_seeds: int = typer.Option(4, min=0, help="judge the finished model on every world prompt with this many seeds "
                                   "(the model card's numbers; 0 skips)"),
    threads: int = typer.Option(1, min=1, help="torch threads per process (1 is fastest on a shared CPU)"),
    parallel: bool = typer.Option(True, help="train CLIP and judge in their own processes next to the VAE"),
) -> None:
    """Pretrain the toy model from nothing: VAE, CLIP and judge on the wide world, then the UNet through the
    training loop. The same seed reproduces it. A rerun keeps finished parts (OUT/clip, OUT/judge, OUT/work/vae)
    and resumes an interrupted UNet stage; delete a part's folder to train it again."""
    from sdtune.commands.args import output_folder
    from sdtune.toy.pretrain import PretrainSettings, pretrain

    output_folder(out, "OUT")

    settings = PretrainSettings(seed=seed, vae_steps=vae_steps, clip_steps=clip_steps, judge_steps=judge_steps,
                                unet_steps=unet_steps, unet_batch=unet_batch, wide_images=wide_images,
                                pretrain_images=pretrain_images, eval_seeds=eval_seeds, threads=threads)
    report = pretrain(out, settings, parallel=parallel)
    typer.echo(f"done in {report['seconds']['total']:.0f} s; {report['size_mb']} MB")
    typer.echo(f"  pipeline: {out / 'pipeline'}\n  clip: {out / 'clip'}\n  judge: {out / 'judge'}")
    typer.echo(f"  report: {out / 'pretrain.json'}")


@toy_app.command("world")
def world_command(
    out: Path = typer.Argument(..., help="folder to write (images + metadata.jsonl + scenes.jsonl)"),
    kind: str = typer.Option("pretrain", help="pretrain | wide | concept | concept-images | person | person-captioned"),
    count: int = typer.Option(100, min=1), seed: int = typer.Option(0, min=0),
) -> None:
    """Render a dataset of the toy world (captioned, or instance-only for DreamBooth)."""
    from sdtune.commands.args import output_folder
    from sdtune.errors import SdtuneError
    from sdtune.toy import world

    output_folder(out, "OUT")
    if kind in ("pretrain", "wide"):
        world.write_folder(out, list(world.scenes(seed, count, kind)))
    elif kind in ("concept", "concept-images"):
        world.write_concept_set(out, count, seed, captioned=kind == "concept")
    elif kind in ("person", "person-captioned"):
        world.write_person_set(out, count, seed, captioned=kind == "person-captioned")
    else:
        raise SdtuneError(f"--kind {kind!r} is not a kind; use pretrain, wide, concept, concept-images, person or "
                          "person-captioned")
    typer.echo(f"wrote {counted(count, 'image')} to {out}")


@toy_app.command("eval")
def eval_command(
    model: str = typer.Argument("toy", help="toy, a model folder or a run folder fine-tuned from toy"),
    seeds: int = typer.Option(4, min=1, help="images per prompt"),
    steps: int = typer.Option(20, min=1, help="sampling steps"),
    grid: Path = typer.Option(None, help="save a grid of the world-prompt images here (PNG)"),
) -> None:
    """Judge what a toy model draws: colour/shape accuracy on every world prompt, the concept, the person, the
    class prompt. Fractions of images (prompt x seed)."""
    from sdtune.commands.args import output_file
    from sdtune.toy.evaluate import (
        Suite,
        default_judge,
        default_suite,
        evaluate,
        load_toy_pipeline,
        old_prompts,
        save_grid,
        summary,
    )

    output_file(grid, "--grid")
    extra = default_suite()
    suite = Suite(old=old_prompts(), concept=extra.concept, person=extra.person, cls=extra.cls)
    result = evaluate(load_toy_pipeline(model), default_judge(), suite, list(range(seeds)), steps=steps)
    for key, value in summary(result).items():
        typer.echo(f"{key:18s} {value:.3f}")
    if grid is not None:
        save_grid(result["old"]["images_pil"], seeds * 4, grid)
        typer.echo(f"grid: {grid}")


def register(app: typer.Typer) -> None:
    app.add_typer(toy_app, name="toy")
