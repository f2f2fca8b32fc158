"""DoRA / LoHa / LoKr runs' files (``sdtune.models.lora_variants``): peft's own format, the kohya/LyCORIS layout, and
ComfyUI's way of loading the latter, to verify it against the trained adapter.

A run of such a kind writes into ``RUN/lora/``:

- ``peft/<component>/adapter_model.safetensors`` + ``adapter_config.json`` (component: ``unet``, ``text_encoder``,
  ``text_encoder_2``): peft's own format (``PeftModel.from_pretrained(unet, RUN/lora/peft/unet)`` loads it);
- ``lycoris.safetensors``: kohya/LyCORIS key names (``lora_unet_<layer>.hada_w1_a`` ..., ``lora_te_`` /
  ``lora_te1_`` / ``lora_te2_`` for text encoders), what AUTOMATIC1111 and ComfyUI load;
- DoRA also ``pytorch_lora_weights.safetensors`` (diffusers format, written by ``sdtune.models.lora``).

:func:`verify_variant_folder` builds the reference (a fresh fp32 base with the peft files applied through peft, as
training applied them), writes the LyCORIS file from it, then loads each file as its consumer does into another
fresh base and compares UNet and text-encoder outputs (``sdtune.models.verify``'s probes and tolerance).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdtune.errors import SdtuneError
from sdtune.run_folder import LYCORIS_NAME as LYCORIS_FILE
from sdtune.words import counted, plural

PEFT_DIR = "peft"
_PEFT_WEIGHTS, _PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
_PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained names the keys


def _components(unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> dict[str, torch.nn.Module]:
    from sdtune.models.comfyui import _family

    parts = {"unet": unet}
    if text_encoder is not None:
        parts |= _family(text_encoder).text_parts(text_encoder)
    return parts


def write_peft_folder(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None,
                      settings: Any) -> Path:
    """``folder/peft/<component>/``: each trained component's adapter in peft's own format (fp32)."""
    from safetensors.torch import save_file

    from sdtune.models.lora import lora_state, peft_config, text_lora_states

    root = Path(folder) / PEFT_DIR
    states = {"unet": lora_state(unet), **text_lora_states(text_encoder)}  # SDXL: per encoder
    for component, state in states.items():
        if not state:
            continue
        targets = settings.targets if component == "unet" else settings.text_encoder_targets
        out = root / component
        out.mkdir(parents=True, exist_ok=True)
        save_file({_PEFT_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()},
                  str(out / _PEFT_WEIGHTS), metadata={"format": "pt"})
        config = peft_config(settings, targets).to_dict()
        config["target_modules"] = sorted(config["target_modules"]) if config.get("target_modules") else None
        (out / _PEFT_CONFIG).write_text(json.dumps(config, indent=2, default=str), encoding="utf-8")
    return root


def apply_peft_folder(unet: torch.nn.Module, text_encoder: torch.nn.Module, folder: Path,
                      adapter: str = "default") -> None:
    """Apply ``folder/peft/*`` to the modules through peft (the reference: the trained adapter as trained)."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    from sdtune.models.safetensors_files import load_safetensors

    root = Path(folder) / PEFT_DIR
    for component, module in _components(unet, text_encoder).items():
        files = root / component
        if not (files / _PEFT_WEIGHTS).is_file():
            continue
        raw = json.loads((files / _PEFT_CONFIG).read_text(encoding="utf-8"))
        cls = PEFT_TYPE_TO_CONFIG_MAPPING[raw["peft_type"]]
        config = cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__ and k != "peft_type"})
        saved = load_safetensors(files / _PEFT_WEIGHTS)  # before the module changes: a damaged file leaves it as is
        inject_adapter_in_model(config, module, adapter_name=adapter)
        state = {k.removeprefix(_PEFT_PREFIX): v for k, v in saved.items()}
        result = set_peft_model_state_dict(module, state, adapter_name=adapter)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if adapter in k or "." in k]
        if unexpected:
            raise SdtuneError(f"{files}: {counted(len(unexpected), 'adapter weight')} "
                              f"{plural(len(unexpected), 'fits', 'fit')} no layer (first: {unexpected[0]})")


@torch.no_grad()
def lycoris_state(unet: torch.nn.Module, text_encoder: torch.nn.Module, kind: str,
                  adapter: str = "default") -> dict[str, torch.Tensor]:
    """The kohya/LyCORIS tensors of the adapter ``adapter`` applied to the modules (fp32 base: DoRA's ``.diff`` is the
    merged weight minus the base weight, computed here)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtune.models.kohya import kohya_name
    from sdtune.models.lora_variants import KINDS, lycoris_layer, peft_scale_of

    prefix = KINDS[kind].prefix
    components = _components(unet, text_encoder)
    sdxl = "text_encoder_2" in components
    state: dict[str, torch.Tensor] = {}
    for component, module in components.items():
        for name, layer in module.named_modules():
            if not isinstance(layer, BaseTunerLayer) or adapter not in layer.scaling:
                continue
            key = kohya_name(component, name, sdxl)
            if kind == "dora":
                base = layer.get_base_layer()
                before = base.weight.detach().clone()
                layer.merge(adapter_names=[adapter])
                state[f"{key}.diff"] = (base.weight.float() - before.float()).cpu().contiguous()
                base.weight.copy_(before)
                layer.merged_adapters.clear()
                continue
            tensors = {attr: getattr(layer, attr)[adapter] for attr in dir(layer)
                       if attr.startswith(prefix) and isinstance(getattr(layer, attr, None), torch.nn.ParameterDict)
                       and adapter in getattr(layer, attr)}
            for short, value in lycoris_layer(kind, tensors, peft_scale_of(layer, adapter)).items():
                state[f"{key}.{short}"] = value
    if not state:
        raise SdtuneError("the model holds no adapter layers to export")
    return state


def _delta(tensors: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor | None:
    """A layer's weight change as ComfyUI computes it from its kohya/LyCORIS tensors (comfy/weight_adapter: lora,
    loha, lokr; comfy/lora.py: diff), in fp32; None when the layer has none of them."""
    t = {k: v.float() for k, v in tensors.items()}
    alpha = t.get("alpha")
    if "diff" in t:
        return t["diff"].reshape(shape)
    if "lora_up.weight" in t:
        up, down = t["lora_up.weight"], t["lora_down.weight"]
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        return scale * (up.flatten(1) @ down.flatten(1)).reshape(shape)
    if "hada_w1_a" in t:
        scale = float(alpha) / t["hada_w1_b"].shape[0] if alpha is not None else 1.0
        return scale * ((t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])).reshape(shape)
    if any(k.startswith("lokr_") for k in t):
        dim = None
        w1 = t.get("lokr_w1")
        if w1 is None:
            dim, w1 = t["lokr_w1_b"].shape[0], t["lokr_w1_a"] @ t["lokr_w1_b"]
        w2 = t.get("lokr_w2")
        if w2 is None:
            dim, w2 = t["lokr_w2_b"].shape[0], t["lokr_w2_a"] @ t["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
        return scale * torch.kron(w1, w2).reshape(shape)
    return None


@torch.no_grad()
def merge_comfyui(unet: torch.nn.Module, text_encoder: torch.nn.Module, file: Path) -> list[str]:
    """Merge a kohya/LyCORIS file into the modules as ComfyUI's LoRA loader does (``W += delta``), in fp32; returns
    the file's keys ComfyUI would not load (it only warns about them). Also fuses such a file into a base."""
    from sdtune.models.comfyui import comfyui_key_map
    from sdtune.models.safetensors_files import load_safetensors

    state = load_safetensors(file)
    by_layer: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        layer, _, rest = key.partition(".")
        by_layer.setdefault(layer, {})[rest] = value
    loaded: set[str] = set()
    for name, module in comfyui_key_map(unet, text_encoder).items():
        tensors = by_layer.get(name)
        delta = None if tensors is None else _delta(tensors, module.weight.shape)
        if delta is None:
            continue
        module.weight.add_(delta.to(module.weight.dtype))
        loaded |= {f"{name}.{k}" for k in tensors}
    return sorted(set(state) - loaded)


_ALGO = {"dora": "full", "loha": "loha", "lokr": "lokr"}  # LyCORIS' name of what the file holds (DoRA: .diff)


def write_lycoris_and_verify(folder: Path, kind: str, *, verify: bool, base: str, allow_pickle: bool = False,
                             revision: str | None = None, variant: str | None = None) -> list[Any]:
    """Write ``folder/lycoris.safetensors`` from the peft files in ``folder`` applied to a fresh fp32 base, and with
    ``verify`` load each consumer's file into another fresh base and compare outputs with that reference: ComfyUI's
    loader on the LyCORIS file, and for DoRA diffusers' ``load_lora_weights`` on ``pytorch_lora_weights``.
    Returns one ``verify.Check`` per consumer (none without ``verify``)."""
    from safetensors.torch import save_file

    from sdtune.models.loading import load_pipeline
    from sdtune.models.lora import LORA_WEIGHTS
    from sdtune.models.safetensors_files import WRITTEN_FIX, reading_safetensors
    from sdtune.models.verify import TOLERANCE, Check, _text_module, probe_inputs, probe_outputs

    def fresh() -> Any:
        pipe = load_pipeline(base, allow_pickle=allow_pickle, revision=revision, variant=variant)
        pipe.unet.to(torch.float32)
        _text_module(pipe).to(torch.float32)
        return pipe

    pipe = fresh()
    text = _text_module(pipe)
    inputs = probe_inputs(pipe.unet, text)
    base_out = probe_outputs(pipe.unet, text, inputs)
    apply_peft_folder(pipe.unet, text, folder)
    reference = probe_outputs(pipe.unet, text, inputs)
    state = lycoris_state(pipe.unet, text, kind)
    ranks = {int(v.shape[0]) for k, v in state.items() if k.endswith(("hada_w1_b", "lokr_w1_b", "lokr_w2_b"))}
    save_file(state, str(Path(folder) / LYCORIS_FILE), metadata={
        "ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": _ALGO[kind]}),
        "ss_network_dim": str(max(ranks) if ranks else "full"), "sdtune_kind": kind})
    del pipe, text
    if not verify:
        return []
    effect = {k: float((reference[k] - base_out[k]).abs().max()) for k in base_out}
    tolerance = {k: TOLERANCE * max(1.0, float(reference[k].abs().max())) for k in base_out}
    has_te = effect["text_encoder"] > 0.0
    checks = []
    consumers = ["kohya-comfyui"] + (["diffusers"] if kind == "dora" else [])
    for consumer in consumers:
        pipe = fresh()
        problem = ""
        try:
            if consumer == "diffusers":
                with reading_safetensors(Path(folder) / LORA_WEIGHTS, fix=WRITTEN_FIX):
                    pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHTS)
            else:
                left = merge_comfyui(pipe.unet, _text_module(pipe), Path(folder) / LYCORIS_FILE)
                problem = f"ComfyUI would not load {counted(len(left), 'key')} (first: {left[0]})" if left else ""
            out = probe_outputs(pipe.unet, _text_module(pipe), inputs)
            diff = {k: float((out[k] - reference[k]).abs().max()) for k in out}
            checks.append(Check(consumer, diff["unet"], diff["text_encoder"] if has_te else None, tolerance, effect,
                                problem=problem))
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            checks.append(Check(consumer, float("inf"), float("inf") if has_te else None, tolerance, effect,
                                problem=f"{consumer} could not load it: {type(exc).__name__}: {exc}"[:400]))
        del pipe
    return checks
