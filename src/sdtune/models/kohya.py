"""Write a LoRA in the kohya format that AUTOMATIC1111, ComfyUI and kohya's sd-scripts load.

The two formats hold the same matrices under different names:

- layer: diffusers ``unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``, kohya
  ``lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q`` (text encoder: ``lora_te_...``);
- matrices: diffusers ``.lora.down.weight`` / ``.lora.up.weight`` (or peft's ``lora_A`` / ``lora_B``), kohya
  ``.lora_down.weight`` / ``.lora_up.weight``;
- scale: diffusers keeps ``lora_alpha`` and ``r`` in the file's adapter metadata; kohya stores one ``.alpha``
  per layer and applies ``alpha / rank``.

For SD 1.x / 2.x, kohya names UNet layers by their diffusers module path with dots turned into underscores
(it trains on a diffusers-style UNet), so the conversion is a renaming plus one alpha per layer. The alpha is
computed so that ``alpha / rank`` equals the scale peft applied during training, including ``alpha != rank``,
per-layer ``rank_pattern`` / ``alpha_pattern`` and rsLoRA; that is what keeps the images identical.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sdtune.atomic import umask_mode
from sdtune.errors import ModelLoadError, SdtuneError

KOHYA_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
# SDXL's two text encoders: CLIP-L is ``lora_te1``, OpenCLIP-bigG ``lora_te2`` (kohya sd-scripts, ComfyUI, diffusers)
SDXL_PREFIXES = {**KOHYA_PREFIXES, "text_encoder": "lora_te1"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

_DIFFUSERS_KEY = re.compile(
    r"^(?P<component>unet|text_encoder|text_encoder_2)\.(?P<module>.+?)\."
    r"(?P<kind>lora\.down|lora\.up|lora_A|lora_B|lora_linear_layer\.down|lora_linear_layer\.up)\.weight$"
)
_DOWN = {"lora.down", "lora_A", "lora_linear_layer.down"}


@dataclass
class LoraLayer:
    component: str  # unet | text_encoder | text_encoder_2
    module: str  # module path inside the component, e.g. down_blocks.1.attentions.0.proj_in
    down: torch.Tensor  # (rank, in[, k, k])
    up: torch.Tensor  # (out, rank[, 1, 1])
    scale: float  # what peft multiplies up @ down by

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def kohya_name(component: str, module: str, sdxl: bool = False) -> str:
    """``('unet', 'down_blocks.1.attentions.0.proj_in')`` -> ``lora_unet_down_blocks_1_attentions_0_proj_in``.

    Text encoder layers are named as in transformers 4's ``CLIPTextModel`` (``text_model.encoder...``), which
    is what kohya, AUTOMATIC1111 and ComfyUI expect; transformers 5 dropped the ``text_model`` level. On SDXL
    (``sdxl``) the first text encoder is ``lora_te1_``, the second ``lora_te2_``. UNet layers keep their diffusers
    paths on SDXL too (``lora_unet_down_blocks_...``): what diffusers' own converter writes, and a name ComfyUI
    maps for SDXL as for SD; kohya's own files use the SGM block names (``input_blocks``), which both also read.
    """
    prefixes = SDXL_PREFIXES if sdxl else KOHYA_PREFIXES
    if component not in prefixes:
        raise SdtuneError(f"no kohya name for LoRA component '{component}'")
    if component.startswith("text_encoder") and not module.startswith("text_model."):
        module = f"text_model.{module}"
    return f"{prefixes[component]}_{module.replace('.', '_')}"


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """peft's rule for ``rank_pattern`` / ``alpha_pattern``: a key matches the end of the module path."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(value)
    return float(default)


def _component_metadata(metadata: dict[str, str] | None) -> dict[str, dict]:
    """The per-component peft config diffusers stores in ``lora_adapter_metadata`` (``unet.r``, ...)."""
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"unreadable LoRA metadata: {exc}") from None
    out: dict[str, dict] = {}
    for key, value in flat.items():
        component, _, field = key.partition(".")
        out.setdefault(component, {})[field] = value
    return out


def peft_scale(config: dict, module: str, rank: int) -> float:
    """The factor peft applies to ``up @ down`` for one layer (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA).

    Without metadata diffusers loads a LoRA with ``alpha = r``: scale 1.
    """
    if not config:
        return 1.0
    if config.get("use_dora"):
        raise SdtuneError("DoRA adapters cannot be written in the kohya LoRA format")
    r = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r") or rank)
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha") or r)
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def read_diffusers_lora(path: Path) -> list[LoraLayer]:
    """The layers of a diffusers-format LoRA file, each with the scale diffusers would load it with."""
    from sdtune.models.safetensors_files import open_safetensors

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"LoRA file {path} does not exist")
    with open_safetensors(path) as fh:
        metadata = fh.metadata()
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    configs = _component_metadata(metadata)
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _DIFFUSERS_KEY.match(key)
        if match is None:
            if key.startswith(tuple(f"{p}_" for p in {*KOHYA_PREFIXES.values(), *SDXL_PREFIXES.values()})):
                raise SdtuneError(f"{path} is already in the kohya format")
            raise SdtuneError(f"{path}: key {key} is not a diffusers LoRA weight (expected unet./text_encoder. "
                              "... .lora.down.weight / .lora.up.weight)")
        side = "down" if match["kind"] in _DOWN else "up"
        pairs.setdefault((match["component"], match["module"]), {})[side] = tensor
    layers = []
    for (component, module), pair in sorted(pairs.items()):
        if set(pair) != {"down", "up"}:
            raise SdtuneError(f"{path}: layer {component}.{module} lacks its {'up' if 'down' in pair else 'down'} "
                              "matrix")
        rank = int(pair["down"].shape[0])
        layers.append(LoraLayer(component, module, pair["down"], pair["up"],
                                peft_scale(configs.get(component, {}), module, rank)))
    if not layers:
        raise SdtuneError(f"{path} holds no LoRA weights")
    return layers


def to_kohya(layers: list[LoraLayer], dtype: torch.dtype = torch.float32,
             sdxl: bool | None = None) -> dict[str, torch.Tensor]:
    """kohya state dict: ``<name>.lora_down.weight``, ``<name>.lora_up.weight``, ``<name>.alpha`` per layer.

    ``sdxl``: name text-encoder layers ``lora_te1_`` / ``lora_te2_`` (None: when the LoRA has a second encoder)."""
    if sdxl is None:
        sdxl = any(layer.component == "text_encoder_2" for layer in layers)
    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        name = kohya_name(layer.component, layer.module, sdxl)
        if f"{name}.alpha" in state:
            raise SdtuneError(f"two layers map to the kohya name {name}")
        state[f"{name}.lora_down.weight"] = layer.down.to(dtype).contiguous()
        state[f"{name}.lora_up.weight"] = layer.up.to(dtype).contiguous()
        # fp32 whatever ``dtype``: every loader reads it with .item(), and a float16 alpha would round the scale
        state[f"{name}.alpha"] = torch.tensor(layer.scale * layer.rank, dtype=torch.float32)
    return state


# kohya sd-scripts' names of a LoRA's base (``ss_base_model_version``) and Stability's model spec architecture
BASE_VERSIONS = {"sd1": ("sd_v1", "stable-diffusion-v1"), "sd2": ("sd_v2", "stable-diffusion-v2-512"),
                 "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base")}


def base_metadata(generation: str, prediction_type: str | None = None, *, title: str | None = None,
                  resolution: int | None = None) -> dict[str, str]:
    """The metadata that tells other tools which base a LoRA is for, as kohya sd-scripts writes it.

    AUTOMATIC1111 files a LoRA as SDXL when ``ss_base_model_version`` starts with ``sdxl_``, as SD 2 when ``ss_v2``
    is ``"True"``, else as SD 1, and hides it while a model of another version is loaded; SD.Next and Forge also
    read ``modelspec.architecture``. ``generation``: ``sd1`` | ``sd2`` | ``sdxl`` (``family.base_generation``);
    ``prediction_type``: the objective trained (``v_prediction`` adds kohya's ``_v``, as on SD 2.x 768).
    """
    version, architecture = BASE_VERSIONS[generation]
    v_prediction = prediction_type == "v_prediction"
    if generation != "sdxl":
        version += "_v" if v_prediction else ""
        architecture = "stable-diffusion-v2-768-v" if generation == "sd2" and v_prediction else architecture
    meta = {"ss_v2": str(generation == "sd2"), "ss_base_model_version": version,
            "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": f"{architecture}/lora",
            # kohya: an SDXL LoRA uses Stability's module names, an SD 1/2 LoRA diffusers'
            "modelspec.implementation": "https://github.com/Stability-AI/generative-models" if generation == "sdxl"
            else "diffusers",
            "modelspec.prediction_type": "v" if v_prediction else "epsilon"}
    if title:
        meta["modelspec.title"] = title
    if resolution:
        meta["modelspec.resolution"] = f"{resolution}x{resolution}"
    return meta


def export_kohya(lora_file: Path, out_file: Path, *, dtype: str = "float32",
                 check: Callable[[Path], None] | None = None, sdxl: bool | None = None,
                 base: dict[str, str] | None = None, bundle: dict[str, torch.Tensor] | None = None) -> Path:
    """Convert a diffusers-format LoRA file to a kohya-format ``.safetensors`` file.

    ``base``: :func:`base_metadata` of the model it was trained on (default: SDXL when it has a second text
    encoder or ``sdxl``, else SD 1, epsilon). Written under a temporary name; ``check(tmp)`` (e.g. a load-and-compare
    verification) may raise, and then no file is left behind: a file under ``out_file`` is always complete and
    checked. ``bundle``: embeddings to carry in the file (``models.embeddings.bundle_state``, fp32), added after
    ``check`` has passed on the LoRA alone (diffusers' ``load_lora_weights`` refuses keys without ``lora``) and read
    back bitwise before the rename.
    """
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise SdtuneError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    layers = read_diffusers_lora(Path(lora_file))
    if sdxl is None:
        sdxl = any(layer.component == "text_encoder_2" for layer in layers)
    state = to_kohya(layers, DTYPES[dtype], sdxl)
    ranks = sorted({layer.rank for layer in layers})
    alphas = sorted({round(layer.scale * layer.rank, 6) for layer in layers})
    metadata = {
        "ss_network_module": "networks.lora",  # what kohya-trained files carry; UIs read dim/alpha from it
        "ss_network_dim": str(ranks[-1]),
        "ss_network_alpha": str(alphas[-1] if len(alphas) == 1 else "Dynamic"),
        "sdtune_source": str(lora_file),
        **(base or base_metadata("sdxl" if sdxl else "sd1", title=Path(out_file).stem)),
    }
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp.safetensors")
    try:
        save_file(state, str(tmp), metadata=metadata)
        if check is not None:
            check(tmp)
        if bundle:
            from sdtune.models.safetensors_files import WRITTEN_FIX, load_safetensors

            save_file({**state, **bundle}, str(tmp), metadata=metadata)
            back = load_safetensors(tmp, fix=WRITTEN_FIX)
            if not all(torch.equal(back[key], value) for key, value in bundle.items()):
                raise SdtuneError(f"{out_file}: the bundled embedding did not read back as written")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    umask_mode(tmp)  # save_file makes 0600 files: a UI running as another user could not read it
    tmp.replace(out_file)
    return out_file
