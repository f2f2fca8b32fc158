"""Load a base model from a built-in preset, a local diffusers folder, a single .safetensors file or a hub id.

Only safetensors weights are loaded by default: a pickle file (.bin/.ckpt/.pt) can run arbitrary code when
unpickled, so it is refused unless the user opts in with ``model.allow_pickle: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtune.errors import ModelLoadError, note_once
from sdtune.models.family import SD, Family, family_of_source
from sdtune.models.presets import is_preset, preset_path
from sdtune.models.quiet import quiet_weight_loading as _quiet_weight_loading
from sdtune.models.refs import BUILT_IN, _check_hub_id, _local_files_only, _no_such_path, _offline_hint, looks_local
from sdtune.models.safetensors_files import reading_safetensors
from sdtune.run_folder import PICKLE_SUFFIXES, check_weights_file, refuse_adapter_as_model


@dataclass
class SDComponents:
    """The parts of a Stable Diffusion model that training needs.

    On SDXL ``tokenizer`` / ``text_encoder`` are both of its tokenizers / encoders as one object
    (``sdtune.models.family.DualTokenizer`` / ``DualTextEncoder``); ``family`` knows how to use them.
    """

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any  # DDPM-style training scheduler (same betas/prediction type as the model's)
    source: str  # resolved folder or hub id
    family: Family = SD


def resolve_model_ref(ref: str) -> str:
    """Turn a user's model reference into something ``from_pretrained`` accepts.

    Presets become their cache folder, existing paths are checked, anything else is taken as a hub id.
    """
    if is_preset(ref):
        if Path(ref).exists():
            note_once(f"note: {ref} is a built-in model; the folder {ref} here is not used (pass ./{ref} for it)")
        return str(preset_path(ref))
    path = Path(ref).expanduser()
    if path.exists():
        if path.is_file():
            check_weights_file(path, allow_pickle=True)  # pickle files are refused in load, where the config says
            refuse_adapter_as_model(path)
            return str(path)
        if not (path / "model_index.json").exists() and not (path / "unet").is_dir():
            raise ModelLoadError(
                f"{path} is a folder but not a diffusers model (no model_index.json). Pass a diffusers "
                f"pipeline folder, a run folder, a single .safetensors checkpoint, a hub id, or a built-in model "
                f"({BUILT_IN})."
            )
        return str(path)
    if looks_local(ref):
        raise _no_such_path(ref)
    _check_hub_id(ref)
    return ref


def _refuse_pickle_only_folder(path: Path, allow_pickle: bool) -> None:
    """A diffusers folder whose weights exist only as pickle files is refused unless allowed."""
    if path.is_dir() and not allow_pickle:
        pickles = _pickle_only_parts(path)
        if pickles:
            check_weights_file(pickles[0], allow_pickle=False)


def _pickle_only_parts(folder: Path) -> list[Path]:
    """Sub-models of a diffusers folder that have pickle weights but no safetensors beside them."""
    found = []
    for part in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = list(part.iterdir())
        has_safe = any(f.suffix == ".safetensors" for f in files)
        pickles = [f for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
        if pickles and not has_safe:
            found.extend(pickles)
    return found


def model_family(ref: str, revision: str | None = None) -> Family:
    """The family (SD 1/2 or SDXL) of a model reference, from its configs or tensor names only."""
    source = resolve_model_ref(ref)
    return family_of_source(source, revision, local_files_only=_local_files_only(source))


def model_generation(ref: str, revision: str | None = None) -> tuple[str, str | None]:
    """("sd1" | "sd2" | "sdxl", its scheduler's prediction_type) of a model reference (``family.base_generation``)."""
    from sdtune.models.family import base_generation

    source = resolve_model_ref(ref)
    return base_generation(source, revision, local_files_only=_local_files_only(source))


def load_components(ref: str, *, allow_pickle: bool = False, revision: str | None = None,
                    variant: str | None = None, prediction_type: str | None = None,
                    vae: str | None = None, unet_dtype: Any = None, text_encoder_dtype: Any = None
                    ) -> SDComponents:
    """Load tokenizer(s), text encoder(s), VAE, UNet and a DDPM training scheduler on the CPU, in fp32 unless
    ``unet_dtype`` / ``text_encoder_dtype`` say otherwise (a frozen part is loaded straight into the training's
    compute dtype: the same rounding as a cast after loading, without holding the fp32 copy: SDXL's UNet is 10 GB
    in fp32).

    The family (SD 1/2 or SDXL) is read from the model; ``vae`` replaces the model's VAE (``model.vae``).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    _quiet_weight_loading()
    source = resolve_model_ref(ref)
    path = Path(source)
    if path.is_file():
        pipe = load_pipeline(ref, allow_pickle=allow_pickle)
        family = family_of_pipeline(pipe)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        comps = SDComponents(*family.text_of(pipe), pipe.vae, pipe.unet, noise_scheduler, source, family)
    else:
        _refuse_pickle_only_folder(path, allow_pickle)
        kw: dict[str, Any] = {"revision": revision, "local_files_only": _local_files_only(source)}
        if variant:
            kw["variant"] = variant
        safe = None if allow_pickle else True
        family = family_of_source(source, revision, local_files_only=kw["local_files_only"])
        try:
            with reading_safetensors(path):  # a damaged weights file: one line naming it
                tokenizer, text_encoder = family.load_text(source, use_safetensors=safe, dtype=text_encoder_dtype,
                                                           **kw)
                vae_model = AutoencoderKL.from_pretrained(source, subfolder="vae", use_safetensors=safe, **kw)
                unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", use_safetensors=safe,
                                                            torch_dtype=unet_dtype, **kw)
            noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=revision,
                                                            local_files_only=kw["local_files_only"])
        except (OSError, ValueError) as exc:
            if "safetensors" in str(exc).lower() and not allow_pickle:
                raise ModelLoadError(
                    f"{ref} has no safetensors weights. Only safetensors are loaded by default; if you trust "
                    "its source set model.allow_pickle=true."
                ) from exc
            raise ModelLoadError(_offline_hint(ref) + f" ({type(exc).__name__}: {exc})") from exc
        comps = SDComponents(tokenizer, text_encoder, vae_model, unet, noise_scheduler, source, family)
    if vae:
        from sdtune.models.vae import load_vae

        comps.vae = load_vae(vae, allow_pickle=allow_pickle, base=source)
    if prediction_type:
        comps.noise_scheduler.register_to_config(prediction_type=prediction_type)
    return comps


def base_scheduler_config(ref: str, revision: str | None = None) -> dict[str, Any] | None:
    """A base model's scheduler config, read without loading weights or going online.

    None when it cannot be told that way (a single-file checkpoint, a hub model not in the local cache).
    """
    import json

    if is_preset(ref) or Path(ref).expanduser().is_dir():
        try:
            file: Any = Path(resolve_model_ref(ref)) / "scheduler" / "scheduler_config.json"
        except (ModelLoadError, OSError, FileNotFoundError):
            return None
    elif Path(ref).expanduser().exists():
        return None
    else:
        import huggingface_hub

        file = huggingface_hub.try_to_load_from_cache(ref, "scheduler/scheduler_config.json", revision=revision)
        if not isinstance(file, str):
            return None
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def base_prediction_type(ref: str, revision: str | None = None) -> str | None:
    """The prediction type in a base model's scheduler config (None: not readable without loading)."""
    config = base_scheduler_config(ref, revision)
    return None if config is None else config.get("prediction_type", "epsilon")


def base_schedule_length(ref: str, revision: str | None = None) -> int | None:
    """The noise schedule's length (``num_train_timesteps``; diffusers' default 1000), None: not readable."""
    config = base_scheduler_config(ref, revision)
    return None if config is None else int(config.get("num_train_timesteps", 1000))


def family_of_pipeline(pipe: Any) -> Family:
    from sdtune.models.family import SDXL

    return SDXL if getattr(pipe, "text_encoder_2", None) is not None else SD


def compute_dtype(mixed_precision: str) -> Any:
    """The dtype frozen weights are stored in and inference runs in under ``train.mixed_precision``."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def set_prediction_type(pipe: Any, prediction_type: str | None) -> None:
    """Make ``pipe`` sample with the objective its UNet was trained on (``None``: keep the scheduler's own).

    A scheduler's ``prediction_type`` decides how the UNet output is read; a v-prediction UNet sampled as
    epsilon makes grey noise, so every pipeline built from a run must carry the run's objective, not its base's.
    """
    if prediction_type and pipe.scheduler.config.get("prediction_type") != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)


def load_pipeline(ref: str, *, allow_pickle: bool = False, revision: str | None = None,
                  variant: str | None = None, torch_dtype: Any = None, vae: str | None = None):
    """Load the model's pipeline (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``, by its family) for
    class images, validation and inference. ``vae``: a VAE to use instead of the model's (``model.vae``)."""
    _quiet_weight_loading()
    source = resolve_model_ref(ref)
    path = Path(source)
    try:
        if path.is_file():
            check_weights_file(path, allow_pickle)
            if path.suffix.lower() not in (".safetensors", *PICKLE_SUFFIXES):
                raise ModelLoadError(f"{path}: expected a .safetensors checkpoint file")
        family = family_of_source(source, revision, local_files_only=_local_files_only(source))
        kw: dict[str, Any] = dict(family.pipeline_kwargs())
        if torch_dtype is not None:
            kw["torch_dtype"] = torch_dtype
        if vae:
            from sdtune.models.vae import load_vae

            kw["vae"] = load_vae(vae, allow_pickle=allow_pickle, base=source)
            if torch_dtype is not None:
                kw["vae"].to(torch_dtype)
        if path.is_file():
            with reading_safetensors(path):
                return family.pipeline_class().from_single_file(str(path), **kw)
        _refuse_pickle_only_folder(path, allow_pickle)
        if variant:
            kw["variant"] = variant
        with reading_safetensors(path):  # a damaged weights file in the folder: one line naming it
            return family.pipeline_class().from_pretrained(
                source, revision=revision, use_safetensors=None if allow_pickle else True,
                local_files_only=_local_files_only(source), **kw
            )
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_offline_hint(ref) + f" ({type(exc).__name__}: {exc})") from exc
