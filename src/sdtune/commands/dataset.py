"""``sdtune dataset build`` and ``sdtune dataset check``: photos in, a dataset the trainer reads out."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sdtune.data.segmenter import DEFAULT_SEGMENTER
from sdtune.errors import DataError
from sdtune.models.presets import PRESETS
from sdtune.words import counted, first_few

ORDER = 5

dataset_app = typer.Typer(
    name="dataset",
    help=(
        "Turn photos into a training dataset and find what is wrong with it, before a GPU hour is spent.\n\n"
        "`build` writes a Hugging Face imagefolder (images + metadata.jsonl); `check` reports problems; `masks` "
        "makes the masked loss's masks (CLIPSeg)."
    ),
    no_args_is_help=True,
)


@dataset_app.command("build")
def build_command(
    src: list[Path] = typer.Argument(..., show_default=False, help="source folder(s) of images; never modified"),
    out: Path = typer.Argument(..., show_default=False, help="dataset folder to write (new, empty, or built "
                               "before by this command)"),
    captions: Path = typer.Option(None, "--captions", help="CSV or JSONL of file,caption rows (paths relative "
                                  "to SRC); default: SRC/metadata.jsonl, else .txt/.caption files next to the images"),
    caption: str = typer.Option(None, "--caption", help="fixed caption for every image that has none, "
                                "e.g. 'a photo of sks person'"),
    captioner: str = typer.Option(None, "--captioner", help="model that captions the images: florence-2 (the default "
                                  "when only --mode/--trigger/--class/--prompt are given: fast, ~0.5 GB), "
                                  "florence-2-large, joycaption (best text, 8B: a GPU with ~20 GB), blip; or any hub "
                                  "id or local folder of a Florence-2, Llava or BLIP model",
                                  rich_help_panel="Captioning"),
    mode: str = typer.Option(None, "--mode", help="fill: caption only images without a caption (default; existing "
                             "captions are never touched); replace: caption all, dropping existing ones; prefix / "
                             "suffix: put the new caption before / after the existing one",
                             rich_help_panel="Captioning"),
    trigger: str = typer.Option(None, "--trigger", help="trigger word kept in front of every caption the captioner "
                                "writes, e.g. sks", rich_help_panel="Captioning"),
    class_word: str = typer.Option(None, "--class", help="class after the trigger word: --trigger sks --class person "
                                   "gives 'sks person, <caption>'", rich_help_panel="Captioning"),
    prompt: str = typer.Option(None, "--prompt", help="what to ask the model: Florence-2 a task (<CAPTION>, "
                               "<DETAILED_CAPTION> default, <MORE_DETAILED_CAPTION>: a paragraph, often over the 77 "
                               "tokens SD reads); chat models (JoyCaption) an instruction; BLIP text the caption "
                               "continues, e.g. 'a photo of'", rich_help_panel="Captioning"),
    template: str = typer.Option("{caption}", "--template", help="wraps the captioner's text, e.g. "
                                 "'a photo of {caption}'", rich_help_panel="Captioning"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="images captioned at once (lower it when a GPU "
                                   "runs out of memory)", rich_help_panel="Captioning"),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", min=1, help="longest caption in tokens (default: "
                                       "Florence-2 256, chat 120, BLIP 40)", rich_help_panel="Captioning"),
    device: str = typer.Option(None, "--device", help="cuda, cuda:1 or cpu (default: cuda when a GPU is visible)",
                               rich_help_panel="Captioning"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a GPU, fp32 on CPU), bf16, fp16 or fp32",
                              rich_help_panel="Captioning"),
    concept: list[str] = typer.Option(None, "--concept", help="value of a 'concept' column (and subfolder); "
                                      "once for all sources or once per SRC. Building concept X again replaces "
                                      "only X's rows, so sources can be merged one command at a time"),
    max_size: int = typer.Option(None, "--max-size", min=8, help="downsize so the longest side is at most this"),
    strict: bool = typer.Option(False, "--strict", help="stop on the first bad file or row instead of skipping it"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress bars"),
) -> None:
    """Build a dataset (HF imagefolder: images + metadata.jsonl) from photos.

    SRC is read as `sdtune train` and `dataset check` read a folder. Captions come from, in this order:
      1. --captions FILE; or SRC/metadata.jsonl (or .csv), whose rows are the images, as for Hugging Face
      2. photo.txt or photo.caption next to photo.jpg (the kohya convention)
      3. --captioner MODEL or --caption TEXT, for images still without one
    Without any, images stay uncaptioned: fine for DreamBooth (fixed prompt). A row whose text is a list of
    captions keeps them all (training uses each in turn).

    Captioners: Florence-2 (the default; a task prompt), Llava chat models such as JoyCaption (an instruction)
    and BLIP, told apart by the architecture in the model's config.json. A captioner never overwrites a caption
    unless asked: --mode fill (default) captions only images without one, --mode replace drops existing
    captions, --mode prefix / suffix adds to them. --trigger/--class keep "sks person, " in front of what the
    captioner writes. It runs on the GPU in bf16 when one is visible (--device, --dtype).

    Every image is re-encoded: EXIF rotation applied, RGB (transparency on white; CMYK, 16-bit and palette
    images handled), optionally --max-size. Exact duplicates (the same pixels, in any format) become one image that
    keeps every caption they had, as alternatives; near-duplicates are reported and kept. Bad files
    (corrupt, truncated, empty, not an image, too large) and rows pointing outside SRC are reported and skipped
    (--strict: stop instead); so are images a metadata.jsonl does not list and images with a name that is not
    an image suffix. A caption column or key that looks misspelt ('captoin', 'txt') is named with the one it is
    closest to; when no row has a real caption column the build stops. SRC is never modified; rerunning into the
    same OUT rebuilds it from SRC (captions edited in OUT are replaced: it says so and keeps
    OUT/.metadata.jsonl.previous).

    \b
    Examples:
      sdtune dataset build photos/ data/me \\
          --caption "a photo of sks person"
      sdtune dataset build photos/ data/t2i --captions captions.csv
      sdtune dataset build thumbs/ data/mix --concept thumbsup
      sdtune dataset build me/ data/me --trigger sks --class person
          (captions with Florence-2: "sks person, a woman with ...")
      sdtune dataset build art/ data/art --captioner joycaption \\
          --mode replace --prompt "Write a one-line caption."
      sdtune dataset build me/ data/mix --concept sks \\
          --captioner ./blip --template "sks person, {caption}"
    """
    from sdtune.commands.args import device as check_device
    from sdtune.commands.args import existing_file, existing_folder, output_folder
    from sdtune.data.build import Source, build_dataset
    from sdtune.data.caption_modes import CaptionSettings
    from sdtune.data.captioner import DEFAULT_CAPTIONER

    sources = list(src)
    for folder in sources:
        existing_folder(folder, "source folder")
    device = check_device(device) if device else None
    output_folder(out, "OUT")
    existing_file(captions, "--captions", " (a CSV or JSONL of file,caption rows)")
    if caption and captioner:
        raise DataError("use either --caption (one fixed caption) or --captioner (a model), not both")
    asked = [name for name, value in (("--mode", mode), ("--trigger", trigger), ("--class", class_word),
                                      ("--prompt", prompt), ("--max-new-tokens", max_new_tokens),
                                      ("--device", device)) if value is not None]
    if asked and caption:
        raise DataError(f"{', '.join(asked)} set how the captioner works, and --caption gives a fixed caption "
                        "instead: write the words into --caption, or drop it to caption with a model")
    if asked and not captioner:  # captioner options alone: the default captioner
        captioner = DEFAULT_CAPTIONER
        typer.echo(f"captioning with {DEFAULT_CAPTIONER} (the default; --captioner to choose another)", err=True)
    if captions is not None and len(sources) > 1:
        raise DataError("--captions names files of one SRC; build the sources one at a time with --concept")
    concepts = list(concept or [])
    if len(concepts) not in (0, 1, len(sources)):
        raise DataError(f"got {counted(len(concepts), '--concept value')} for {counted(len(sources), 'source')}: "
                        "give one, or one per SRC")
    if len(concepts) == 1:
        concepts = concepts * len(sources)
    specs = [Source(folder=src, captions_file=captions, caption=caption, concept=concepts[i] if concepts else None)
             for i, src in enumerate(sources)]
    settings = CaptionSettings(captioner, mode=mode or "fill", trigger=trigger, class_word=class_word,
                               template=template, prompt=prompt, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               device=device, dtype=dtype) if captioner else None
    report = build_dataset(specs, out, max_size=max_size, strict=strict, captioner=settings, progress=progress)
    typer.echo(report.to_text())


@dataset_app.command("check")
def check_command(
    folder: Path = typer.Argument(..., help="dataset folder: an imagefolder (metadata.jsonl) or images with "
                                  ".txt/.caption files"),
    resolution: int = typer.Option(None, "--resolution", min=8, help="training resolution: smaller images are "
                                   "reported (they get upscaled and look soft); aspect-ratio buckets are shown for "
                                   "it (default 512)"),
    require_captions: bool = typer.Option(False, "--require-captions", help="a missing caption is an error "
                                          "(text-to-image training); DreamBooth folders need none"),
    model: str = typer.Option(None, "--model", help="count caption tokens with this model's tokenizer, against its "
                              f"limit (diffusers folder, hub id or built-in: {', '.join(PRESETS)}); without it "
                              "counts are estimates"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON for scripts"),
    masks: str = typer.Option(None, "--masks", help="check the masked loss's masks: a folder of masks named as "
                              "the images (data.mask_dir; not inside FOLDER), or 'alpha' for the images' alpha "
                              "channels; missing, unreadable, other-size or empty masks are errors"),
) -> None:
    """Report what is wrong with a dataset; exit status 1 when there are errors.

    Reports the image count (what training reads: exact duplicates count, and are reported), a histogram of
    resolutions, the aspect-ratio buckets training will use (at --resolution, sides multiples of the model's
    step: 64 px on SD; --model reads it), images smaller than --resolution, missing or empty
    captions, captions longer than the text encoder reads (with --model: its tokenizer's own limit, e.g. 77 for
    CLIP, 32 for the toy; without: an estimate against 77), duplicates and near-duplicates, unreadable files
    (corrupt, truncated, empty, not an image, too large), rows of metadata.jsonl naming missing files, and
    images that would not be used (not listed in metadata.jsonl, or named without an image suffix), and
    caption columns, keys or caption-file suffixes that look misspelt (captoin: did you mean caption?).

    With --masks: how many images have a mask; masks missing, unreadable, of another size or empty; a mask folder
    inside FOLDER (its masks would be trained as photos); two masks of one photo (me0.png and me0.jpg); files in
    the mask folder that match no photo; masks read by their alpha channel (transparent cut-outs).

    `sdtune train` reads the folder the same way and runs the same checks with the run's model before it
    loads the weights, and stops on errors.

    \b
    Examples:
      sdtune dataset check data/me --resolution 512
      sdtune dataset check data/me --masks data/me-masks
      sdtune dataset check data/t2i --require-captions \\
          --model tiny --json
    """
    from sdtune.commands.args import existing_folder
    from sdtune.data.buckets import SD_STEP, model_bucket_step
    from sdtune.data.captions import load_tokenizer
    from sdtune.data.check import check_folder

    existing_folder(folder, "dataset folder")
    tokenizer = load_tokenizer(model) if model else None
    step, source = model_bucket_step(model) if model else (SD_STEP, None)
    if masks is not None and masks != "alpha":
        existing_folder(Path(masks), "mask folder (--masks)")
    report = check_folder(folder, resolution=resolution, require_captions=require_captions, tokenizer=tokenizer,
                          progress=not as_json, bucket_step=step, masks=masks, bucket_source=source)
    typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if as_json else report.to_text())
    if not report.ok:
        raise typer.Exit(1)


@dataset_app.command("masks")
def masks_command(
    folder: Path = typer.Argument(..., help="the photos (a dataset folder, read as `sdtune train` reads it)"),
    prompt: str = typer.Option(..., "--prompt", help="what to keep, in words: 'a person', 'a dog', 'a face'"),
    out: Path = typer.Option(None, "--out", help="folder for the masks (default: FOLDER-masks beside FOLDER); "
                             "give it to training as data.mask_dir"),
    threshold: float = typer.Option(0.3, "--threshold", min=0.0, max=1.0,
                                    help="a pixel is in the mask when CLIPSeg's score is above this (0-1; lower "
                                    "keeps more; 0.3 is OneTrainer's default)"),
    expand: int = typer.Option(10, "--expand", min=0, max=64, help="grow each mask by this many pixels, so hair "
                               "and hands at the edge stay in (OneTrainer's default 10)"),
    model: str = typer.Option("clipseg", "--model", help=f"clipseg ({DEFAULT_SEGMENTER}), another hub id or a "
                              "local folder of a CLIPSeg model"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace masks already in --out (default: keep "
                                   "them, so hand-drawn masks survive)"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, max=4096, help="images segmented at once"),
    device: str = typer.Option(None, "--device", help="cuda, cuda:1 or cpu (default: cuda when a GPU is visible)"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a GPU, fp32 on CPU), bf16, fp16 or fp32"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Make a mask per photo for the masked loss (data.masked_loss): where --prompt is, found by CLIPSeg.

    Each mask is a black-and-white PNG named after its photo (me1.jpg -> me1.png) in FOLDER-masks, the size of
    the photo as training reads it (EXIF rotation applied): white is learned, black is not (or at
    data.mask_outside_weight). Masks already there are kept unless --overwrite, so a mask drawn by hand wins.
    Look at a few before training: a mask that misses part of the person teaches the model less of them.

    \b
    Examples:
      sdtune dataset masks data/me --prompt "a person"
      sdtune dataset check data/me --masks data/me-masks
      sdtune train configs/two-stage.yaml data.masked_loss=true \\
          data.mask_dir=data/me-masks
    """
    from sdtune.atomic import removing_new_folders
    from sdtune.commands.args import device as check_device
    from sdtune.commands.args import existing_folder, output_folder
    from sdtune.data.folders import read_folder
    from sdtune.data.segmenter import load_segmenter, masks_to_make, write_masks

    existing_folder(folder, "photo folder")
    if not prompt.strip():
        raise DataError("--prompt is empty: say what to keep, e.g. --prompt 'a person'")
    if threshold >= 1.0:
        raise DataError("--threshold 1: no score is above 1, so every mask would be empty; 0.3 is the usual choice")
    device = check_device(device) if device else None
    photos = folder.resolve()
    default_out = photos.with_name(f"{photos.name}-masks")
    out = out or default_out
    if out.resolve().is_relative_to(photos):
        raise DataError(f"--out {out} is inside {folder}: training would read the masks as photos; write them "
                        f"beside it (default {default_out})")
    output_folder(out, "--out")
    images = [record.path for record in read_folder(folder).records]
    if not images:
        raise DataError(f"{folder} holds no images to mask (`sdtune dataset check {folder}` says why)")
    if threshold == 0.0:
        typer.echo("note: --threshold 0 keeps every pixel: each mask is its whole photo (the masked loss then "
                   "changes nothing)", err=True)
    todo = masks_to_make(images, out, overwrite)
    if not todo:  # nothing to do: the model is not loaded
        typer.echo(f"every photo has a mask in {out} already ({counted(len(images), 'mask')}); --overwrite "
                   "makes them again")
        return
    segmenter = load_segmenter(model, device=device, dtype=dtype, batch_size=batch_size)
    with removing_new_folders(out):
        report = write_masks(images, out, prompt, segmenter, threshold=threshold, expand=expand,
                             overwrite=overwrite, progress=progress, todo=todo)
    kept = f" ({counted(report.kept, 'mask')} already there kept; --overwrite replaces them)" if report.kept else ""
    typer.echo(f"wrote {counted(report.written, 'mask')} to {out}{kept}. Check them: sdtune dataset check {folder} "
               f"--masks {out}; train with data.masked_loss=true data.mask_dir={out}")
    if report.shadowed:
        names = first_few([p.name for p in report.shadowed], 5)
        typer.echo(f"note: {counted(len(report.shadowed), 'older mask')} of another format kept in {out} but no "
                   f"longer read, as the new PNG of the same name comes first ({names}): delete them, or move them "
                   "away and run again without --overwrite to use them", err=True)
    failed = False
    if report.unreadable:
        names = first_few([f"{p.name}: {why.split(': ', 1)[-1]}" for p, why in report.unreadable], 3, "; ")
        typer.echo(f"error: {counted(len(report.unreadable), 'photo')} could not be read and got no mask ({names}); "
                   f"`sdtune dataset check {folder}` lists them: fix or remove them", err=True)
        failed = True
    if report.empty:
        names = first_few([p.name for p in report.empty], 5)
        typer.echo(f"error: {counted(len(report.empty), 'mask')} came out empty ({names}): CLIPSeg found no "
                   f"{prompt!r} there above --threshold {threshold}; run again with a lower --threshold or other "
                   "words (empty masks are made again), or draw those masks by hand", err=True)
        failed = True
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(dataset_app, name="dataset")
