"""Every model a run config names, checked before any of them loads: one line naming the key and the fix.

A run config names models under three keys: ``model.base`` (the model trained), ``model.vae`` (a VAE used in
place of the base's) and ``model.adapters[i].path`` (frozen LoRAs under the trained one). Each is checked here
without loading weights (existence, the kind of folder, a hub id cached or reachable), so a typo in the third
costs a second, not the minutes of loading an SDXL UNet before it is read, and the message says which key to fix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdtune.errors import ModelLoadError


def model_sources(cfg: Any) -> list[tuple[str, str, Callable[[], object]]]:
    """(config key, its value, its check) for every model ``cfg`` (a ``RunConfig``) names: the one list of model-path
    keys."""
    from sdtune.models.loading import resolve_model_ref
    from sdtune.models.lora import adapter_file
    from sdtune.models.vae import resolve_vae_ref

    checks: list[tuple[str, str, Callable[[], object]]] = [
        ("model.base", cfg.model.base, lambda: resolve_model_ref(cfg.model.base))]
    if cfg.model.vae:
        checks.append(("model.vae", cfg.model.vae, lambda: resolve_vae_ref(cfg.model.vae)))
    for i, adapter in enumerate(cfg.model.adapters):
        checks.append((f"model.adapters[{i}].path", str(adapter.path), lambda path=adapter.path: adapter_file(path)))
    return checks


def check_model_sources(cfg: Any, made_later: Callable[[str], bool] = lambda _: False) -> None:
    """Raise :class:`ModelLoadError` ``"KEY: what is wrong and what to pass"`` for the first bad model key.

    ``made_later(value)``: a model that an earlier stage of a recipe writes (not there yet: not checked).
    """
    for key, value, check in model_sources(cfg):
        if made_later(value):
            continue
        try:
            check()
        except ModelLoadError as exc:
            message = str(exc)
            raise ModelLoadError(message if message.startswith(f"{key}:") else f"{key}: {message}") from None
