"""The dataset checks ``sdtune train`` runs before it loads a model (the same as ``sdtune dataset check``)."""

from __future__ import annotations

from sdtune.config import RunConfig
from sdtune.data.subsets import subsets_from_config
from sdtune.errors import DataError, SdtuneError


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


def check_training_data(cfg: RunConfig) -> None:
    """Raise DataError listing every problem in the run's data folders; print warnings."""
    if not cfg.data.check:
        return
    from sdtune.data.check import check_folder

    tokenizer = run_tokenizer(cfg)
    problems: list[str] = []
    for subset in subsets_from_config(cfg.data):
        if subset.role == "class" and not subset.path.exists():
            continue  # class images are generated when missing
        if not subset.path.is_dir():
            problems.append(f"{subset.path}: data folder does not exist; check the path in your config")
            continue
        report = check_folder(subset.path, resolution=cfg.data.resolution, require_captions=subset.prompt is None,
                              tokenizer=tokenizer, fixed_prompt=subset.prompt)
        problems.extend(report.errors)
        for warning in report.warnings:
            print(f"warning: {warning}")
    if problems:
        raise DataError("the training data has problems (fix them, or set data.check=false to skip):\n  "
                        + "\n  ".join(problems))
