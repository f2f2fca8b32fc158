"""``sdtune export``: a run's LoRA for other tools, and LoRA extraction from a full fine-tune.

Forms::

    sdtune export RUN --format kohya [-o FILE]            # kohya / AUTOMATIC1111 / ComfyUI .safetensors
    sdtune export kohya RUN [-o FILE]                      # the same, as a sub-command
    sdtune export lora --from RUN --rank 32 [--format kohya] [-o DIR_OR_FILE]   # SVD extraction (full runs)

Single files are named ``*.safetensors`` (other names are refused), output folders are made only when there is
something to write, and ``export lora`` writes into the run folder only without -o (``commands/export_files.py``).

``export`` is a sub-app whose group routes a first argument that is not a sub-command name (a run folder) to
the hidden ``run`` sub-command, so the short form in DESIGN.md works next to the sub-commands.

Every export is verified before it takes its name: the written file is loaded the way its consumer loads it
(diffusers ``load_lora_weights``; for kohya files also ComfyUI's key convention) into a fresh base model, and the
UNet and text-encoder outputs are compared with the run's LoRA applied through peft (``models/verify.py``). The
largest differences are printed; a mismatch is an error (exit 2) and leaves no file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer
from typer.core import TyperGroup

from sdtune.devices import DTYPE_HELP

ORDER = 40
FORMATS = ("kohya", "diffusers")


class _RunFolderFirst(TyperGroup):
    """``sdtune export RUN ...`` -> ``sdtune export run RUN ...`` when RUN is not a sub-command name."""

    def parse_args(self, ctx, args):  # noqa: ANN001 - click's signature
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


export_app = typer.Typer(cls=_RunFolderFirst, no_args_is_help=True, help=(
    "Export a run's LoRA for other tools (`sdtune export RUN --format kohya`), or extract a LoRA from a full "
    "fine-tune (`sdtune export lora --from RUN --rank 32`)."))


def _run_lora(run: Path) -> Path:
    from sdtune.errors import SdtuneError
    from sdtune.models.lora import LORA_WEIGHTS

    if run.is_file():
        return run
    from sdtune.run_status import require_finished

    if (run / "config.yaml").is_file():
        require_finished(run)  # resumed past its outputs and stopped: its lora/ is an older step's
    lora = run / "lora" / LORA_WEIGHTS
    if lora.is_file():
        return lora
    if (run / LORA_WEIGHTS).is_file():
        return run / LORA_WEIGHTS
    if (run / "lora" / "lycoris.safetensors").is_file():  # LoHa / LoKr (sdtune.models.lycoris)
        raise SdtuneError(f"{run} trains a LoHa/LoKr adapter, which diffusers' load_lora_weights cannot load: its "
                          f"files are {run / 'lora' / 'lycoris.safetensors'} (AUTOMATIC1111 / ComfyUI: `sdtune export "
                          f"{run} --format kohya`) and {run / 'lora' / 'peft'} (peft's own format)")
    hint = (f" It is a full fine-tune: extract a LoRA first with `sdtune export lora --from {run} --rank 32`"
            if (run / "model").is_dir() else _stack_hint(run) or _embedding_hint(run))
    raise SdtuneError(f"no LoRA in {run} (expected lora/{LORA_WEIGHTS}).{hint}")


def _stack_hint(run: Path) -> str:
    """What a stack folder (``RUN/stack``: a base plus several LoRAs, listed in ``adapters.json``) holds, and what
    to export instead ("" for other folders): each LoRA is its own run's, exported from that run."""
    import json

    listing = run / "adapters.json"
    try:
        adapters = json.loads(listing.read_text(encoding="utf-8"))
        runs = [(run / a["path"]).resolve().parent.parent for a in adapters]
    except (OSError, ValueError, TypeError, KeyError):
        return ""
    commands = "; ".join(f"`sdtune export {r} --format kohya`" for r in runs)
    return (f" It is a stack of {len(runs)} LoRAs ({listing}), each exported from its own run: {commands} (a "
            "learned token comes with its run's LoRA)")


def _embedding_hint(run: Path) -> str:
    """What a textual-inversion run has instead of a LoRA, and how other tools load it ("" for other runs)."""
    from sdtune.models.embeddings import EMBEDDINGS_DIR

    files = sorted((run / EMBEDDINGS_DIR).glob("*.safetensors")) if (run / EMBEDDINGS_DIR).is_dir() else []
    if not files:
        return ""
    from sdtune.commands.export_files import embedding_use

    file = files[0]
    return (f" It is a textual-inversion run: what it learned is the embedding {file}, which needs no export. "
            f"{embedding_use(file)}; diffusers: pipe.load_textual_inversion({str(file)!r})")


def _writable_target(target: Path, out: Path | None) -> Path:
    """``target`` when its folder can be written (checked before the base model loads for verification)."""
    from sdtune.errors import SdtuneError
    from sdtune.writable import check_writable, replace_problem, unwritable

    key = "--out" if out is not None else "the run's export/ folder"
    fix = None if out is not None else "pass --out FILE in a writable folder or fix the permissions"
    check_writable(target.parent, key, fix)
    if problem := replace_problem(target):
        raise SdtuneError(unwritable(target, key, problem, "pass --out with another file, or clear its attributes "
                                     "(chattr -i)"))
    return target


def _base_for(path: Path, base: str | None) -> dict:
    """How to load the base model a LoRA was trained on (to verify against): ``--base``, else the run folder's
    config (its base, revision, variant and pickle permission), as keyword arguments of ``verify_lora_file``.

    Only the commands with ``--base`` (``export RUN``, ``export kohya``) can reach the hint naming it: ``export lora``
    checks its run folder first (``models.extract.check_extractable``)."""
    from sdtune.errors import SdtuneError
    from sdtune.models.verify import run_base
    from sdtune.run_folder import is_run_folder

    if base:
        return {"base": base}
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "lora" else path.parent
    if is_run_folder(run):
        return run_base(run)
    raise SdtuneError(f"{path}: no run config beside it to tell which base model the LoRA is for; pass --base MODEL "
                      "(the export is verified by loading it into that model)")


def _verifier(consumers: tuple[str, ...], base: dict, source: Path | None = None):
    """A check for a freshly written file (see ``models.verify.file_checker``); ``base``: :func:`_base_for`."""
    from sdtune.models.verify import file_checker

    return file_checker(consumers, base, source=source, echo=typer.echo)


def _kohya_out(run: Path, out: Path | None) -> Path:
    """The kohya file to write: ``-o`` (a ``.safetensors`` file, or an existing folder to put one in), else
    ``RUN/export/<run name>.safetensors``."""
    from sdtune.commands.export_files import check_file_name

    if out is not None:
        if out.is_dir():
            return out / f"{run.name}.safetensors"
        check_file_name(out, "a kohya LoRA file")
        return out
    name = run.parent.parent.name if run.is_file() and run.parent.name == "lora" else run.name
    folder = run.parent.parent if run.is_file() else run
    return folder / "export" / f"{name}.safetensors"


def _write_kohya(run: Path, out: Path | None, dtype: str, base: str | None = None) -> Path:
    from sdtune.run_folder import LYCORIS_NAME

    if run.is_dir() and (run / "lora" / LYCORIS_NAME).is_file():  # DoRA / LoHa / LoKr: written and verified in training
        return _copy_lycoris(run, out, dtype)
    source = _run_lora(run)
    target = _writable_target(_kohya_out(run, out), out)
    home = source.parent.parent if source.parent.name == "lora" else source.parent
    return _kohya_file(source, target, dtype, _base_for(source, base), home)


def _copy_lycoris(run: Path, out: Path | None, dtype: str) -> Path:
    """A DoRA / LoHa / LoKr run's kohya/LyCORIS file, copied as training wrote and verified it."""
    from sdtune.atomic import atomic_copy, removing_new_folders
    from sdtune.errors import SdtuneError
    from sdtune.models.safetensors_files import check_safetensors
    from sdtune.run_folder import LYCORIS_NAME
    from sdtune.run_status import require_finished

    require_finished(run)  # resumed past its outputs and stopped: its lora/ is an older step's
    if dtype != "float32":
        raise SdtuneError(f"--dtype {dtype}: a DoRA/LoHa/LoKr run's kohya/LyCORIS file is exported as trained and "
                          "verified (float32); leave --dtype out")
    check_safetensors(run / "lora" / LYCORIS_NAME)  # a damaged file is not handed on as verified
    target = _writable_target(_kohya_out(run, out), out)
    with removing_new_folders(target.parent):
        atomic_copy(run / "lora" / LYCORIS_NAME, target)  # never a half-copied file under the name
    typer.echo(f"kohya/LyCORIS file: {target} (RUN/lora/{LYCORIS_NAME}, verified in ComfyUI's loader logic when "
               "the run finished)")
    return target


def _kohya_file(source: Path, target: Path, dtype: str, base_kw: dict, home: Path) -> Path:
    """Write the diffusers-format LoRA ``source`` as the kohya file ``target``, verified against ``base_kw``
    (:func:`_base_for`); ``home``: the folder whose run (when it is one) gives the file its objective, resolution
    and learned token. A failed export leaves neither the file nor a folder made for it."""
    from sdtune.atomic import removing_new_folders
    from sdtune.config import DataConfig
    from sdtune.models.kohya import base_metadata, export_kohya
    from sdtune.models.loading import model_generation
    from sdtune.run_folder import is_run_folder, read_run

    check = _verifier(("kohya-diffusers", "kohya-comfyui"), base_kw, source=source)
    generation, prediction = model_generation(base_kw["base"], base_kw.get("revision"))
    trained = read_run(home) if is_run_folder(home) else None  # its objective and resolution, when a run says
    resolution = (trained.config.get("data") or {}).get("resolution", DataConfig.model_fields["resolution"].default) \
        if trained else None
    meta = base_metadata(generation, (trained.prediction_type if trained else None) or prediction,
                         title=target.stem, resolution=resolution if isinstance(resolution, int) else None)
    if not source.resolve().is_relative_to(home.resolve()):  # an extraction's temporary file: name where it came from
        meta["sdtune_source"] = str(home)
    embedding = trained.embedding_file if trained else None  # textual inversion / pivotal tuning: its token
    bundle = None
    if embedding is not None:
        from sdtune.models.embeddings import bundle_state

        bundle = bundle_state(embedding)
    from sdtune.commands.export_files import identity_lora_note

    if (identity := identity_lora_note(source, home)) is not None:
        typer.echo(identity + ("; in this file only the bundled token changes the model" if bundle else
                               "; this file changes nothing"), err=True)
    with removing_new_folders(target.parent):
        target = export_kohya(source, target, dtype=dtype, check=check, sdxl=generation == "sdxl", base=meta,
                              bundle=bundle)
    typer.echo(f"kohya LoRA: {target}")
    typer.echo("  AUTOMATIC1111: copy it to models/Lora/ and write <lora:" + target.stem + ":1> in the prompt; "
               "ComfyUI: models/loras/ and a LoraLoader node")
    if embedding is not None and bundle is not None:
        from sdtune.atomic import atomic_copy, removing_new_folders
        from sdtune.commands.export_files import bundle_use, embedding_copy
        from sdtune.models.embeddings import unbundle

        copy = embedding_copy(target, embedding.name)
        with removing_new_folders(copy.parent):
            atomic_copy(embedding, copy)
        typer.echo(bundle_use(target, list(unbundle(bundle)), copy))  # the names the file's keys give
    return target


def _write_diffusers(run: Path, out: Path | None, base: str | None) -> Path:
    """Rewrite a run's (or any) diffusers-format LoRA in the portable format, e.g. one trained before it existed."""
    from sdtune.atomic import removing_new_folders
    from sdtune.commands.export_files import check_file_name
    from sdtune.errors import SdtuneError
    from sdtune.models.lora import LORA_WEIGHTS, rewrite_lora_file

    source = _run_lora(run)
    home = source.parent.parent if source.parent.name == "lora" else source.parent
    target = out if out is not None else home / "export" / LORA_WEIGHTS
    target = target / LORA_WEIGHTS if target.is_dir() or not target.suffix else target  # no suffix: a folder
    check_file_name(target, "a diffusers LoRA file")
    if target.resolve() == source.resolve():
        raise SdtuneError(f"{target} is the LoRA being exported; pass -o with another path")
    _writable_target(target, out)
    check = _verifier(("diffusers",), _base_for(source, base), source=source)
    with removing_new_folders(target.parent):
        rewrite_lora_file(source, target, check=check)
    typer.echo(f"diffusers LoRA: {target}")
    typer.echo(f"  pipe.load_lora_weights({str(target.parent)!r}, weight_name={target.name!r})")
    return target


def _check_format(fmt: str) -> None:
    from sdtune.errors import SdtuneError

    if fmt not in FORMATS:
        raise SdtuneError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")


@export_app.command("run", hidden=True)
def export_run(
    run: Path = typer.Argument(..., help="run folder (or a LoRA .safetensors file)"),
    fmt: str = typer.Option("kohya", "--format", "-f", help="kohya (AUTOMATIC1111/ComfyUI), or diffusers (rewrite "
                            "an older sdtune LoRA in the format every diffusers version loads)"),
    out: Path = typer.Option(None, "--out", "-o", help="output .safetensors file, or a folder to put it in (default "
                             "RUN/export/<run name>.safetensors; diffusers: RUN/export/pytorch_lora_weights"
                             ".safetensors)"),
    dtype: str = typer.Option("float32", "--dtype", help=f"kohya weights: {DTYPE_HELP}"),
    base: str = typer.Option(None, "--base", help="base model the LoRA was trained on (default: the run's); the "
                             "export is verified by loading it into this model"),
) -> None:
    """Export a run's LoRA in another format, verified by loading it as its consumer does."""
    from sdtune.commands.args import dtype as parse_dtype
    from sdtune.commands.args import existing

    _check_format(fmt)
    run, dtype = existing(run, "run folder (or LoRA file)"), parse_dtype(dtype, allow_auto=False)
    if fmt == "diffusers":
        _write_diffusers(run, out, base)
    else:
        _write_kohya(run, out, dtype, base)


@export_app.command("kohya")
def export_kohya_command(
    run: Path = typer.Argument(..., help="run folder (or a diffusers-format LoRA .safetensors file)"),
    out: Path = typer.Option(None, "--out", "-o", help="output .safetensors file, or a folder to put it in "
                             "(default RUN/export/<run name>.safetensors)"),
    dtype: str = typer.Option("float32", "--dtype", help=f"{DTYPE_HELP}; float16 is the usual for sharing"),
    base: str = typer.Option(None, "--base", help="base model the LoRA was trained on (default: the run's)"),
) -> None:
    """Write a run's LoRA in the kohya format (lora_unet_..._lora_down/up + alpha) for AUTOMATIC1111 and ComfyUI.

    Verified before it is written: loaded through diffusers' kohya loader and ComfyUI's key convention into the
    base model, its outputs must match the run's LoRA (the largest differences are printed)."""
    from sdtune.commands.args import dtype as parse_dtype
    from sdtune.commands.args import existing

    run, dtype = existing(run, "run folder (or LoRA file)"), parse_dtype(dtype, allow_auto=False)
    _write_kohya(run, out, dtype, base)


@export_app.command("lora")
def export_lora_command(
    source: Path = typer.Option(..., "--from", help="a full fine-tune run folder (with model/ and config.yaml)"),
    rank: int = typer.Option(32, "--rank", "-r", min=1, help="LoRA rank: higher keeps more of the change (capped "
                             "at each layer's full rank)"),
    conv: bool = typer.Option(False, "--conv", help="also extract 3x3 convolutions (ResNet blocks)"),
    fmt: str = typer.Option("diffusers", "--format", "-f", help="diffusers (RUN/lora) or kohya"),
    out: Path = typer.Option(None, "--out", "-o", help="where the LoRA goes instead of the run folder, which is "
                             "then left as it is: a folder (diffusers), or a .safetensors file (kohya)"),
) -> None:
    """Extract a LoRA from a full fine-tune: truncated SVD of its weight change to the base (as kohya does).

    Prints the reconstruction error (relative Frobenius error of the extracted layers) and the share of the
    whole weight change the LoRA layers hold; both are saved in extraction.json beside the LoRA.

    Without -o the LoRA goes into RUN/lora (what `sdtune export kohya RUN` and stacks read), replacing an earlier
    extraction there (the command says which); --format kohya also writes
    RUN/export/<run>-rank<R>[-conv].safetensors. With -o only that is written: RUN/lora is left as it is.
    """
    import tempfile

    from sdtune.atomic import removing_new_folders
    from sdtune.commands.args import existing_folder
    from sdtune.commands.export_files import earlier_extraction, replaced_line
    from sdtune.errors import SdtuneError
    from sdtune.models.extract import check_extractable, extract_from_run
    from sdtune.models.lora import LORA_WEIGHTS
    from sdtune.writable import check_writable

    _check_format(fmt)
    existing_folder(source, "--from run folder")
    check_extractable(source)  # before any hint about a base model: this command takes it from the run
    target = None
    if fmt == "kohya":
        default = source / "export" / f"{source.name}-rank{rank}{'-conv' if conv else ''}.safetensors"
        target = _writable_target(_kohya_out(source, out) if out is not None else default, out)
    elif out is not None and out.suffix.lower() == ".safetensors":
        raise SdtuneError(f"-o {out}: --format diffusers writes a folder (pytorch_lora_weights.safetensors and "
                          "extraction.json): pass a folder, or --format kohya for one .safetensors file")
    base_kw = _base_for(source, None)
    with contextlib.ExitStack() as stack:
        if out is None:
            lora_dir = source / "lora"
            check_writable(lora_dir, "the run's lora/ folder", "fix its permissions, or pass -o")
        elif fmt == "diffusers":
            lora_dir = out
            check_writable(lora_dir, "--out")
        else:  # only the kohya file is wanted: the diffusers file it is made from is a temporary one
            lora_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdtune-extract-"))) / "lora"
        earlier = earlier_extraction(lora_dir) if out is None else None
        with removing_new_folders(lora_dir):
            report = extract_from_run(source, rank, lora_dir, conv=conv, check=_verifier(("diffusers",), base_kw))
        if target is None or out is None:
            typer.echo(f"extracted: {lora_dir / LORA_WEIGHTS}")
        typer.echo(f"  {report.summary()}")
        if earlier is not None:
            typer.echo(replaced_line(lora_dir, earlier, report.to_dict(), source), err=True)
        if target is not None:
            _kohya_file(lora_dir / LORA_WEIGHTS, target, "float32", base_kw, source)


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
