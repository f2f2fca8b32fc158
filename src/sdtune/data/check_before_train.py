"""The dataset checks ``sdtune train`` runs before it loads a model (the same as ``sdtune dataset check``).

Every error found here would also stop training later (an unreadable image when the loader reaches it, a
missing caption when the data is read, after the model loaded), so the check stops the run at once and says
how to see the whole report; skipping it (``data.check=false``) only moves the failure later.
"""

from __future__ import annotations

from pathlib import Path

from sdtune.config import RunConfig, SubsetConfig
from sdtune.data.report import Problem, summarize, summarize_problems
from sdtune.data.subsets import subsets_from_config
from sdtune.errors import DataError, SdtuneError
from sdtune.words import counted, plural


def run_tokenizer(cfg: RunConfig):
    """The model's tokenizer, for exact caption lengths against its own limit (the toy reads 32 tokens, CLIP 77).

    Only the tokenizer files are read (no weights). None when it cannot be loaded yet (a stage's base that an
    earlier stage will write, an unreachable hub): the check then estimates, and says so; loading the model
    right after reports the real problem.
    """
    from sdtune.data.captions import load_tokenizer

    try:
        return load_tokenizer(cfg.model.base, revision=cfg.model.revision)
    except (SdtuneError, OSError, ValueError):
        return None


def _key(cfg: RunConfig, subset: SubsetConfig) -> str:
    """The config key a subset came from, for messages."""
    if subset.role == "class":
        return "data.class_dir"
    if cfg.data.instance_dir is not None and subset.path == cfg.data.instance_dir and subset.prompt is not None:
        return "data.instance_dir"
    if cfg.data.train_dir is not None and subset.path == cfg.data.train_dir and subset.prompt is None:
        return "data.train_dir"
    return "data.subsets"


_WARNED: set[str] = set()  # warnings printed by this process: each once


def check_training_data(cfg: RunConfig) -> None:
    """Raise DataError listing the problems in the run's data folders (repeated kinds summarized); print warnings.

    Also says once per folder when a fixed-prompt folder (DreamBooth's instance or class images) holds captions
    that training will not read (captions equal to the fixed prompt are no loss and go unmentioned).
    """
    if not cfg.data.check:
        return
    from sdtune.data.check import check_folder
    from sdtune.data.class_images import class_image_jobs, count_images

    tokenizer = run_tokenizer(cfg)
    errors: list[Problem] = []
    warnings: list[Problem] = []
    checked: list[Path] = []
    generated = {folder for folder, _, _ in class_image_jobs(cfg.data)}
    for key, folder in _named_folders(cfg):  # one line each, with its key (not one per image, or after the model)
        if not Path(folder).is_dir():
            errors.append(Problem(str(folder), f"{key} does not exist or is not a folder; check the path in your "
                                  f"config or the override that set it{_from_working_folder(folder)}"))
    for subset in subsets_from_config(cfg.data):
        if subset.role == "class" and (not subset.path.exists()
                                       or (subset.path in generated and count_images(subset.path) == 0)):
            continue  # class images are generated when missing (an empty folder, e.g. left by a failed run, too)
        if not subset.path.is_dir():
            where = _from_working_folder(subset.path)
            errors.append(Problem(str(subset.path), f"data folder ({_key(cfg, subset)}) does not exist; check the "
                                  f"path in your config or the override that set it{where}"))
            continue
        masks = (cfg.data.mask_dir or "alpha") if cfg.data.masked_loss and subset.role != "class" else None
        masks = None if masks is not None and masks != "alpha" and not Path(masks).is_dir() else masks
        report = check_folder(subset.path, resolution=cfg.data.resolution, require_captions=subset.prompt is None,
                              tokenizer=tokenizer, fixed_prompt=subset.prompt, masks=masks)
        found = [p for p in report.problems if p.level == "error"]
        if found:
            checked.append(subset.path)  # the folders worth a full report: those with problems
        errors += found
        warnings += [p for p in report.problems if p.level == "warning"]
        if subset.prompt is not None and (other := _other_captions(report.dataset, subset.prompt)):
            warnings.append(Problem(str(subset.path), _ignored_captions(cfg, subset, other, report.images),
                                    "warning", "ignored captions"))
    for line in summarize_problems(warnings):
        if line not in _WARNED:  # a recipe checks each stage's data before any trains, and training again
            _WARNED.add(line)
            print(f"warning: {line}")
    if errors:
        flags = f" --masks {cfg.data.mask_dir or 'alpha'}" if cfg.data.masked_loss else ""  # the report that has them
        see = " ".join(f"`sdtune dataset check {p}{flags}`" for p in checked[:2])
        raise DataError(f"the training data has {counted(len(errors), 'problem')}; fix "
                        f"{plural(len(errors), 'it')} and run again{f' (full report: {see})' if see else ''}"
                        ":\n  "
                        + "\n  ".join(summarize([str(p) for p in errors])))


def _named_folders(cfg: RunConfig) -> list[tuple[str, Path]]:
    """Folders besides the training subsets that training reads: the masks of a masked loss, a validation loss's
    held-out images (read only after the model loaded, so checked here)."""
    found = []
    if cfg.data.masked_loss and cfg.data.mask_dir is not None:
        found.append(("data.mask_dir", Path(cfg.data.mask_dir)))
    if cfg.validation.loss is not None and cfg.validation.loss.data_dir is not None:
        found.append(("validation.loss.data_dir", Path(cfg.validation.loss.data_dir)))
    return found


def _other_captions(records, prompt: str) -> int:
    """Images with a caption other than the fixed ``prompt`` (what training would ignore). Captions equal to it
    (``dataset build --caption "a photo of sks person"``, as the README builds a DreamBooth folder) lose nothing."""
    return sum(1 for record in records if any(c.strip() != prompt.strip() for c in record.captions))


def _ignored_captions(cfg: RunConfig, subset: SubsetConfig, captioned: int, images: int) -> str:
    key = _key(cfg, subset)
    prompt_key = {"data.instance_dir": "data.instance_prompt", "data.class_dir": "data.class_prompt"}.get(
        key, "the subset's prompt")
    where = "data.train_dir" if key == "data.instance_dir" else "a subset without a prompt"
    return (f"{captioned} of {counted(images, 'image')} {plural(captioned, 'has')} captions other than "
            f"{prompt_key}, and they are not read: {key} "
            f"trains on {prompt_key} "
            f"({subset.prompt!r}). For captioned training use {where}")


def _from_working_folder(folder: Path | str) -> str:
    """A hint for a missing folder under the working folder: a relative path in a config is read from where the
    command runs, not from the config file's folder (a newcomer ran a config from another folder and looked for the
    fault in the config); "" otherwise."""
    cwd = Path.cwd()
    return (f" (a relative path in a config is read from the working folder, {cwd}, not from the config's folder)"
            if cwd in Path(folder).parents else "")
