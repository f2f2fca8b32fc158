"""Check a written LoRA file the way its consumer loads it: outputs must equal the trained adapter's.

A file that loads without an error can still load as another model: diffusers once silently dropped every
attention layer of a file that also held conv layers, an older diffusers ignored text-encoder layers named for
transformers 5, and ComfyUI only warns about keys it cannot place. So after writing, the file is loaded into a
fresh base model by each consumer (one after the other, each undone before the next), and the UNet and text
encoder are run on fixed inputs next to:

- the reference: the run's LoRA (the diffusers-format file training wrote) applied through peft, as training
  applied it, with its matrices rounded to the checked file's storage type (a float16 export is compared with the
  float16-rounded adapter: the check is about loading, not about the precision the user chose).

Consumers: ``diffusers`` (``pipe.load_lora_weights``), ``kohya-diffusers`` (the same call on a kohya file: diffusers'
kohya converter) and ``kohya-comfyui`` (ComfyUI's key convention, implemented here: ComfyUI is not a Python
dependency). Everything runs in fp32, so the only honest difference is float re-association (ComfyUI merges
``W + delta``, peft adds ``x @ A @ B``): measured up to 7e-5 on the tiny model, whose random LoRA outweighs its
weights; the tolerance is ``1e-4 * max(1, |reference|)``. A wrong load (a missing layer, a wrong alpha, rounded
factors) moves outputs by a sizeable part of the adapter's effect (float16-rounded factors alone: 8 % of it on the
tiny model), far above that.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdtune.errors import SdtuneError
from sdtune.models.comfyui import _family, apply_kohya_comfyui, comfyui_key_map
from sdtune.models.safetensors_files import WRITTEN_FIX, open_safetensors, reading_safetensors
from sdtune.words import counted

CONSUMERS = ("diffusers", "kohya-diffusers", "kohya-comfyui")
TOLERANCE = 1e-4  # times max(1, largest |reference output|)


@dataclass
class Check:
    """One consumer's load of one file against the reference (largest absolute differences)."""

    consumer: str
    unet: float
    text_encoder: float | None  # None: the file holds no text-encoder layers
    tolerance: dict[str, float]
    effect: dict[str, float]  # how far the adapter moves each output from the base model
    dtype: str = "float32"  # the file's storage type (the reference is rounded to it)
    problem: str = ""  # keys the consumer did not load, or its error

    @property
    def ok(self) -> bool:
        parts = {"unet": self.unet, "text_encoder": self.text_encoder}
        return not self.problem and all(v is None or v <= self.tolerance[k] for k, v in parts.items())

    def line(self) -> str:
        te = "" if self.text_encoder is None else f", text encoder {self.text_encoder:.1e}"
        verdict = "ok" if self.ok else "MISMATCH"
        extra = f"; {self.problem}" if self.problem else ""
        stored = "" if self.dtype == "float32" else f", against the adapter rounded to {self.dtype} as stored"
        return (f"{self.consumer}: largest difference UNet {self.unet:.1e}{te} (tolerance "
                f"{max(self.tolerance.values()):.1e}; the LoRA moves outputs by up to "
                f"{max(self.effect.values()):.2f}{stored}) {verdict}{extra}")


def probe_inputs(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Fixed inputs: 2 latents of 8x8 (any SD UNet downsamples that far), 2 timesteps, random context, token ids;
    for SDXL (``text_encoder`` a ``DualTextEncoder``) also a pooled embedding and crop geometries (time ids)."""
    gen = torch.Generator().manual_seed(0)
    sdxl = _family(text_encoder).name == "sdxl"
    config = text_encoder.text_encoder.config if sdxl else text_encoder.config
    length = min(16, int(config.max_position_embeddings))
    shape = (2, 2, length) if sdxl else (2, length)
    inputs = {"sample": torch.randn(2, unet.config.in_channels, 8, 8, generator=gen),
              "timesteps": torch.tensor([50, 700]),
              "context": torch.randn(2, 8, unet.config.cross_attention_dim, generator=gen),
              "ids": torch.randint(0, int(config.vocab_size), shape, generator=gen)}
    if sdxl:
        inputs["pooled"] = torch.randn(2, text_encoder.pooled_size, generator=gen)
        inputs["crop_geometry"] = torch.tensor([[32.0, 32, 0, 0, 32, 32], [40.0, 36, 2, 1, 32, 28]])
    return inputs


@torch.no_grad()
def probe_outputs(unet: torch.nn.Module, text_encoder: torch.nn.Module,
                  inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """UNet and text-encoder outputs (fp32, CPU) on :func:`probe_inputs`; the modules are put in eval mode.
    SDXL's text output is both encoders' hidden states and the pooled embedding, flattened side by side."""
    from sdtune.models.family import TextConditioning

    family = _family(text_encoder)
    inputs = inputs or probe_inputs(unet, text_encoder)
    unet.eval()
    text_encoder.eval()
    dtype = next(unet.parameters()).dtype
    device = next(unet.parameters()).device
    pooled = inputs.get("pooled")
    cond = TextConditioning(inputs["context"].to(device, dtype), None if pooled is None else pooled.to(device, dtype))
    out = unet(inputs["sample"].to(device, dtype), inputs["timesteps"].to(device),
               **family.unet_kwargs(cond, inputs.get("crop_geometry"))).sample
    te_device = next(text_encoder.parameters()).device
    te = family.encode(text_encoder, inputs["ids"].to(te_device))
    text = te.hidden.flatten(1) if te.pooled is None else torch.cat([te.hidden.flatten(1), te.pooled], dim=1)
    return {"unet": out.float().cpu(), "text_encoder": text.float().cpu()}


def file_dtype(file: Path) -> torch.dtype:
    """The float type a LoRA file stores its matrices in (the coarsest, if mixed)."""
    with open_safetensors(file, fix=WRITTEN_FIX) as fh:
        stored = {fh.get_slice(k).get_dtype() for k in fh.keys() if not k.endswith(".alpha")}
    for name, dtype in (("BF16", torch.bfloat16), ("F16", torch.float16)):
        if name in stored:
            return dtype
    return torch.float32


def _live_name(module: torch.nn.Module, name: str, names: set[str]) -> str:
    """A text-encoder layer under the running transformers' names (5 dropped ``text_model.``)."""
    for candidate in (name, name.removeprefix("text_model."), f"text_model.{name}"):
        if candidate in names:
            return candidate
    raise SdtuneError(f"LoRA layer {name} is not in the base model's {type(module).__name__}: was it trained on "
                      "this base?")


def apply_reference(unet: torch.nn.Module, text_encoder: torch.nn.Module, source: Path,
                    rounded_to: torch.dtype = torch.float32) -> None:
    """Apply the diffusers-format LoRA ``source`` through peft, as training applied it (matrices rounded to
    ``rounded_to``, then computed in fp32).

    With the file's adapter metadata peft gets the trained ``LoraConfig`` (rank, alpha, patterns, rsLoRA) and
    computes the scale itself; without, ``alpha == rank`` (what loaders assume). Raises SdtuneError when a layer
    of the file is not in the model or a weight does not fit it.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    from sdtune.models.kohya import _component_metadata, read_diffusers_lora
    from sdtune.models.lora import PORTABLE_CONFIG_KEYS

    with open_safetensors(source) as fh:
        configs = _component_metadata(fh.metadata())
    layers = read_diffusers_lora(source)
    for component, module in (("unet", unet), *_family(text_encoder).text_parts(text_encoder).items()):
        mine = [layer for layer in layers if layer.component == component]
        if not mine:
            continue
        names = {n for n, _ in module.named_modules()}
        live = {layer.module: _live_name(module, layer.module, names) for layer in mine}
        meta = {k: v for k, v in configs.get(component, {}).items() if k in PORTABLE_CONFIG_KEYS}
        if meta:
            config = LoraConfig(**meta)
        else:
            rank = mine[0].rank
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(live.values()),
                                rank_pattern={live[la.module]: la.rank for la in mine if la.rank != rank},
                                alpha_pattern={live[la.module]: la.rank for la in mine if la.rank != rank})
        inject_adapter_in_model(config, module, adapter_name="sdtune_reference")
        state = {}
        for layer in mine:
            state[f"{live[layer.module]}.lora_A.weight"] = layer.down.to(rounded_to).float()
            state[f"{live[layer.module]}.lora_B.weight"] = layer.up.to(rounded_to).float()
        try:
            result = set_peft_model_state_dict(module, state, adapter_name="sdtune_reference")
        except RuntimeError as exc:
            raise SdtuneError(f"{source}: its {component} LoRA does not fit the base model ({exc})") from None
        unexpected = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora_" in k]
        if unexpected:
            raise SdtuneError(f"{source}: {len(unexpected)} {component} LoRA weights fit no layer of the base model "
                              f"(first: {unexpected[0]})")


def _load(consumer: str, pipe: Any, file: Path) -> str:
    """Load ``file`` into ``pipe`` the way ``consumer`` does; returns a problem description or ''."""
    if consumer in ("diffusers", "kohya-diffusers"):
        with reading_safetensors(file, fix=WRITTEN_FIX):
            pipe.load_lora_weights(str(file.parent), weight_name=file.name)
        return ""
    if consumer == "kohya-comfyui":
        left = apply_kohya_comfyui(pipe.unet, _text_module(pipe), file)
        return f"ComfyUI would not load {counted(len(left), 'key')} (first: {left[0]})" if left else ""
    raise SdtuneError(f"unknown LoRA consumer '{consumer}'; choose from {', '.join(CONSUMERS)}")


def _text_module(pipe: Any) -> torch.nn.Module:
    """The pipeline's text encoder(s) as training holds them (SDXL: one ``DualTextEncoder`` of both)."""
    from sdtune.models.loading import family_of_pipeline

    return family_of_pipeline(pipe).text_of(pipe)[1]


@contextlib.contextmanager
def _loaded_then_undone(consumer: str, pipe: Any, file: Path) -> Iterator[None]:
    """Within the block ``pipe`` holds what ``consumer`` loaded from ``file``; afterwards the base again.

    Why not a copy of the base per consumer (as before): at SD-2 shapes a copy is 4.8 GB, on top of the loaded
    base and the trained model, which made the end of a CPU run peak at 15.3 GB against the diffusers script's
    6.3 GB (benchmarks/train_bench.py, real-sd2-base, 256 px). diffusers' ``unload_lora_weights`` puts the
    original layers back; ComfyUI's merge is undone by restoring the touched weights (copies of those only)."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if consumer == "kohya-comfyui":
        with open_safetensors(file, fix=WRITTEN_FIX) as fh:
            keys = set(fh.keys())
        for name, module in comfyui_key_map(pipe.unet, _text_module(pipe)).items():
            if f"{name}.lora_up.weight" in keys:
                saved.append((module.weight.data, module.weight.detach().clone()))
    try:
        yield
    finally:
        if consumer in ("diffusers", "kohya-diffusers"):
            pipe.unload_lora_weights()
        for weight, original in saved:
            weight.copy_(original)


def verify_lora_file(file: Path, consumers: Sequence[str], *, base: str, source: Path | None = None,
                     allow_pickle: bool = False, revision: str | None = None,
                     variant: str | None = None) -> list[Check]:
    """Load ``file`` as each consumer does into a fresh ``base`` and compare with the trained adapter: the
    diffusers-format ``source`` (default: ``file``) applied through peft. Returns one :class:`Check` per consumer;
    raises SdtuneError when the reference itself cannot be built (a LoRA for another base model).
    """
    from sdtune.models.fit import check_lora_fits
    from sdtune.models.loading import load_pipeline

    def fresh_base() -> Any:
        pipe = load_pipeline(base, allow_pickle=allow_pickle, revision=revision, variant=variant)
        pipe.unet.to(torch.float32)  # fp32 everywhere: the tolerance assumes it (a base may be saved in fp16)
        _text_module(pipe).to(torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    file = Path(file)
    pipe = fresh_base()
    check_lora_fits(Path(source or file), pipe, base)  # another base: one line, not peft's mismatch dump
    text = _text_module(pipe)
    inputs = probe_inputs(pipe.unet, text)
    base_out = probe_outputs(pipe.unet, text, inputs)
    results: list[tuple[str, dict[str, torch.Tensor] | None, str]] = []
    for consumer in consumers:  # each into the same base, undone after it (no copy of the model)
        try:
            with _loaded_then_undone(consumer, pipe, file):
                problem = _load(consumer, pipe, file)
                results.append((consumer, probe_outputs(pipe.unet, _text_module(pipe), inputs), problem))
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            results.append((consumer, None, f"{consumer} could not load it: {type(exc).__name__}: {exc}"[:400]))
        again = probe_outputs(pipe.unet, _text_module(pipe), inputs)
        if any(not torch.equal(again[k], base_out[k]) for k in base_out):  # never compare against a changed base
            pipe = fresh_base()
    stored = file_dtype(file)
    text = _text_module(pipe)
    apply_reference(pipe.unet, text, Path(source or file), rounded_to=stored)
    reference = probe_outputs(pipe.unet, text, inputs)
    effect = {k: float((reference[k] - base_out[k]).abs().max()) for k in base_out}
    tolerance = {k: TOLERANCE * max(1.0, float(reference[k].abs().max())) for k in base_out}
    dtype = str(stored).removeprefix("torch.")
    has_te = effect["text_encoder"] > 0.0
    checks = []
    for consumer, out, problem in results:
        if out is None:
            checks.append(Check(consumer, float("inf"), float("inf") if has_te else None, tolerance, effect, dtype,
                                problem))
            continue
        diff = {k: float((out[k] - reference[k]).abs().max()) for k in out}
        checks.append(Check(consumer, diff["unet"], diff["text_encoder"] if has_te or diff["text_encoder"] else None,
                            tolerance, effect, dtype, problem))
    return checks


def _targeted(module: torch.nn.Module, targets: Any) -> set[str]:
    """The layers of ``module`` that ``target_modules`` select, as peft matches them. Compared instead of the lists:
    peft shortens a long list of full names to the shortest suffixes that select the same layers (more than 20
    targets, e.g. a LoRA on some blocks only), so the live list and the written one differ while meaning the same."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(target_modules=targets if isinstance(targets, str) else sorted(targets))
    names = [n for n, _ in module.named_modules() if n and "lora_" not in n and not n.endswith("base_layer")]
    return {n for n in names if check_target_module_exists(config, n)}


def check_file_holds(file: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None) -> None:
    """The file holds exactly the live adapter: every trained LoRA matrix under its portable name, equal after the
    file's dtype cast, and the adapter config (rank, alpha, targets) the modules were trained with.

    The writer-side half of :func:`verify_saved_lora` (no model load: cheap). Raises SdtuneError on a difference.
    """
    from peft.utils import get_peft_model_state_dict

    from sdtune.models.kohya import _component_metadata
    from sdtune.models.lora import TRAINED_ADAPTER, portable_text_encoder_state

    with open_safetensors(file, fix=WRITTEN_FIX) as fh:
        stored = {k: fh.get_tensor(k) for k in fh.keys()}
        configs = _component_metadata(fh.metadata())
    expected: dict[str, torch.Tensor] = {}
    # (component, its state, the module's live config, the module)
    parts: list[tuple[str, dict[str, torch.Tensor], Any, torch.nn.Module]] = []
    for role, module in (("unet", unet), ("text", text_encoder)):
        if module is None or not getattr(module, "peft_config", None):
            continue
        state = get_peft_model_state_dict(module, save_embedding_layers=False)
        # the trained adapter; frozen ones below it (model.adapters) are not the run's to save
        live = module.peft_config.get(TRAINED_ADAPTER) or next(iter(module.peft_config.values()))
        if role == "unet":
            parts.append(("unet", state, live, module))
        else:  # SDXL: one adapter over both encoders, saved per encoder
            parts += [(component, portable_text_encoder_state(sub), live, module)
                      for component, sub in _family(module).lora_components(state).items()]
    for component, state, live, module in parts:
        expected.update({f"{component}.{k}": v for k, v in state.items()})
        meta = configs.get(component, {})
        if (meta.get("r"), meta.get("lora_alpha")) != (live.r, live.lora_alpha) or \
                _targeted(module, meta.get("target_modules") or []) != _targeted(module, live.target_modules or []):
            raise SdtuneError(f"{file}: its {component} adapter config (r={meta.get('r')}, alpha="
                              f"{meta.get('lora_alpha')}) is not the trained one (r={live.r}, alpha={live.lora_alpha})")
    if set(stored) != set(expected):
        odd = sorted(set(stored) ^ set(expected))
        raise SdtuneError(f"{file}: {len(odd)} LoRA weights differ in name from the trained adapter (first: {odd[0]})")
    for key, value in expected.items():
        if not torch.equal(stored[key], value.detach().to(stored[key].dtype).cpu()):
            raise SdtuneError(f"{file}: {key} is not the trained weight")


def verify_saved_lora(file: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None, *, base: str,
                      allow_pickle: bool = False, revision: str | None = None, variant: str | None = None,
                      release: Callable[[], None] | None = None) -> Check:
    """End-of-training check of ``RUN/lora``: the file holds the live adapter (:func:`check_file_holds`) and
    diffusers' ``load_lora_weights`` loads it as that adapter (:func:`verify_lora_file`). Costs one load of the
    base model and a few small forward passes. ``release`` is called between the two halves (the live model is
    not used after the first). Raises SdtuneError on a mismatch; returns the check to print."""
    check_file_holds(file, unet, text_encoder)
    if release is not None:
        release()
    (result,) = verify_lora_file(file, ["diffusers"], base=base, allow_pickle=allow_pickle, revision=revision,
                                 variant=variant)
    if not result.ok:
        raise SdtuneError(f"{file} does not load as the trained LoRA: {result.line()}")
    return result


def file_checker(consumers: Sequence[str], base: dict[str, Any], *, source: Path | None = None,
                 echo: Callable[[str], None] = print) -> Callable[[Path], None]:
    """A check for a freshly written LoRA file, to run before it takes its name: each consumer's largest
    differences are echoed, a mismatch raises SdtuneError (so nothing is written). ``base``: keyword arguments of
    :func:`verify_lora_file` saying how to load the base (``base``, ``allow_pickle``, ``revision``, ``variant``)."""

    def check(file: Path) -> None:
        checks = verify_lora_file(file, consumers, source=source, **base)
        for result in checks:
            echo(f"  verified: {result.line()}")
        bad = [c for c in checks if not c.ok]
        if bad:
            raise SdtuneError(f"the written file does not load as the trained LoRA ({bad[0].line()}); nothing was "
                              "written. Please report this with the run's config.")

    return check


def run_base(run_dir: Path) -> dict[str, Any]:
    """How to load a run folder's base model, as keyword arguments of :func:`verify_lora_file`."""
    from sdtune.run_folder import read_run

    info = read_run(run_dir)
    return {"base": info.base, "allow_pickle": info.allow_pickle, "revision": info.revision, "variant": info.variant}
