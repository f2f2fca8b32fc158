"""The New-training form: ready configs, the few keys people change, and the config built from them.

Everything a request says becomes ``key=value`` overrides of a ready config and goes through the run schema
(``sdtune.config``), exactly as ``sdtune train CONFIG key=value`` does; the schema's own message per key comes back
beside the field. Paths a request may name (datasets, adapters, a local base model) must lie inside the workspace;
the run folder is always ``WS/runs/<name>``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sdtune.errors import ConfigError, SdtuneError
from sdtune.jobs.workspace import OutsideWorkspace, inside

# The keys the form shows (the rest: "advanced", every key of `sdtune config-keys`).
FORM_KEYS = ("train.max_steps", "train.lora.rank", "train.learning_rate", "data.resolution", "validation.prompts",
             "data.instance_prompt")

# Built-in ready configs that train on this CPU in minutes (the toy model ships with sdtune).
BUILTIN: dict[str, dict[str, Any]] = {
    "toy-dreambooth-lora": {
        "description": "DreamBooth LoRA on the built-in toy model (CPU, about a minute): photos of one subject, "
                       "one fixed prompt",
        "config": {
            "model": {"base": "toy"},
            "data": {"instance_prompt": "a photo of sks person", "resolution": 32, "check": False},
            "train": {"max_steps": 40, "learning_rate": 1e-3, "batch_size": 2, "lr_scheduler": "constant",
                      "lora": {"rank": 4, "alpha": 4}},
            "checkpoint": {"every": 10, "keep": 2},
            "validation": {"prompts": ["a photo of sks person"], "every": 10, "steps": 10},
            "logging": {"trackers": []},
        },
    },
    "toy-t2i-lora": {
        "description": "Text-to-image LoRA on the toy model: captioned images (caption them on the Datasets page)",
        "config": {
            "model": {"base": "toy"},
            "data": {"resolution": 32, "check": False},
            "train": {"max_steps": 40, "learning_rate": 1e-3, "batch_size": 2, "lr_scheduler": "constant",
                      "lora": {"rank": 4, "alpha": 4}},
            "checkpoint": {"every": 10, "keep": 2},
            "validation": {"prompts": ["a photo of sks person"], "every": 10, "steps": 10},
            "logging": {"trackers": []},
        },
    },
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def repo_configs() -> Path | None:
    """The ready YAML configs beside the package (a source checkout); None in an installed wheel."""
    folder = Path(__file__).resolve().parents[3] / "configs"
    return folder if folder.is_dir() else None


def ready_configs() -> dict[str, dict[str, Any]]:
    """Name -> {description, config}: the built-in toy ones, then configs/*.yaml (without recipes)."""
    from sdtune.config import read_yaml

    found = {name: dict(entry) for name, entry in BUILTIN.items()}
    folder = repo_configs()
    for path in sorted(folder.glob("*.yaml")) if folder else []:
        try:
            data = read_yaml(path)
        except ConfigError:
            continue
        if "stages" in data or "model" not in data:
            continue  # a recipe, not a run config
        first = next((line[1:].strip() for line in path.read_text(encoding="utf-8").splitlines()
                      if line.startswith("#")), "")
        data.pop("output_dir", None)
        found[path.stem] = {"description": first, "config": data}
    return found


def bases() -> list[str]:
    """Base models the form offers: the built-in ones, then the hub ids the ready configs use."""
    names = ["toy", "tiny"]
    for entry in ready_configs().values():
        base = entry["config"].get("model", {}).get("base")
        if isinstance(base, str) and base not in names:
            names.append(base)
    return names


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings stay strings ("no"), lists stay lists


def _check_paths(workspace: Path, cfg) -> None:
    """Every path of the config inside the workspace; the base model and VAE a preset, a hub id or a workspace path.

    Paths are found by walking the config (every ``Path`` value, at any depth, in lists too), so a path key the
    schema gains later is confined without a change here.
    """
    from pydantic import BaseModel

    from sdtune.models.presets import is_preset

    for key in ("base", "vae"):
        value = getattr(cfg.model, key)
        if value is None or (key == "base" and is_preset(str(value))):
            continue
        if not (HUB_ID.match(str(value)) and not (workspace / str(value)).exists()):
            _inside(workspace, value, f"model.{key}")

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Path):
            _inside(workspace, node, key)
        elif isinstance(node, BaseModel):
            for name in type(node).model_fields:
                walk(getattr(node, name), f"{key}.{name}" if key else name)
        elif isinstance(node, list | tuple):
            for i, item in enumerate(node):
                walk(item, f"{key}.{i}")

    walk(cfg, "")


def _inside(workspace: Path, value: Any, key: str) -> None:
    path = Path(str(value))
    try:
        relative = path.relative_to(workspace) if path.is_absolute() else path
    except ValueError:
        raise OutsideWorkspace(f"{key}: {value} is outside the workspace; name a folder inside it") from None
    inside(workspace, relative.as_posix(), key)


class FormErrors(SdtuneError):
    """The form's values do not make a valid config: ``fields`` maps a key to the schema's message for it."""

    def __init__(self, message: str, fields: dict[str, str]):
        super().__init__(message)
        self.fields = fields


def build_config(workspace: Path, ready: str, dataset: str | None, base: str | None, values: dict[str, Any],
                 name: str) -> tuple[Path, list[str]]:
    """Write the form's config to ``WS/jobs/forms/<name>.yaml``; return it and the overrides, or raise FormErrors."""
    from sdtune import typed_yaml
    from sdtune.config import RunConfig, apply_overrides, config_from_dict, resolve_config

    entries = ready_configs()
    if ready not in entries:
        raise FormErrors(f"unknown ready config {ready!r}", {"ready": f"one of {', '.join(entries)}"})
    data = json.loads(json.dumps(entries[ready]["config"]))
    overrides: list[str] = []
    if base:
        overrides.append(_override("model.base", base))
    if dataset:
        folder = inside(workspace, dataset, "dataset")
        if not folder.is_dir():
            raise FormErrors(f"no dataset folder {dataset} in the workspace", {"dataset": "no such folder"})
        key = "data.train_dir" if ready.endswith(("t2i-lora", "t2i-full")) or "t2i" in ready else "data.instance_dir"
        overrides.append(_override(key, str(folder)))
    for key, value in values.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][\w.]*$", key) or key == "output_dir":
            raise FormErrors(f"key {key!r} cannot be set here", {str(key): "not a settable key"})
        if value is None or value == "":
            continue
        overrides.append(_override(key, value))
    fields: dict[str, str] = {}
    try:
        data = apply_overrides(data, overrides)
        data["output_dir"] = str(workspace / "runs" / name)
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            fields[key] = err["msg"]
        raise FormErrors(config_from_error(exc, overrides), fields) from None
    except ConfigError as exc:
        text = str(exc)
        key = next((o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in text), "advanced")
        raise FormErrors(text, {key: text}) from None
    try:
        config_from_dict(data, overrides=overrides)
        cfg = resolve_config(cfg, workspace)
        _check_paths(workspace, cfg)
    except OutsideWorkspace as exc:
        raise FormErrors(str(exc), {str(exc).split(" ", 1)[0].rstrip(":"): str(exc)}) from None
    folder = workspace / "jobs" / "forms"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(typed_yaml.dump(cfg.model_dump(mode="json")), encoding="utf-8")
    return path, overrides


def config_from_error(exc: ValidationError, overrides: list[str]) -> str:
    from sdtune.config import format_validation_error

    return format_validation_error(exc, "in the form", overrides)
