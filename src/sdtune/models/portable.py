"""Save diffusers folders that load on the stacks users have, not only on ours.

transformers 5 saves a CLIP text encoder's weights without the ``text_model.`` prefix (its module tree changed).
transformers 4 — still what diffusers 0.35 users, most ComfyUI/AUTOMATIC1111 converters and many notebooks run —
loads such a file as a text encoder with RANDOM weights and only a warning (measured: transformers 4.57.6). Every
pipeline folder sdtune writes therefore goes through :func:`save_pipeline`, which stores text-encoder weights under
the transformers-4 names that every hub checkpoint uses; transformers 5 maps them back when loading.

The tokenizer has the same problem: transformers 5 writes only ``tokenizer.json``, while transformers 4's
``CLIPTokenizer`` (the class a pipeline's ``model_index.json`` names) needs ``vocab.json`` and ``merges.txt`` and
otherwise fails to load the pipeline. Both are written from ``tokenizer.json``'s BPE model when missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from sdtune.atomic import umask_mode
from sdtune.models.safetensors_files import WRITTEN_FIX, open_safetensors

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
TOKENIZERS = ("tokenizer", "tokenizer_2")
CLIP_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")
# Top-level modules of transformers 5's CLIP text model that live under ``text_model.`` in transformers 4.
_TEXT_MODEL_PARTS = ("embeddings.", "encoder.", "final_layer_norm.")
INDEX = "model.safetensors.index.json"


def portable_key(key: str) -> str:
    """``encoder.layers.0...`` -> ``text_model.encoder.layers.0...``; other keys (``text_projection``) unchanged."""
    return f"text_model.{key}" if key.startswith(_TEXT_MODEL_PARTS) else key


def portable_text_encoder(folder: Path) -> bool:
    """Rewrite a saved CLIP text encoder's safetensors (single or sharded) to transformers-4 key names, in place.

    Returns False (and changes nothing) for a folder that is not a CLIP text encoder. Each file is written under a
    temporary name and renamed, so an interruption leaves the old, loadable file."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return False
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if not set(config.get("architectures") or ()) & set(CLIP_ARCHITECTURES):
        return False
    for file in sorted(folder.glob("*.safetensors")):
        with open_safetensors(file, fix=WRITTEN_FIX) as handle:
            metadata = handle.metadata() or {"format": "pt"}
            tensors = {portable_key(k): handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - not a dict
        tmp = file.with_name(f".{file.name}.tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        umask_mode(tmp)  # save_file makes 0600 files
        tmp.replace(file)
    index = folder / INDEX
    if index.is_file():
        data: dict[str, Any] = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {portable_key(k): v for k, v in data.get("weight_map", {}).items()}
        index.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return True


def portable_tokenizer(folder: Path) -> bool:
    """Write ``vocab.json`` + ``merges.txt`` beside a BPE ``tokenizer.json`` that lacks them; False if nothing to do."""
    source = folder / "tokenizer.json"
    if not source.is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return False
    model = json.loads(source.read_text(encoding="utf-8")).get("model") or {}
    if model.get("type") != "BPE":
        return False
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]  # tokenizers writes pairs
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
    return True


def save_pipeline(pipe: Any, folder: Path) -> Path:
    """``pipe.save_pretrained(folder)`` in safetensors, with text encoders and tokenizers in portable form."""
    folder = Path(folder)
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in TEXT_ENCODERS:
        if (folder / name).is_dir():
            portable_text_encoder(folder / name)
    for name in TOKENIZERS:
        if (folder / name).is_dir():
            portable_tokenizer(folder / name)
    return folder
