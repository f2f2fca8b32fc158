"""What a model reference names, before anything loads: a path (which must exist) or a hub id, and whether the hub can
give it (cached, or reachable: every hub load passes ``local_files_only=not hub_reachable()``).

Shared by the base model's loader (``sdtune.models.loading``) and the VAE's (``sdtune.models.vae``); messages name
the built-in models as the alternative to a hub id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sdtune.errors import ModelLoadError
from sdtune.preset_names import PRESETS
from sdtune.run_folder import PICKLE_SUFFIXES

BUILT_IN = ", ".join(PRESETS)  # for messages: every built-in model, from the one list in models/presets.py
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_local(ref: str) -> bool:
    """True when a model reference that does not exist is surely a path, not a hub id (``org/name``).

    A path: it starts with ``./``, ``../``, ``~`` or ``/``; it has more than one ``/`` or an OS separator other
    than ``/``; it ends in a weights suffix; or its first part is a folder here (``runs/nothere`` when ``runs/``
    exists). Hub ids are ``name`` or ``org/name`` of letters, digits, ``.``, ``_`` and ``-``.
    """
    if ref.startswith(("./", "../", "~", "/")) or Path(ref).is_absolute():
        return True
    if ref.count("/") > 1 or "\\" in ref:  # a hub id has one "/" at most, never a Windows separator
        return True
    if Path(ref).suffix.lower() in (".safetensors", *PICKLE_SUFFIXES):
        return True
    parent = Path(ref).parent
    return parent != Path(".") and parent.is_dir() or not _HUB_ID.match(ref)


def _no_such_path(ref: str) -> ModelLoadError:
    """'X does not exist', with the nearest names in its folder when there are any."""
    import difflib

    path = Path(ref).expanduser()
    parent = path.parent
    if not parent.is_dir():
        return ModelLoadError(f"model path {ref} does not exist (nor does its folder {parent})")
    names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.75)  # typos only: not /tmp/cost for nonexist
    hint = f"; did you mean {' or '.join(str(parent / c) for c in close)}?" if close else ""
    return ModelLoadError(f"model path {ref} does not exist: no such folder or file{hint}")



def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _check_hub_id(ref: str, revision: str | None = None, files: tuple[str, ...] = ("model_index.json",),
                  what: str = "model") -> None:
    """Fail in a second, with what to do, when a hub model is neither cached nor reachable.

    ``files``: any one of them in the local cache means the repo is there (a pipeline's ``model_index.json``; a
    VAE repo's ``config.json``, or a pipeline's ``vae/config.json``). Without this, an offline machine spends
    minutes in the hub client's retries before its error.
    """
    import huggingface_hub

    for file in files:
        if isinstance(huggingface_hub.try_to_load_from_cache(ref, file, revision=revision), str):
            return
    if hub_offline():
        raise ModelLoadError(f"{what} '{ref}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
                             f"{_preset_hint(ref)}. Download it on a connected machine (huggingface-cli download "
                             f"ID) or pass a local {_LOCAL[what]}. Built-in models: {BUILT_IN}.")
    if not hub_reachable():  # no connection at all: say so now, not after the hub client's retries
        raise ModelLoadError(_offline_hint(ref, what) + " (the hub cannot be reached from this machine)")
    try:
        huggingface_hub.model_info(ref, revision=revision, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure here means we cannot get the model
        raise ModelLoadError(_offline_hint(ref, what) + f" ({type(exc).__name__}: {str(exc)[:200]})") from None


_LOCAL = {"model": "diffusers folder", "VAE": "VAE folder or .safetensors file"}  # what to pass instead of a hub id


def _preset_hint(ref: str) -> str:
    import difflib

    close = difflib.get_close_matches(ref, PRESETS, n=1, cutoff=0.6)
    return f" (did you mean the built-in {close[0]}?)" if close else ""


def _local_files_only(source: str) -> bool:
    """Cached hub models load without network calls when the hub is unreachable (no retry storms)."""
    return Path(source).exists() or not hub_reachable()


_REACHABLE: dict[str, bool] = {}


def hub_cached(ref: str, filename: str = "config.json") -> bool:
    """Whether the hub cache holds ``filename`` of the hub repo ``ref`` (no network)."""
    import huggingface_hub

    try:
        return isinstance(huggingface_hub.try_to_load_from_cache(ref, filename), str)
    except ValueError:  # not a repo id
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``, else huggingface.co) answers a TCP connection, asked once per
    process; False with ``HF_HUB_OFFLINE``. Every hub load passes ``local_files_only=not hub_reachable()``: offline,
    the hub client otherwise retries each file five times with back-off (~30 s) before the same error."""
    if hub_offline():
        return False
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    key = f"{host}:{port}"
    if key not in _REACHABLE:
        import socket

        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[key] = True
        except OSError:
            _REACHABLE[key] = False
    return _REACHABLE[key]



def _offline_hint(ref: str, what: str = "model") -> str:
    return (
        f"could not load {what} '{ref}'{_preset_hint(ref)}. If it is a hub id, this machine may be offline: "
        f"download it once (huggingface-cli download ID) or pass a local {_LOCAL[what]}. Built-in models: "
        f"{BUILT_IN}."
    )
