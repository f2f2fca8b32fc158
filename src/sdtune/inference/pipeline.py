"""Load a model for inference: a base model, a run folder (LoRA, full or textual inversion), or either with a stack
of adapters.

A run folder is what ``sdtune train`` writes (``RUN/config.yaml``, ``RUN/lora/``, ``RUN/model/``), read by
``sdtune.run_folder``. Users should not have to remember which base a LoRA was trained on, so a run folder is
enough: its config names the base. The same module fingerprints a model (``model_fingerprint``) so that
generations can be cached and re-used safely.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any

from sdtune.errors import ModelLoadError, SdtuneError
from sdtune.models.fit import diffusers_quiet, loader_error
from sdtune.models.loading import family_of_pipeline, load_pipeline, resolve_model_ref, set_prediction_type
from sdtune.models.safetensors_files import reading_safetensors
from sdtune.run_folder import (  # the run folder is read in sdtune.run_folder (also imported from here)
    LORA_WEIGHTS_NAME,
    PICKLE_SUFFIXES,
    Adapter,
    is_run_folder,
    read_run,
    resolve_adapter_file,
)

WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:WEIGHT`` (``--lora``), e.g. ``runs/me:0.8``.

    The text after the last ``:`` is the weight unless it is part of a path: it holds a ``/`` or ``\\``
    (``C:/loras/x.safetensors``), or the whole spec is an existing file or folder (``runs/me:v2``). A weight that is
    not a finite number is an error naming it, not a LoRA "that does not exist".
    """
    import math

    head, sep, tail = spec.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail:
        return spec, 1.0
    try:
        weight = float(tail)
    except ValueError:
        weight = math.nan
    if math.isfinite(weight):
        return head, weight
    if Path(spec).expanduser().exists():
        return spec, 1.0
    raise SdtuneError(f"--lora {spec}: weight {tail!r} is not a number (PATH:WEIGHT, e.g. {head}:0.8)")


def base_of(ref: str) -> str | None:
    """The base a model was fine-tuned from (for forgetting), or None when ``ref`` is not a run folder."""
    return read_run(ref).base if is_run_folder(ref) else None


def _adapter_name(name: str, taken: set[str]) -> str:
    clean = re.sub(r"[^0-9A-Za-z_]", "_", name) or "adapter"
    out, i = clean, 1
    while out in taken:
        i += 1
        out = f"{clean}_{i}"
    taken.add(out)
    return out


def load_for_inference(ref: str, adapters: list[tuple[str, float]] | None = None, *, allow_pickle: bool = False,
                       device: str | None = None, torch_dtype: Any = None):
    """Load a ``StableDiffusionPipeline`` ready to generate.

    ``ref`` is a base model (preset, folder, .safetensors, hub id) or a run folder. For a run folder ``RUN/model``
    is preferred when present (it is the complete fine-tuned model); otherwise the run's base is loaded, then
    the adapters listed in ``RUN/adapters.json``, then the run's own LoRA. ``adapters`` are further LoRAs
    (run folders or files) applied on top with the given weights. A run's ``model.prediction_type`` replaces the
    scheduler's (its base's), also for an older ``RUN/model`` saved with the base's scheduler.
    """
    from sdtune.models.fit import check_lora_fits
    from sdtune.run_status import require_finished, run_progress

    stack: list[Adapter] = []
    if is_run_folder(ref):
        require_finished(ref)  # a run resumed past its outputs and stopped: say so, never use them silently
        run = read_run(ref)
        allow_pickle = allow_pickle or run.allow_pickle
        if run.model_dir is not None:
            pipe = load_pipeline(str(run.model_dir), allow_pickle=allow_pickle)
        elif run.lora_file is not None or run.stack or run.embedding_file is not None or run.lycoris_file:
            pipe = load_pipeline(run.base, allow_pickle=allow_pickle, revision=run.revision, variant=run.variant)
            stack += run.stack
            if run.lora_file is not None:
                stack.append(Adapter(run.lora_file, 1.0, "run"))
            if run.lycoris_file is not None:  # LoHa / LoKr: no diffusers loader; merged as ComfyUI merges it
                from sdtune.models.lycoris import merge_comfyui

                merge_comfyui(pipe.unet, family_of_pipeline(pipe).text_of(pipe)[1], run.lycoris_file)
        else:
            progress = run_progress(ref)
            what = f"embeddings/{run.token}.safetensors" if run.token else f"model/ nor lora/{LORA_WEIGHTS_NAME}"
            raise ModelLoadError(
                f"{run.path} has no weights yet ({'no' if run.token else 'neither'} {what}): "
                + (progress.unfinished_line(ref) if progress.trained else "it was never trained")
            )
        set_prediction_type(pipe, run.prediction_type)
        if run.embedding_file is not None:  # its token, loaded as users load it
            from sdtune.models.embeddings import load_into_pipeline

            load_into_pipeline(pipe, run.embedding_file, run.token)
    else:
        pipe = load_pipeline(ref, allow_pickle=allow_pickle)
    for i, (path, weight) in enumerate(adapters or []):
        stack.append(Adapter(resolve_adapter_file(path, allow_pickle), weight, f"extra{i}_{Path(path).stem}"))
    base = run.base if is_run_folder(ref) else ref  # a full fine-tune has its base's shapes
    shown = [None] * (len(stack) - len(adapters or [])) + [str(path) for path, _ in adapters or []]
    for adapter, name in zip(stack, shown, strict=True):
        check_lora_fits(adapter.path, pipe, base, name=name)  # one line, not peft's kilobytes of mismatches
    apply_adapters(pipe, stack)
    if torch_dtype is not None and torch_dtype != pipe.unet.dtype:
        pipe.to(dtype=torch_dtype)  # after loading, so LoRA weights are cast along with the rest
    if device:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # callers show one bar over all images instead
    return pipe


def apply_adapters(pipe: Any, stack: list[Adapter]) -> list[str]:
    """Load each LoRA under its own adapter name and activate them all with their weights."""
    if not stack:
        return []
    names: list[str] = []
    taken: set[str] = set()
    for adapter in stack:
        name = _adapter_name(adapter.name, taken)
        try:
            # a misfit is said below in one line, not per layer; a damaged file as one DamagedFileError line
            with warnings.catch_warnings(), diffusers_quiet(), reading_safetensors(adapter.path):
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")  # a stack is what we want
                pipe.load_lora_weights(str(adapter.path.parent), weight_name=adapter.path.name, adapter_name=name)
        except (ValueError, RuntimeError, KeyError, IndexError, OSError) as exc:
            raise ModelLoadError(f"cannot apply LoRA {adapter.path}: {loader_error(exc)}. Was it trained on this "
                                 "base model?") from None
        names.append(name)
    pipe.set_adapters(names, [a.weight for a in stack])
    return names


# --- fingerprints: what makes two generations the same --------------------------------------------------------

_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """Content hash of a (small) adapter file, memoised by path, size and mtime."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_MEMO:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASH_MEMO[key] = h.hexdigest()
    return _HASH_MEMO[key]


def _folder_stat(folder: Path) -> list[tuple[str, int, int]]:
    """Size and mtime of a model folder's weights and configs (hashing gigabytes of weights would be too slow)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (*WEIGHT_SUFFIXES, ".json", ".txt")]
    return [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _base_fingerprint(ref: str, revision: str | None = None, variant: str | None = None) -> dict[str, Any]:
    try:
        source = resolve_model_ref(ref)
    except ModelLoadError:
        source = ref
    path = Path(source)
    if path.is_dir():
        return {"folder": str(path.resolve()), "files": _folder_stat(path)}
    if path.is_file():
        st = path.stat()
        return {"file": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    return {"hub": ref, "revision": revision, "variant": variant}


def model_fingerprint(ref: str, adapters: list[tuple[str, float]] | None = None) -> dict[str, Any]:
    """Everything that decides the weights ``load_for_inference(ref, adapters)`` would produce."""
    fp: dict[str, Any]
    if is_run_folder(ref):
        run = read_run(ref)
        fp = {"run": True}  # not its path: a copied or moved LoRA run with the same weights makes the same images
        if run.model_dir is not None:
            fp["model"] = _base_fingerprint(str(run.model_dir))
        else:
            fp["base"] = _base_fingerprint(run.base, run.revision, run.variant)
            fp["stack"] = [(file_sha256(a.path), a.weight) for a in run.stack]
            fp["lora"] = file_sha256(run.lora_file) if run.lora_file else None
        if run.embedding_file is not None:  # only when there is one, as prediction_type below
            fp["embedding"] = (run.token, file_sha256(run.embedding_file))
        if run.prediction_type:  # only when set, so fingerprints of runs without it stay what they were
            fp["prediction_type"] = run.prediction_type
    else:
        fp = {"base": _base_fingerprint(ref)}
    if adapters:
        fp["adapters"] = [(file_sha256(resolve_adapter_file(p, allow_pickle=True)), w) for p, w in adapters]
    return fp


def fingerprint_digest(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()

