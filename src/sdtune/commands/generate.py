"""``sdtune generate``: images from a base model, a run folder, or a stack of LoRAs, each PNG carrying its settings."""

from __future__ import annotations

from pathlib import Path

import typer

from sdtune.commands import args
from sdtune.devices import DEVICE_HELP, DTYPE_HELP
from sdtune.errors import SdtuneError
from sdtune.models.presets import PRESETS
from sdtune.words import counted

ORDER = 40

SCHEDULER_HELP = (
    "sampler: dpm++ (DPM-Solver++ 2M, good in 20-30 steps), ddim, euler-a (Euler ancestral); each uses the model's own "
    "noise schedule and prediction type (epsilon or v)"
)


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    """``512`` or ``768x512`` (width x height); None keeps the model's native size."""
    if not size:
        return None, None
    try:
        if "x" in size.lower():
            w, h = size.lower().split("x", 1)
            return int(w), int(h)
        return int(size), int(size)
    except ValueError:
        raise SdtuneError(f"--size {size!r}: expected N or WIDTHxHEIGHT, e.g. 512 or 768x512") from None


def generate_command(
    model: str = typer.Argument(..., help="a run folder, or a base model: hub id, diffusers folder, .safetensors "
                                f"file or built-in ({', '.join(PRESETS)})"),
    prompt: list[str] = typer.Option([], "--prompt", "-p", help="a prompt; repeat for several"),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="file with one prompt per line (# comments)"),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="what to steer away from, e.g. 'blurry'"),
    num_images: int = typer.Option(4, "--num-images", "-n", min=1, help="images per prompt (one seed each)"),
    seed: int = typer.Option(0, "--seed", min=0, help="first seed; image i of each prompt uses seed+i"),
    steps: int = typer.Option(25, "--steps", min=1, help="denoising steps"),
    guidance: float = typer.Option(7.5, "--guidance", min=0.0, help="classifier-free guidance scale (CFG)"),
    scheduler: str = typer.Option("dpm++", "--scheduler", help=SCHEDULER_HELP),
    size: str | None = typer.Option(None, "--size", help="N or WIDTHxHEIGHT (multiples of 8); default: the model's"),
    lora: list[str] = typer.Option([], "--lora", help="extra LoRA on top: RUN, folder or file, optionally :WEIGHT"),
    out: Path = typer.Option(Path("generated"), "--out", "-o", help="output folder (numbering continues)"),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=f"auto (fp16 on a GPU, fp32 on a CPU), {DTYPE_HELP}"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="allow .bin/.ckpt weights (trusted files only)"),
) -> None:
    """Generate images and a grid; every PNG stores its prompt, seed and sampler settings.

    The settings are written the way AUTOMATIC1111 writes them (the PNG "parameters" text), so its PNG Info tab,
    ComfyUI and civitai read them too. Same model + prompt + seed + settings = the same image.

    Examples:

      sdtune generate runs/me -n 4 \\
          -p "a photo of sks person giving a thumbs up"

      sdtune generate stabilityai/stable-diffusion-2-base \\
          --prompts prompts.txt --seed 42 --scheduler euler-a

      sdtune generate runs/style --lora runs/me:0.8 \\
          -p "sks person, watercolor" --size 768x512
    """
    from sdtune.inference.generate import GenerationSettings, read_prompts, run_generate
    from sdtune.inference.pipeline import parse_adapter_spec

    device, dtype = args.device(device), args.dtype(dtype)
    args.existing_file(prompts_file, "--prompts")
    args.output_folder(out, "--out")
    prompts = read_prompts(prompts_file, prompt)
    _note_missing_token(model, prompts)
    width, height = parse_size(size)
    settings = GenerationSettings(steps=steps, guidance=guidance, scheduler=scheduler, width=width, height=height,
                                  negative_prompt=negative_prompt)
    seeds = [seed + i for i in range(num_images)]
    adapters = [parse_adapter_spec(s) for s in lora]
    with args.allow_pickle_option():  # the loaders name the config key; this command's switch is --allow-pickle
        result = run_generate(model, prompts, out, seeds=seeds, settings=settings, adapters=adapters,
                              device=device, dtype=dtype, batch_size=batch_size, allow_pickle=allow_pickle)
    typer.echo(f"{counted(len(result.images), 'image')} in {out}/ (grid: {result.grid})")


def _note_missing_token(model: str, prompts: list[str]) -> None:
    """A run that learned a token (textual inversion, pivotal tuning) draws the person only where a prompt writes
    it: say so when no prompt does (``sks`` for a run that learned ``<sks>`` draws the word, not the person)."""
    from sdtune.run_folder import is_run_folder, read_run

    if not is_run_folder(model):
        return
    token = read_run(model).token
    if token and not any(token in p for p in prompts):
        typer.echo(f"note: {model} learned the token {token!r}, which no prompt contains: write it where the person "
                   f"goes, e.g. 'a photo of {token} person'", err=True)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
