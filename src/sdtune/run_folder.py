"""The one reader of a run folder: what ``sdtune train`` left behind, low in the layers so every layer can read it.

A run folder (``RUN/``) holds ``config.yaml`` (the run config, read with the config's own YAML rules), the outputs
``lora/pytorch_lora_weights.safetensors``, ``model/`` (a full diffusers pipeline), ``embeddings/<token>.safetensors``
(textual inversion), ``adapters.json`` (LoRAs applied below its own: two-stage recipes), ``metrics.json`` and
``checkpoints/step-NNNNNN/``. Inference, models (fit checks, extraction, verification), recipes, evaluation and
the commands all read a run through this module, so a layout change is made here once. It imports only the
config and base modules; the names of the files and folders above are defined here and nowhere else.

Errors: :func:`read_run` raises :class:`~sdtune.errors.ModelLoadError` (one line naming the file) for an unreadable
config, a missing adapter or a pickle weights file that is not allowed; :func:`read_run_config` raises
:class:`~sdtune.errors.SdtuneError`. The small readers (:func:`read_metrics`, :func:`list_checkpoints`) never raise
for a missing or odd file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.errors import ModelLoadError, SdtuneError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINTS_DIR = "checkpoints"
LORA_DIR = "lora"
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default weight_name
LYCORIS_NAME = "lycoris.safetensors"  # DoRA / LoHa / LoKr runs: the kohya/LyCORIS file (sdtune.models.lycoris)
MODEL_DIR = "model"
EMBEDDINGS_DIR = "embeddings"
ADAPTERS_FILE = "adapters.json"  # a stack of adapters a run needs below its own LoRA (two-stage recipes)
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
STEP_DIR = re.compile(r"^step-(\d{6,})$")  # RUN/checkpoints/step-000300
STATE_FILE = "state.json"  # written last into a checkpoint: a folder without it is incomplete
PROGRESS_FILE = "logs/progress.jsonl"  # one JSON line per optimizer step (training.progress_log), for watchers
SAMPLES_DIR = "samples"  # RUN/samples/step-000300/*.png: validation images
EXPORT_DIR = "export"  # RUN/export/*.safetensors: kohya files (sdtune export, sdtune pick)
CARD_FILE = "README.md"  # the model card


@dataclass
class Adapter:
    """One LoRA to apply: a weights file and the strength to apply it with."""

    path: Path  # the .safetensors file
    weight: float = 1.0
    name: str = "adapter"


@dataclass
class RunFolder:
    """What a training run left behind, read from its folder."""

    path: Path
    base: str
    allow_pickle: bool = False
    revision: str | None = None
    variant: str | None = None
    prediction_type: str | None = None  # model.prediction_type: the objective trained, when not the base's own
    model_dir: Path | None = None  # full pipeline (full fine-tune, or saved on request)
    lora_file: Path | None = None
    lycoris_file: Path | None = None  # LoHa / LoKr (no diffusers-format file): RUN/lora/lycoris.safetensors
    stack: list[Adapter] = field(default_factory=list)  # from RUN/adapters.json, applied below the run's LoRA
    embedding_file: Path | None = None  # textual inversion: RUN/embeddings/<token>.safetensors
    token: str | None = None  # its token (train.textual_inversion.token)
    config: dict[str, Any] = field(default_factory=dict)  # the whole config.yaml, as read (not validated)

    @property
    def trains_lora(self) -> bool:
        """``train.lora`` is set: the run trains a LoRA (not a full fine-tune, not textual inversion)."""
        return (self.config.get("train") or {}).get("lora") is not None

    @property
    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.path / CHECKPOINTS_DIR)


# --- small readers ---------------------------------------------------------------------------------------------


def is_run_folder(ref: str | Path) -> bool:
    return (Path(ref).expanduser() / CONFIG_FILE).is_file()


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None when missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN/metrics.json`` (written when a run finishes or stops), None when there is none."""
    return read_json(Path(run_dir) / METRICS_FILE)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``RUN/config.yaml`` as a dict, read the way the config reader reads it (``revision: 1.0`` is "1.0")."""
    from sdtune import typed_yaml
    from sdtune.config import RunConfig

    path = Path(run_dir) / CONFIG_FILE
    try:
        data = typed_yaml.load(path.read_text(encoding="utf-8-sig"), RunConfig) or {}
    except (OSError, typed_yaml.YamlError) as exc:
        raise SdtuneError(f"{path}: cannot read the run's config ({exc})") from None
    return data if isinstance(data, dict) else {}


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(path: Path) -> int:
    match = STEP_DIR.match(path.name)
    if match is None:
        raise SdtuneError(f"{path} is not named like a checkpoint (step-000123)")
    return int(match.group(1))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints directly in ``root`` (``RUN/checkpoints``), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def has_checkpoints(run_dir: str | Path) -> bool:
    return bool(list_checkpoints(Path(run_dir) / CHECKPOINTS_DIR))


def embedding_file_name(token: str) -> str:
    """``<token>.safetensors`` with characters no file name takes replaced (AUTOMATIC1111 names the embedding after
    its file, so the prompt word stays the token)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in token).strip(".") or "embedding"
    return f"{safe}.safetensors"


def check_weights_file(path: Path, allow_pickle: bool) -> None:
    """Refuse a file that is no weights file by its name (an image passed as a model), and a pickle-format one
    unless explicitly allowed."""
    if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
        pickles = ", ".join(PICKLE_SUFFIXES)
        raise ModelLoadError(f"{path} is not a weights file (.safetensors, or a pickle-format {pickles}): pass a "
                             "diffusers folder, a run folder or a .safetensors file")
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickle-format file, which can run arbitrary code when loaded. Convert it to "
            "safetensors, or if you trust its source set model.allow_pickle=true."
        )


# Key fragments only adapters and embeddings hold: LoRA (diffusers/peft "lora_A", "lora.down"; kohya "lora_unet_"),
# LyCORIS (LoHa "hada_", LoKr "lokr_") and textual-inversion files ("emb_params", SDXL's "clip_l"/"clip_g" alone)
_ADAPTER_KEY_PARTS = ("lora", "hada_", "lokr_")
_EMBEDDING_KEYS = frozenset({"emb_params", "clip_l", "clip_g", "string_to_param"})


def refuse_adapter_as_model(path: Path) -> None:
    """A LoRA or embedding file passed where a model checkpoint goes is one line saying what it is and where it
    goes: from_single_file would otherwise look for a config on the hub and report a network error. Reads the
    safetensors header only; a file it cannot read is left to the loader's own error."""
    if path.suffix.lower() != ".safetensors":
        return
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            keys = list(fh.keys())
    except Exception:  # noqa: BLE001 - damaged files are reported where they are loaded
        return
    if keys and set(keys) <= _EMBEDDING_KEYS:
        raise ModelLoadError(f"{path} is a textual-inversion embedding, not a model: pass the run folder that made it "
                             "(its token loads with it), or put the file in your UI's embeddings folder")
    if any(part in key.lower() for key in keys[:200] for part in _ADAPTER_KEY_PARTS):
        raise ModelLoadError(f"{path} is a LoRA, not a model: pass the run folder that made it, or its base model "
                             f"with the LoRA (sdtune generate BASE --lora {path})")


def resolve_adapter_file(path: str | Path, allow_pickle: bool = False) -> Path:
    """Find the LoRA weights file behind a run folder, a LoRA folder, or a weights file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"LoRA {path} does not exist: pass a run folder, a LoRA folder or a .safetensors file")
    candidates = [p, p / LORA_DIR / LORA_WEIGHTS_NAME, p / LORA_WEIGHTS_NAME]
    if p.is_dir():
        candidates += sorted(p.glob("*.safetensors"))
    for c in candidates:
        if c.is_file():
            check_weights_file(c, allow_pickle)
            return c.resolve()
    raise ModelLoadError(
        f"no LoRA weights at {p}: pass a run folder (with {LORA_DIR}/{LORA_WEIGHTS_NAME}), a LoRA folder, or a "
        ".safetensors file"
    )


# --- the whole run ---------------------------------------------------------------------------------------------


def read_run(folder: str | Path) -> RunFolder:
    """Read a run folder: its config (the model section decides how to load it) and which weights it has."""
    path = Path(folder).expanduser().resolve()
    try:
        cfg = read_run_config(path)
    except SdtuneError as exc:
        raise ModelLoadError(str(exc)) from None
    model = cfg.get("model") or {}
    base = str(model.get("base") or "tiny")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute() and (path / base_path).exists():
        base = str((path / base_path).resolve())
    run = RunFolder(path=path, base=base, allow_pickle=bool(model.get("allow_pickle", False)),
                    revision=model.get("revision"), variant=model.get("variant"),
                    prediction_type=model.get("prediction_type"), config=cfg)
    if (path / MODEL_DIR / "model_index.json").is_file():
        run.model_dir = path / MODEL_DIR
    lora = path / LORA_DIR / LORA_WEIGHTS_NAME
    if lora.is_file():
        run.lora_file = lora
    elif (path / LORA_DIR / LYCORIS_NAME).is_file():
        run.lycoris_file = path / LORA_DIR / LYCORIS_NAME
    learned = (cfg.get("train") or {}).get("textual_inversion") or {}
    if learned.get("token"):
        run.token = str(learned["token"])
        embedding = path / EMBEDDINGS_DIR / embedding_file_name(run.token)
        run.embedding_file = embedding if embedding.is_file() else None
    for i, entry in enumerate(model.get("adapters") or []):  # LoRAs it trained on unfused (model.adapters)
        raw = Path(str(entry["path"])).expanduser()
        run.stack.append(Adapter(path=resolve_adapter_file(raw if raw.is_absolute() else path / raw, run.allow_pickle),
                                 weight=float(entry.get("weight", 1.0)), name=str(entry.get("name") or f"frozen{i}")))
    if (path / ADAPTERS_FILE).is_file():
        run.stack += _read_stack(path / ADAPTERS_FILE, run.allow_pickle)
    return run


def _read_stack(file: Path, allow_pickle: bool) -> list[Adapter]:
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{file}: cannot read adapter stack ({exc})") from None
    if isinstance(entries, dict):
        entries = entries.get("adapters", [])
    stack = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ModelLoadError(f"{file}: entry {i} needs at least a 'path' (and optional 'name', 'weight')")
        raw = Path(str(entry["path"])).expanduser()
        raw = raw if raw.is_absolute() else (file.parent / raw)
        stack.append(Adapter(path=resolve_adapter_file(raw, allow_pickle), weight=float(entry.get("weight", 1.0)),
                             name=str(entry.get("name") or f"stack{i}")))
    return stack


def progress_row(line: str) -> dict[str, Any] | None:
    """One line of ``RUN/logs/progress.jsonl`` as its dict, or None for a line that is no step's (one being
    written, or cut short by a crash)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step"), int) else None


def read_progress(run_dir: str | Path, max_points: int = 2000) -> list[dict[str, Any]]:
    """``RUN/logs/progress.jsonl`` ordered by step, the last line of each step winning (the trainer cuts the file
    back to its starting step, ``sdtune.training.progress_log``; a log of an older sdtune repeats a resumed run's
    steps); unreadable lines skipped; thinned evenly to ``max_points`` (last kept)."""
    try:
        text = (Path(run_dir) / PROGRESS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if (row := progress_row(line)) is not None:
            by_step[row["step"]] = row
    rows = [by_step[s] for s in sorted(by_step)]
    if len(rows) > max_points > 1:
        stride = len(rows) / max_points
        rows = [rows[int(i * stride)] for i in range(max_points - 1)] + [rows[-1]]
    return rows


def list_samples(run_dir: str | Path, limit: int = 24) -> list[str]:
    """Validation images, newest step first, relative to the run folder (``samples/step-000004/0.png``)."""
    root = Path(run_dir) / SAMPLES_DIR
    if not root.is_dir():
        return []
    found: list[str] = []
    for step_dir in sorted((p for p in root.iterdir() if p.is_dir()), reverse=True):
        for image in sorted(step_dir.iterdir()):
            if image.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") and image.is_file():
                found.append(image.relative_to(run_dir).as_posix())
                if len(found) >= limit:
                    return found
    return found


def last_progress(run_dir: str | Path, lines: int = 20) -> list[dict[str, Any]]:
    """The last ``lines`` steps of ``RUN/logs/progress.jsonl``, read from its end (cheap on a long run's log)."""
    path = Path(run_dir) / PROGRESS_FILE
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            start = max(0, fh.tell() - max(4096, 256 * lines))  # a line is ~100-250 bytes
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    found = text.splitlines()
    if start > 0:
        found = found[1:]  # the seek may have landed inside a line
    rows: list[dict[str, Any]] = []
    for line in reversed(found):
        if (row := progress_row(line)) is not None:
            rows.append(row)
            if len(rows) == lines:
                break
    return rows[::-1]
