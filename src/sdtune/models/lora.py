"""LoRA adapters through peft: add them for training, save them in the diffusers format.

The saved file carries each adapter's rank and alpha as metadata, so ``pipe.load_lora_weights`` restores the
right scale even when alpha differs from rank.

One file must load on every stack users load it on, not only ours (measured: diffusers 0.35 / peft 0.17 /
transformers 4.57 and diffusers 0.42 / peft 0.21 / transformers 5.23), so :func:`write_lora_file` writes:

- metadata with only the adapter fields every peft since 0.9 knows (``PORTABLE_CONFIG_KEYS``): diffusers builds
  ``LoraConfig(**metadata)``, and peft 0.17 rejected the whole file over a field added in 0.18+
  (``alora_invocation_tokens``);
- text-encoder keys under transformers 4 names (``text_encoder.text_model.encoder...``): transformers 5 dropped
  the ``text_model`` level, diffusers 0.42 strips it again when the model has none, while diffusers 0.35 (and
  ComfyUI's diffusers-format loader) match only the ``text_model`` names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from sdtune.atomic import umask_mode
from sdtune.config import LoraConfig as LoraSettings
from sdtune.run_folder import LORA_WEIGHTS_NAME

LORA_WEIGHTS = LORA_WEIGHTS_NAME  # the run folder's RUN/lora/<this>

# LoraConfig fields written to the file (all in peft >= 0.9). Others are left out; one that would change the
# loaded model if set (bias, fan_in_fan_out, ...) is refused instead of silently dropped.
PORTABLE_CONFIG_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora",
                        "use_dora")
_TRAINING_ONLY_KEYS = {"init_lora_weights", "lora_dropout", "inference_mode", "peft_version", "task_type",
                       "base_model_name_or_path", "revision"}
# CLIPTextTransformer's children: transformers 4 nests them under ``text_model.``, transformers 5 does not.
_CLIP_TRANSFORMER_CHILDREN = ("encoder.", "embeddings.", "final_layer_norm.")


def peft_config(settings: LoraSettings, targets: list[str]):
    """peft's config of the run's adapter kind (``train.lora.kind``: ``sdtune.models.lora_variants.KINDS``)."""
    from sdtune.models.lora_variants import kind_of

    return kind_of(settings).config(settings, targets)


TRAINED_ADAPTER = "default"  # the name peft gives the adapter a run trains; frozen ones have their own


def layer_names(module: torch.nn.Module) -> list[str]:
    """Names LoRA targets can use: the last part of each linear/conv layer's name (``to_q``, ``to_out.0``)."""
    names = set()
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear | torch.nn.Conv2d) and name:
            parts = name.split(".")
            names.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return sorted(names)


def add_lora(module: torch.nn.Module, settings: LoraSettings, targets: list[str],
             key: str = "train.lora.targets") -> None:
    """Add a trainable LoRA adapter; the base weights stay frozen. Works for the UNet and the text encoder.

    Raises ConfigError naming ``key`` (the config key that listed ``targets``) when a target matches no layer:
    peft skips such a name silently when another one matches, so a typo would train fewer layers unnoticed.
    Frozen adapters already in the module (``load_frozen_adapters``) stay active below it and stay frozen:
    only the new adapter's matrices train.
    """
    from diffusers import ModelMixin
    from peft import inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtune.errors import ConfigError
    from sdtune.models.lora_variants import is_trained_tensor, kind_of

    names = [name for name, _ in module.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched or not targets:
        raise ConfigError(f"{key}: {unmatched or targets} match no layer of the {type(module).__name__}; its "
                          f"linear/conv layers are named e.g. {', '.join(layer_names(module)[:14])}")
    module.requires_grad_(False)
    config = peft_config(settings, targets)
    if isinstance(module, ModelMixin):  # the UNet: diffusers' add_adapter is peft's injection plus the flag its
        module.add_adapter(config)      # adapter methods (set_adapters, disable_adapters) check
    else:  # text encoders: peft directly, never transformers' add_adapter, which from transformers 5.24 demands a
        inject_adapter_in_model(config, module)  # peft newer than any released; same layers, names, initial draws
    for layer in module.modules():  # adding an adapter activates it alone: keep the frozen ones on too
        if isinstance(layer, BaseTunerLayer) and len(getattr(layer, "lora_A", {})) > 1:
            layer.set_adapter(list(layer.lora_A.keys()))  # (this marks them all trainable: undone below)
    kind = kind_of(settings)
    for name, param in module.named_parameters():
        param.requires_grad_(is_trained_tensor(name, kind, TRAINED_ADAPTER))


def load_frozen_adapters(unet: torch.nn.Module, text_encoder: torch.nn.Module,
                         adapters: list[tuple[Path, float, str]]) -> None:
    """Load diffusers-format LoRA files ``(file, weight, name)`` into a UNet and text encoder as named adapters,
    active with their weights and frozen: the base a run trains on stays base + these adapters, unfused."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    with torch.random.fork_rng(devices=[]):  # loading draws init weights: the trained LoRA's init must not move
        _load_named(unet, text_encoder, adapters)
    for module in (unet, text_encoder):
        names = {n for layer in module.modules() if isinstance(layer, BaseTunerLayer) for n in layer.lora_A}
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.set_adapter([n for n in names if n in layer.lora_A])
        module.requires_grad_(False)


def _load_named(unet: torch.nn.Module, text_encoder: torch.nn.Module,
                adapters: list[tuple[Path, float, str]]) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtune.models.family import DualTextEncoder
    from sdtune.models.safetensors_files import reading_safetensors

    # SDXL: the file's text-encoder layers go to both encoders by their prefixes, as its pipeline loads them
    # (and its kohya keys lora_te1_/lora_te2_ convert with the SDXL converter)
    xl = isinstance(text_encoder, DualTextEncoder)
    loader = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    encoders = [(text_encoder.text_encoder, "text_encoder"), (text_encoder.text_encoder_2, "text_encoder_2")] \
        if xl else [(text_encoder, "text_encoder")]
    for file, weight, name in adapters:
        with reading_safetensors(file):  # a damaged file: one line naming it
            state, alphas, metadata = loader.lora_state_dict(str(file), return_lora_metadata=True)
        loader.load_lora_into_unet(state, alphas, unet, adapter_name=name, metadata=metadata)
        for encoder, prefix in encoders:
            loader.load_lora_into_text_encoder(state, alphas, encoder, prefix=prefix, adapter_name=name,
                                               metadata=metadata)
        for module in (unet, text_encoder):
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer) and name in getattr(layer, "scaling", {}):
                    layer.scaling[name] *= weight


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's matrices under peft's names (``<layer>.lora_A.weight`` / ``lora_B``).

    Not converted to the older diffusers names (``lora.down`` / ``lora.up``, what the diffusers example scripts
    write): diffusers converts only attention layers to those names, and when a file then holds both kinds
    (attention plus conv or feed-forward targets) ``load_lora_weights`` silently drops the attention layers
    (measured, diffusers 0.42: every attention LoRA missing from the loaded UNet)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(module, save_embedding_layers=False)  # LoRA never trains embeddings


def portable_metadata(config: dict) -> dict:
    """The part of a peft ``LoraConfig.to_dict()`` that every supported peft accepts (``PORTABLE_CONFIG_KEYS``).

    Raises SdtuneError when a left-out field has a non-default value that changes what the adapter computes.
    """
    from peft import LoraConfig

    from sdtune.errors import SdtuneError

    defaults = LoraConfig().to_dict()
    changed = sorted(k for k, v in config.items() if k not in PORTABLE_CONFIG_KEYS and k not in _TRAINING_ONLY_KEYS
                     and k in defaults and v != defaults[k] and v not in (None, {}, []))
    if changed:
        raise SdtuneError(f"LoRA settings {', '.join(changed)} cannot be written in a file every diffusers/peft "
                          "version loads the same way")
    out = {k: config[k] for k in PORTABLE_CONFIG_KEYS if k in config}
    if isinstance(out.get("target_modules"), (set, list, tuple)):
        out["target_modules"] = sorted(out["target_modules"])
    return out


def portable_text_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text-encoder LoRA keys under transformers 4 names (``text_model.encoder...``), whatever transformers ran.

    A DoRA magnitude is written ``<layer>.lora_magnitude_vector.weight``: under peft's own name (no ``.weight``)
    transformers' adapter loading leaves it out (measured, transformers 5.23: the text encoder loaded without its
    trained magnitudes, outputs off by half the adapter's effect); the UNet loader takes either."""
    def portable(key: str) -> str:
        key = f"text_model.{key}" if key.startswith(_CLIP_TRANSFORMER_CHILDREN) else key
        return f"{key}.weight" if key.endswith(".lora_magnitude_vector") else key

    return {portable(k): v for k, v in state.items()}


def write_lora_file(folder: Path, unet_state: dict[str, torch.Tensor] | None,
                    text_encoder_state: dict[str, torch.Tensor] | None = None, *, unet_config: dict | None = None,
                    text_encoder_config: dict | None = None,
                    text_encoder_2_state: dict[str, torch.Tensor] | None = None,
                    text_encoder_2_config: dict | None = None) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors``: peft key names, portable metadata and text-encoder names.

    ``*_state`` map module-relative peft keys (``<layer>.lora_A.weight``) to tensors; ``*_config`` are peft
    ``LoraConfig.to_dict()`` dicts (None: no metadata, loaders then assume ``alpha == rank``). ``text_encoder_2_*``:
    SDXL's second text encoder (``text_encoder_2.`` keys, what ``StableDiffusionXLPipeline`` loads).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    def meta(config: dict | None, state: dict | None) -> dict | None:
        return portable_metadata(config) if config and state else None

    texts: dict = {
        "text_encoder_lora_layers": portable_text_encoder_state(text_encoder_state) if text_encoder_state else None,
        "text_encoder_lora_adapter_metadata": meta(text_encoder_config, text_encoder_state)}
    writer = StableDiffusionPipeline
    if text_encoder_2_state:
        writer = StableDiffusionXLPipeline
        texts |= {"text_encoder_2_lora_layers": portable_text_encoder_state(text_encoder_2_state),
                  "text_encoder_2_lora_adapter_metadata": meta(text_encoder_2_config, text_encoder_2_state)}
    writer.save_lora_weights(str(folder), unet_lora_layers=unet_state or None, weight_name=LORA_WEIGHTS,
                             unet_lora_adapter_metadata=meta(unet_config, unet_state), **texts)
    return Path(folder) / LORA_WEIGHTS


def text_lora_states(text_encoder: torch.nn.Module | None) -> dict[str, dict[str, torch.Tensor]]:
    """The text-encoder LoRA per pipeline component: ``{"text_encoder": ...}``, and ``"text_encoder_2"`` for SDXL's
    two encoders trained as one module (``sdtune.models.family.DualTextEncoder``)."""
    from sdtune.models.family import SD, SDXL, DualTextEncoder

    if text_encoder is None:
        return {}
    family = SDXL if isinstance(text_encoder, DualTextEncoder) else SD
    return family.lora_components(lora_state(text_encoder))


def save_lora(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None,
              settings: LoraSettings) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` in the diffusers format (see :func:`write_lora_file`)."""
    texts = text_lora_states(text_encoder)
    te_config = peft_config(settings, settings.text_encoder_targets).to_dict() if texts else None
    return write_lora_file(
        folder, lora_state(unet), texts.get("text_encoder"),
        unet_config=peft_config(settings, settings.targets).to_dict(), text_encoder_config=te_config,
        text_encoder_2_state=texts.get("text_encoder_2"), text_encoder_2_config=te_config,
    )


def rewrite_lora_file(source: Path, target: Path, *, check: Callable[[Path], None] | None = None) -> Path:
    """Rewrite any diffusers-format SD / SDXL LoRA file (an older sdtune's, the diffusers scripts' ``lora.down``
    names) in the format :func:`write_lora_file` writes, keeping its adapter config. ``check(tmp_file)`` may raise
    before the file takes its name; then nothing is left behind."""
    import shutil

    from sdtune.errors import SdtuneError
    from sdtune.models.kohya import _component_metadata, read_diffusers_lora
    from sdtune.models.safetensors_files import open_safetensors

    with open_safetensors(source) as fh:
        configs = _component_metadata(fh.metadata())
    states: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "text_encoder": {}, "text_encoder_2": {}}
    for layer in read_diffusers_lora(source):
        if layer.component not in states:
            raise SdtuneError(f"{source}: {layer.component} LoRA layers are not an SD 1.x/2.x or SDXL LoRA")
        states[layer.component][f"{layer.module}.lora_A.weight"] = layer.down
        states[layer.component][f"{layer.module}.lora_B.weight"] = layer.up
    target = Path(target)
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        written = write_lora_file(staging, states["unet"], states["text_encoder"],
                                  unet_config=configs.get("unet"), text_encoder_config=configs.get("text_encoder"),
                                  text_encoder_2_state=states["text_encoder_2"],
                                  text_encoder_2_config=configs.get("text_encoder_2"))
        if check is not None:
            check(written)
        umask_mode(written)
        written.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def adapter_file(path: Path) -> Path:
    """The LoRA weights file of ``path``: the file itself, a run folder's ``lora/``, or a LoRA folder."""
    from sdtune.errors import ModelLoadError
    from sdtune.run_folder import check_weights_file

    path = Path(path)
    for candidate in (path, path / "lora" / LORA_WEIGHTS, path / LORA_WEIGHTS):
        if candidate.is_file():
            check_weights_file(candidate, allow_pickle=True)  # an image passed as a LoRA: refused by its name
            return candidate
    raise ModelLoadError(f"no LoRA weights at {path}: pass a .safetensors file, a run folder with lora/"
                         f"{LORA_WEIGHTS}, or a folder holding {LORA_WEIGHTS}")


def apply_model_adapters(cfg, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
    """The run's ``model.adapters`` (``RunConfig``), loaded frozen below the LoRA it trains."""
    if not cfg.model.adapters:
        return
    from types import SimpleNamespace

    from sdtune.errors import ModelLoadError
    from sdtune.models.fit import check_lora_fits, diffusers_quiet, loader_error

    files = [(adapter_file(a.path), a.weight, a.name) for a in cfg.model.adapters]
    model = SimpleNamespace(unet=unet, text_encoder=text_encoder)
    for (file, _, _), adapter in zip(files, cfg.model.adapters, strict=True):
        check_lora_fits(file, model, cfg.model.base, name=f"model.adapters {adapter.path}")
    try:
        with diffusers_quiet():
            load_frozen_adapters(unet, text_encoder, files)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:  # e.g. a kohya file of another family
        raise ModelLoadError(f"model.adapters: {', '.join(str(a.path) for a in cfg.model.adapters)} could not be "
                             f"loaded onto {cfg.model.base} ({loader_error(exc)}); was it trained on another base "
                             "model?") from None
