"""The kinds of low-rank adapter a run can train (``train.lora.kind``), as one table from the config's name to peft's
config class (peft's own registry style), and their kohya/LyCORIS file layout.

=====  ============================  ============================  =========================================
kind   peft                          diffusers ``load_lora_weights``  kohya / LyCORIS layout (A1111, ComfyUI)
=====  ============================  ============================  =========================================
lora   ``LoraConfig``                yes (RUN/lora)                ``lora_down`` / ``lora_up`` / ``alpha``
dora   ``LoraConfig(use_dora=True)`` yes (RUN/lora, magnitudes)    ``.diff`` (the merged weight change)
loha   ``LoHaConfig``                no: peft's own format         ``hada_w1_a`` ... ``hada_w2_b`` / ``alpha``
lokr   ``LoKrConfig``                no: peft's own format         ``lokr_w1`` / ``lokr_w2`` (``_a``/``_b``)
=====  ============================  ============================  =========================================

Why DoRA goes to the kohya layout as ``.diff`` and not as ``dora_scale``: peft's DoRA normalises ``W + sBA`` per
output row and multiplies by the trained magnitude; ComfyUI's ``weight_decompose`` divides by the norm of the
*original* weight on the output axis (and by ``W + sBA``'s norm per input column on the other axis), so no
``dora_scale`` makes ComfyUI compute what peft trained. The merged change ``W' - W`` per layer (``.diff``, which
ComfyUI and AUTOMATIC1111 load) is exact; it is as large as the layers it covers.

LoKr scale: peft multiplies ``kron(w1, w2)`` by ``alpha / r``; ComfyUI applies ``alpha / dim`` only when a factor is
stored decomposed (``_a`` / ``_b``, ``dim`` its rank) and 1 otherwise, so a LoKr whose factors are both full has
the scale folded into ``lokr_w2`` (``kron`` is linear in each factor) and no ``alpha``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdtune.errors import SdtuneError

if TYPE_CHECKING:  # torch only where tensors are made: the server reads the kinds' names without it
    import torch


@dataclass(frozen=True)
class LoraKind:
    """One choice of ``train.lora.kind``."""

    name: str
    prefix: str  # peft's name prefix of the adapter's trained tensors (lora_, hada_, lokr_)
    diffusers: bool  # diffusers' load_lora_weights loads its peft-format file (RUN/lora/pytorch_lora_weights)
    config: Callable[[Any, list[str]], Any]  # (LoraConfig settings of the run, targets) -> peft config
    label: str = "LoRA"  # its name in model cards and summaries
    about: str = "low-rank adapter"  # what it is, for a reader who knows LoRA

    @property
    def title(self) -> str:
        """"LoHa (LyCORIS: low-rank Hadamard product)": how a model card names the adapter a run trained."""
        return f"{self.label} ({self.about})"


def _alpha(settings: Any) -> float:
    return settings.alpha if settings.alpha is not None else settings.rank


def _lora(settings: Any, targets: list[str], dora: bool = False) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=_alpha(settings), lora_dropout=settings.dropout,
                      init_lora_weights="gaussian", target_modules=targets, use_dora=dora)


def _loha(settings: Any, targets: list[str]) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(r=settings.rank, alpha=_alpha(settings), rank_dropout=settings.dropout,
                      target_modules=targets)


def _lokr(settings: Any, targets: list[str]) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(r=settings.rank, alpha=_alpha(settings), rank_dropout=settings.dropout,
                      target_modules=targets, decompose_factor=settings.lokr_factor)


KINDS: dict[str, LoraKind] = {
    "lora": LoraKind("lora", "lora_", True, _lora),
    "dora": LoraKind("dora", "lora_", True, lambda s, t: _lora(s, t, dora=True), "DoRA",
                     "weight-decomposed LoRA: a LoRA plus a trained magnitude per output row"),
    "loha": LoraKind("loha", "hada_", False, _loha, "LoHa", "LyCORIS: low-rank Hadamard product, not a plain LoRA"),
    "lokr": LoraKind("lokr", "lokr_", False, _lokr, "LoKr", "LyCORIS: low-rank Kronecker product, not a plain LoRA"),
}


def kind_of(settings: Any) -> LoraKind:
    return KINDS[getattr(settings, "kind", "lora")]


def is_trained_tensor(name: str, kind: LoraKind, adapter: str) -> bool:
    """Whether parameter ``name`` belongs to the trained adapter ``adapter`` of this kind (peft names it
    ``<layer>.<prefix>...<adapter>[.weight]``; frozen adapters below carry their own names)."""
    return re.search(rf"\.{kind.prefix}[^.]*\.{re.escape(adapter)}(\.|$)", name) is not None


# ----------------------------------------------------------------------------- kohya / LyCORIS layout

_LAYER_KEY = re.compile(r"^(?P<module>.+)\.(?P<tensor>hada_w[12]_[ab]|lokr_w[12](?:_[ab])?|lokr_t2|hada_t[12])$")


def split_layers(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """peft state (``<module>.hada_w1_a`` ...) -> {module: {tensor name: tensor}} for LoHa / LoKr."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise SdtuneError(f"adapter weight {key} is not a LoHa/LoKr tensor this export knows")
        layers.setdefault(match["module"], {})[match["tensor"]] = value
    return layers


def lycoris_layer(kind: str, tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """One layer's LyCORIS tensors (names without the layer prefix) that ComfyUI loads as ``scale * delta``."""
    import torch

    out = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    if any(k.endswith("_t1") or k.endswith("_t2") for k in out):
        raise SdtuneError("effective-conv (Tucker) LoHa/LoKr factors are not exported; train without "
                          "use_effective_conv2d")
    if kind == "loha":  # ComfyUI: alpha / rank(w1_b)
        out["alpha"] = torch.tensor(scale * out["hada_w1_b"].shape[0], dtype=torch.float32)
        return out
    dims = [out[f"lokr_w{i}_b"].shape[0] for i in (1, 2) if f"lokr_w{i}_b" in out]
    if dims:  # ComfyUI: alpha / dim, dim = the rank of the last decomposed factor
        out["alpha"] = torch.tensor(scale * dims[-1], dtype=torch.float32)
    elif "lokr_w2" in out:
        out["lokr_w2"] = out["lokr_w2"] * scale  # both factors full: ComfyUI applies no alpha
    return out


def peft_scale_of(layer: torch.nn.Module, adapter: str) -> float:
    """The factor peft multiplies the adapter's product by in ``layer`` (``alpha / r``)."""
    return float(layer.scaling[adapter])
