"""Where a command may write: never over a user's files, never into (or around) its own training data.

``sdtune train`` writes config.yaml, README.md, metrics.json, checkpoints/, lora/, model/, samples/ and logs/
into ``output_dir``; ``sdtune run`` and ``sdtune personalize`` write a folder of such runs. A folder is accepted
when it does not exist, is empty, or already is an sdtune folder of the same kind (a run continued or redone);
anything else is refused with one line naming the folder, what it holds and what to do, before anything is
written. An output folder that is, contains or lies inside a data folder is refused too: outputs would be mixed
into the data, and samples/ would be read back as training images by the next run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdtune.errors import ConfigError
from sdtune.run_folder import EMBEDDINGS_DIR
from sdtune.writable import check_writable, replace_problem, unwritable

# What sdtune writes into a run folder: `sdtune train` (embeddings/: a learned token's file), personalize per
# subject, `sdtune export` (export/) and `sdtune pick` (picked/, and pick/ for its report by default). A run that
# was picked, or learned a token, must stay a run folder that `--resume latest` continues.
RUN_ENTRIES = frozenset({"config.yaml", "README.md", "metrics.json", "checkpoints", "lora", "model", "samples",
                         "logs", "stack", "export", "train.log", "subject.json", "buckets.json",
                         "adapters.json", EMBEDDINGS_DIR, "picked", "pick"})
_RUN_FILES_NEEDING_CONFIG = ("README.md", "metrics.json")  # a user's files of these names, without a run config

# Files that tell what another kind of folder is, for the refusal's wording.
_KINDS = (
    ("metadata.jsonl", "a dataset folder (metadata.jsonl)"),
    ("manifest.json", "a recipe output folder (`sdtune run`; manifest.json)"),
    ("summary.csv", "a personalize output folder (summary.csv)"),
    ("model_index.json", "a diffusers model folder (model_index.json)"),
)


def _visible(folder: Path) -> list[str]:
    """Entry names, hidden ones (sdtune's own temporary .name.tmp files, .DS_Store) left out."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _is_run_config(path: Path) -> bool:
    """A YAML mapping of run-config sections with ``data:``: what ``sdtune train`` writes (old versions too)."""
    from sdtune import typed_yaml
    from sdtune.config import RunConfig

    try:
        data = typed_yaml.load(path.read_text(encoding="utf-8-sig"), RunConfig)
    except (OSError, UnicodeDecodeError, typed_yaml.YamlError):
        return False
    return isinstance(data, dict) and "data" in data and set(data) <= set(RunConfig.model_fields)


def _what_it_is(folder: Path, names: list[str]) -> str:
    for marker, kind in _KINDS:
        if marker in names:
            return kind
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"not an sdtune run folder (it holds {shown})"


def _absolute(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def data_folders(cfg: Any) -> list[tuple[str, Path]]:
    """``(key, folder)`` of every data folder a RunConfig reads (train, instance, class, subset folders); the class
    folder only with prior preservation (a config may name one it does not use: the shipped DreamBooth configs)."""
    data = cfg.data
    keys = ("train_dir", "instance_dir", *(("class_dir",) if data.with_prior_preservation else ()))
    found = [(key, getattr(data, key)) for key in keys]
    found += [(f"data.subsets.{i}.path", sub.path) for i, sub in enumerate(data.subsets)]
    return [(key if key.startswith("data.") else f"data.{key}", Path(p)) for key, p in found if p is not None]


def check_not_data(output: Path, data: Iterable[tuple[str, Path]], key: str = "output_dir") -> None:
    """Refuse an output folder that is, contains or is inside one of the data folders."""
    out = _absolute(output)
    for data_key, folder in data:
        d = _absolute(folder)
        if out == d:
            why = f"{key} {out} is the training data folder itself ({data_key})"
        elif d in out.parents:
            why = (f"{key} {out} is inside the training data folder {d} ({data_key}): its samples/ would be read "
                   "back as training images")
        elif out in d.parents:
            why = (f"{key} {out} contains the training data folder {d} ({data_key}): outputs would be written "
                   "among the data")
        else:
            continue
        raise ConfigError(f"{why}. Put outputs in a folder of their own, outside the data, e.g. "
                          f"{key}={d.parent / 'runs' / 'me'}")


def check_run_folder(output: Path, key: str = "output_dir") -> None:
    """Refuse ``output`` unless it is missing, empty or an sdtune run folder (see the module docstring)."""
    out = _absolute(output)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{key} {out} is a file, not a folder: choose a new folder for the run's outputs")
    names = _visible(out)
    if not names:
        return
    foreign = [n for n in names if n not in RUN_ENTRIES]
    has_config = "config.yaml" in names and _is_run_config(out / "config.yaml")
    bad_config = "config.yaml" in names and not has_config
    loose = not has_config and any(n in names for n in _RUN_FILES_NEEDING_CONFIG)
    if not foreign and not bad_config and not loose:
        return
    kind = _what_it_is(out, foreign or names)
    raise ConfigError(f"{key} {out} is not empty and is {kind}: `sdtune train` would write config.yaml, README.md, "
                      "metrics.json, checkpoints/, lora/, samples/ there, over files of the same name. Choose a new "
                      f"or empty folder, e.g. {key}={out / 'runs' / 'me'} or a folder beside it"
                      if kind.startswith("not an sdtune") else
                      f"{key} {out} is {kind}, not a run folder: choose a new or empty folder for the run, e.g. "
                      f"{key}={out.parent / 'runs' / 'me'}")


def check_run_output(cfg: Any) -> None:
    """Everything ``sdtune train`` checks about a RunConfig's ``output_dir`` before writing anything: not the data,
    new, empty or a run folder, and writable (its checkpoints/, samples/, logs/ included)."""
    check_not_data(cfg.output_dir, data_folders(cfg))
    check_run_folder(cfg.output_dir)
    check_writable(cfg.output_dir, "output_dir")
    out = _absolute(cfg.output_dir)
    written = ["checkpoints", "lora", "model", *(["samples"] if cfg.validation.prompts else []),
               *(["logs"] if cfg.logging.trackers else [])]
    for name in ("config.yaml", "README.md", "metrics.json", "buckets.json"):  # replaced by a continued run
        if problem := replace_problem(out / name):
            raise ConfigError(unwritable(out / name, "output_dir", problem, "a continued run replaces it; clear its "
                                         "attributes (chattr -i) or choose another output_dir"))
    for name in written:  # a run continued: the folders of it that this run writes into
        if (out / name).is_dir():
            check_writable(out / name, "output_dir", f"a continued run writes into {name}/; fix its permissions or "
                           "choose another output_dir")


def check_group_folder(output: Path, own: Iterable[str], configs: Iterable[Any], kind: str, marker: str, key: str,
                       command: str, layout: str) -> None:
    """A folder of runs (a recipe's OUTPUT, personalize's OUT): missing, empty, already one (``marker`` in it),
    or holding only what this command puts there (``own``: stage or subject folders, class images...) and the
    data folders its run ``configs`` read from inside it; and writable (:func:`sdtune.writable.check_writable`).
    ``layout``: what the command writes there, in the refusal's words ("one run folder per stage")."""
    _check_group_contents(output, own, configs, kind, marker, key, command, layout)
    check_writable(output, key)


def _check_group_contents(output: Path, own: Iterable[str], configs: Iterable[Any], kind: str, marker: str, key: str,
                          command: str, layout: str) -> None:
    out = _absolute(output)
    own = set(own)
    for cfg in configs:
        for _, folder in data_folders(cfg):
            folder = _absolute(folder)
            if out in folder.parents:
                own.add(folder.relative_to(out).parts[0])
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{key} {out} is a file, not a folder: choose a new folder for the {kind}")
    names = _visible(out)
    if not names or marker in names:
        return
    foreign = [n for n in names if n not in own]
    if not foreign:
        return
    raise ConfigError(f"{key} {out} is not empty and is {_what_it_is(out, foreign)}: `{command}` writes a {kind} "
                      f"there ({layout}, {marker}). Choose a new or empty folder")
