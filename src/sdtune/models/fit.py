"""Does a LoRA fit a base model? One line when it does not, before diffusers/peft print kilobytes about it.

Loading a LoRA trained on another base makes peft warn about every target module and diffusers log a
size-mismatch line per layer (~23 KB for the toy model). The shapes are compared here first; when the LoRA comes
from a run folder, its config.yaml says which base it was trained on, and that is the message:
``r2 was trained on tiny, not toy``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from sdtune.errors import DamagedFileError, ModelLoadError, SdtuneError
from sdtune.run_folder import is_run_folder
from sdtune.words import counted, plural


def run_of(lora_file: Path) -> Path | None:
    """The run folder a LoRA file belongs to (``RUN/lora/<file>`` or ``RUN/<file>``), None for a loose file."""
    lora_file = Path(lora_file).resolve()
    for folder in (lora_file.parent.parent, lora_file.parent) if lora_file.parent.name == "lora" else \
            (lora_file.parent,):
        if is_run_folder(folder):
            return folder
    return None


def trained_base(lora_file: Path) -> str | None:
    """The base model its run's config.yaml names, None when the file is not in a run folder."""
    run = run_of(lora_file)
    if run is None:
        return None
    from sdtune.run_folder import read_run

    try:
        return read_run(run).base
    except SdtuneError:
        return None


def _same_model(a: str, b: str) -> bool:
    from sdtune.models.presets import is_preset, preset_path

    def key(ref: str) -> str:
        if is_preset(ref):
            return str(preset_path(ref).resolve())
        path = Path(ref).expanduser()
        return str(path.resolve()) if path.exists() else ref

    return key(a) == key(b)


def _shape_problems(lora_file: Path, components: dict[str, torch.nn.Module | None]) -> tuple[list[str], int]:
    """(``module: LoRA in x out, model in x out`` for each layer that does not fit, number of layers)."""
    from sdtune.models.kohya import read_diffusers_lora

    layers = read_diffusers_lora(lora_file)
    problems = []
    modules = {name: dict(module.named_modules()) for name, module in components.items() if module is not None}
    for layer in layers:
        named = modules.get(layer.component)
        if named is None:
            continue
        target = next((named[n] for n in (layer.module, layer.module.removeprefix("text_model."),
                                          f"text_model.{layer.module}") if n in named), None)
        weight = getattr(getattr(target, "base_layer", target), "weight", None)
        if weight is None:
            problems.append(f"{layer.component}.{layer.module}: no such layer in the model")
            continue
        want_in, want_out = int(weight.shape[1]), int(weight.shape[0])
        have_in, have_out = int(layer.down.shape[1]), int(layer.up.shape[0])
        if (have_in, have_out) != (want_in, want_out):
            problems.append(f"{layer.component}.{layer.module}: LoRA {have_in}->{have_out}, model "
                            f"{want_in}->{want_out}")
    return problems, len(layers)


def _text_components(pipe) -> dict[str, torch.nn.Module | None]:
    """The text encoders by their LoRA file names: a pipeline's, or a training model's (SDXL's two held as one)."""
    from sdtune.models.family import DualTextEncoder

    text = getattr(pipe, "text_encoder", None)
    if isinstance(text, DualTextEncoder):
        return {"text_encoder": text.text_encoder, "text_encoder_2": text.text_encoder_2}
    return {"text_encoder": text, "text_encoder_2": getattr(pipe, "text_encoder_2", None)}


def check_lora_fits(lora_file: Path, pipe, base: str, *, name: str | None = None) -> None:
    """Raise one :class:`ModelLoadError` line when ``lora_file`` does not fit ``pipe`` (loaded from ``base``).

    ``name``: how to call the LoRA in the message (default: its run folder, else the file). A file that is not a
    diffusers-format LoRA (kohya) is left to the loader; a damaged one is said here (DamagedFileError).
    """
    try:
        problems, count = _shape_problems(Path(lora_file), {"unet": pipe.unet, **_text_components(pipe)})
    except DamagedFileError:
        raise
    except SdtuneError:
        return
    if not problems:
        return
    run = run_of(lora_file)
    who = name or (str(run) if run is not None else str(lora_file))
    trained = trained_base(lora_file)
    if trained is not None and not _same_model(trained, base):
        raise ModelLoadError(f"{who} was trained on {trained}, not {base}: use it with {trained} (a LoRA fits only "
                             "the base model it was trained on)")
    raise ModelLoadError(f"{who} does not fit {base}: {len(problems)} of its {counted(count, 'layer')} "
                         f"{plural(len(problems), 'has')} other shapes "
                         f"(first: {problems[0]}); was it trained on another base model?")


@contextlib.contextmanager
def diffusers_quiet() -> Iterator[None]:
    """diffusers' logger silenced while a LoRA loads: it logs a line per mismatched layer before it raises, and the
    caller says the misfit in one line (:func:`loader_error`)."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity(dlogging.CRITICAL + 10)
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def loader_error(exc: BaseException) -> str:
    """A loader's exception as one line: its first line (at most 200 characters) and how many lines it left out
    (torch's size-mismatch error lists every layer)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [type(exc).__name__]
    more = f" (+{counted(len(lines) - 1, 'more line')})" if len(lines) > 1 else ""
    return f"{lines[0][:200]}{more}"
