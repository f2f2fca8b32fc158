"""A VAE used in place of the base model's (``model.vae``): checked without loading, then loaded as training uses it.

The references a VAE may be: a built-in model (its ``vae/``), a diffusers VAE folder, a model folder with ``vae/``,
a single weights file, or a hub id (a VAE repo with ``config.json``, or a pipeline repo with ``vae/config.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdtune.errors import ModelLoadError
from sdtune.models.presets import is_preset, preset_path
from sdtune.models.refs import _check_hub_id, _local_files_only, _no_such_path, hub_reachable, looks_local
from sdtune.models.safetensors_files import reading_safetensors
from sdtune.run_folder import PICKLE_SUFFIXES, check_weights_file


def resolve_vae_ref(ref: str) -> str:
    """Check a VAE reference (``model.vae``) without loading it: a built-in model (its ``vae/``), a diffusers VAE
    folder or a model folder with ``vae/``, a single weights file, or a hub id that is cached or reachable.

    Returns what :func:`load_vae` loads. Checked before the base model loads, so a bad VAE costs a second, not the
    minutes of loading an SDXL UNet first.
    """
    if is_preset(ref):
        return str(preset_path(ref))
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
            raise ModelLoadError(f"{path} is not a VAE weights file: pass a .safetensors VAE, a diffusers VAE "
                                 "folder (config.json + weights), a model folder with vae/, or a hub id")
        return str(path)
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "vae" / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but not a VAE (no config.json, nor vae/config.json): pass a "
                                 "diffusers VAE folder, a model folder with vae/, a .safetensors VAE or a hub id")
        return str(path)
    if looks_local(ref):
        raise _no_such_path(ref)
    _check_hub_id(ref, files=("config.json", "vae/config.json"), what="VAE")
    return ref


def load_vae(ref: str, *, revision: str | None = None, allow_pickle: bool = False, base: str | None = None) -> Any:
    """A separate VAE (``model.vae``): a diffusers VAE folder, a model folder with ``vae/``, a single file, or a hub id.

    ``base``: the resolved base model (:func:`resolve_model_ref`). A single-file VAE takes its architecture and
    latent scale from the base's ``vae/config.json`` when there is one: it replaces that VAE, so it must share its
    latent space, and diffusers would otherwise fetch a default config from the hub (SD 1.5's, whose scale is not
    SDXL's) - impossible offline, where the hub client retries for ~40 s before failing.
    """
    from diffusers import AutoencoderKL

    source = resolve_vae_ref(ref)
    path = Path(source)
    kw: dict[str, Any] = {"revision": revision, "use_safetensors": None if allow_pickle else True}
    try:
        with reading_safetensors(path):  # a damaged weights file: one line naming it
            if path.is_file():
                check_weights_file(path, allow_pickle)
                if base and not Path(base).is_file():
                    return AutoencoderKL.from_single_file(source, config=base, subfolder="vae",
                                                          local_files_only=_local_files_only(base))
                return AutoencoderKL.from_single_file(source, local_files_only=not hub_reachable())
            sub = "vae" if (path / "vae" / "config.json").is_file() else None
            return AutoencoderKL.from_pretrained(source, subfolder=sub, local_files_only=_local_files_only(source),
                                                 **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # not a VAE's tensors, a truncated file, ...
        raise ModelLoadError(f"model.vae: cannot load the VAE {ref} ({type(exc).__name__}: "
                             f"{_first_line(str(exc))[:200]}); pass a diffusers VAE folder, a model folder with "
                             "vae/, a .safetensors VAE of the base model's family or a hub id") from None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
