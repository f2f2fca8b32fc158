"""A disk store of encoder outputs (VAE posteriors, text embeddings) that can never serve a stale entry.

Each entry is one safetensors file named by a key that hashes everything its value depends on: the encoder's
weights (:func:`module_hash`), the compute dtype and device type, and the input (an image's content hash and
its transform, or a prompt's token ids). A changed photo, crop, flip, VAE or precision is another key, so
nothing is ever invalidated by hand. The store lives under the user cache (``SDTUNE_CACHE`` or
``~/.cache/sdtune``, or ``data.cache_dir``) so reruns, resumes, other runs and ``personalize`` subjects that
share photos share it.

Every read is verified: the file must parse, carry its key, hold the expected shape and dtype, and hash to the
sha256 recorded at write time. Anything else (a truncated write from a killed process, a flipped bit, another
version's file) reads as missing, so the caller re-encodes it. Writes go to a unique temporary name and are
renamed into place, so concurrent writers (data-parallel ranks, parallel ``personalize`` children) each leave a
whole file, and the same one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from sdtune.atomic import umask_mode

FORMAT = "1"


def default_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir`` or ``<cache root>/features``."""
    if cache_dir is not None:
        return Path(cache_dir)
    from sdtune.models.presets import cache_root

    return cache_root() / "features"


def root_setting(cache_dir: Path | None = None) -> str:
    """The setting that chose :func:`default_root`, for messages: ``data.cache_dir`` or ``SDTUNE_CACHE``."""
    return "data.cache_dir" if cache_dir is not None else "SDTUNE_CACHE"


def unwritable_note(cache_dir: Path | None = None) -> str | None:
    """A one-line note when the feature cache cannot be written (then the run trains without it), else None.

    The cache only saves encoder time (a cached run is bitwise the uncached one), so a folder that cannot be
    written (root-owned, read-only, a file) is no reason to stop: the run goes on uncached and says how to cache.
    """
    from sdtune.writable import unwritable, write_problem

    root = default_root(cache_dir)
    problem = write_problem(root)
    for kind in ("latents", "text"):  # FeatureStore folders made by an earlier run (another user's, say)
        if problem is None and (root / kind).is_dir() and (problem := write_problem(root / kind)) is not None:
            root = root / kind
    if problem is None:
        return None
    key = root_setting(cache_dir)
    return "note: " + unwritable(root, key, problem, "training without the latent/text cache (the same results, "
                                 f"slower); to cache, choose a writable folder with {key}=... or fix its permissions")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (any dtype, bf16 included)."""
    data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()


def module_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's class, config, every weight (name, dtype, shape, bytes) and the scales and switches
    of its adapters (a frozen LoRA at another weight encodes differently), as it is now."""
    digest = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    if config is not None:
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        as_dict = {k: v for k, v in as_dict.items() if not k.startswith("_")}
        digest.update(json.dumps(as_dict, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor_digest(tensor).encode())
    for name, layer in module.named_modules():  # adapters (LoRA) act through scales and switches, not weights
        state = {attr: getattr(layer, attr) for attr in ("scaling", "active_adapters", "merged", "disable_adapters")
                 if isinstance(getattr(layer, "scaling", None), dict) and hasattr(layer, attr)}
        if state:
            digest.update(f"{name}:{json.dumps(state, sort_keys=True, default=str)}".encode())
    return digest.hexdigest()


def entry_key(**parts: object) -> str:
    """A key from named parts (model hash, dtype, device type, input hash, transform ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class FeatureStore:
    """One folder of entries of one kind (``latents``/``text``) for one encoder: ``root/<kind>/<model hash>``."""

    def __init__(self, root: Path, kind: str, model_hash: str):
        self.folder = Path(root) / kind / model_hash[:32]
        self.model_hash = model_hash

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def read(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """The entry's tensor, or None when it is missing or fails any check (then re-encode it)."""
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensor = handle.get_tensor("value").clone()  # not a view of a file someone may rewrite
        except Exception:  # noqa: BLE001 - a truncated or garbled file is simply not a valid entry
            return None
        if (meta.get("format") != FORMAT or meta.get("key") != key or tuple(tensor.shape) != tuple(shape)
                or tensor.dtype != dtype or meta.get("sha256") != tensor_digest(tensor)
                or not bool(torch.isfinite(tensor).all())):
            return None
        return tensor

    def write(self, key: str, tensor: torch.Tensor, note: str = "") -> None:
        """Write an entry atomically (a unique temporary name in the same folder, then a rename)."""
        from safetensors.torch import save_file

        tensor = tensor.detach().contiguous().cpu()
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({"value": tensor}, tmp, metadata={"format": FORMAT, "key": key, "sha256": tensor_digest(tensor),
                                                        "note": note})
            umask_mode(Path(tmp))  # mkstemp/save_file make 0600: a cache shared by users must be readable
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
