"""Extract a LoRA from a full fine-tune: the low-rank SVD of the weight change, as kohya's extraction does.

A full fine-tune changes every weight; users still want a small file they can stack, share and weight. For each
linear (and 1x1 conv) layer, ``delta = W_tuned - W_base`` is factored by SVD and truncated to ``rank``: by
Eckart-Young this is the best rank-``rank`` approximation in the Frobenius norm. What the LoRA cannot hold is
reported rather than hidden: ``relative_error`` (what truncation loses in the extracted layers) and ``coverage``
(the share of the whole weight change that lies in layers a LoRA can represent at all; norms, biases,
embeddings and - unless ``conv`` - 3x3 convolutions stay behind).

The file is written in the diffusers format (``RUN/lora/pytorch_lora_weights.safetensors``, by
``lora.write_lora_file``) with peft's key names (``lora_A`` / ``lora_B``): with the older ``lora.down`` names,
diffusers 0.42 silently skips the attention layers of a file that also holds conv layers. It has a uniform rank
and ``alpha == rank`` (scale 1): a layer narrower than ``rank`` is zero-padded, because diffusers infers a single
alpha when it loads and would otherwise rescale the narrow layers. A ``rank`` above every layer's full rank (the
smaller of its sizes) is capped at the largest of them (``ExtractionReport.max_rank``, said in the summary): a
wider file would hold only zeros, and at ``--rank 100000`` gigabytes of them.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from sdtune.atomic import write_folder
from sdtune.errors import ModelLoadError, SdtuneError
from sdtune.words import counted

EXTRACTION_REPORT = "extraction.json"


@dataclass
class LayerError:
    name: str
    shape: list[int]
    rank: int  # rank actually used (<= requested, limited by the layer's shape)
    relative_error: float


@dataclass
class ExtractionReport:
    """How well the extracted LoRA reproduces the fine-tune's weight change."""

    rank: int  # as asked
    conv: bool = False  # 3x3 convolutions included
    max_rank: int = 0  # the file's rank: ``rank``, or the largest layer's full rank when that is smaller
    layers: int = 0
    relative_error: float = 0.0  # ||delta - up @ down||_F / ||delta||_F over all extracted layers
    max_layer_error: float = 0.0
    coverage: float = 1.0  # ||delta of extracted layers||^2 / ||delta of every parameter||^2
    components: list[str] = field(default_factory=list)
    worst_layers: list[LayerError] = field(default_factory=list)
    source: str = ""
    base: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        capped = 0 < self.max_rank < self.rank
        head = (f"rank {self.rank} is above the layers' sizes: capped at {self.max_rank} per layer (a layer's full "
                f"rank is the smaller of its sizes); " if capped else f"rank {self.rank}: ")
        return (f"{head}{counted(self.layers, 'layer')} of "
                f"{', '.join(self.components) or 'nothing'}; relative "
                f"error {self.relative_error:.4f} (worst layer {self.max_layer_error:.4f}); the LoRA layers hold "
                f"{100 * self.coverage:.1f}% of the weight change")


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Best rank-``rank`` factors of a 2-D ``delta``: returns ``(up, down, used_rank)`` with ``up @ down ~ delta``.

    The singular values are split evenly (``U sqrt(S)``, ``sqrt(S) Vh``) so both factors have similar ranges,
    which keeps them safe in fp16; the product is the same as kohya's ``U S``, ``Vh`` split.
    """
    if delta.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(delta.shape)}")
    used = min(rank, *delta.shape)
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    root = s[:used].sqrt()
    return u[:, :used] * root, root[:, None] * vh[:used], used


def _factor_layer(weight_delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, int, float, float]:
    """Factor a Linear ``(out, in)`` or Conv2d ``(out, in, k, k)`` delta into peft-shaped, rank-padded factors.

    Returns ``(down, up, used_rank, squared_error, squared_norm)``; ``down`` is ``(rank, in[, k, k])`` and
    ``up`` is ``(out, rank[, 1, 1])``, the shapes peft gives ``lora_A`` and ``lora_B``.
    """
    out_features = weight_delta.shape[0]
    matrix = weight_delta.reshape(out_features, -1).float()
    up, down, used = low_rank(matrix, rank)
    squared_error = float((matrix - up @ down).pow(2).sum())
    squared_norm = float(matrix.pow(2).sum())
    padded_up = torch.zeros(out_features, rank, dtype=torch.float32)
    padded_down = torch.zeros(rank, matrix.shape[1], dtype=torch.float32)
    padded_up[:, :used] = up
    padded_down[:used] = down
    if weight_delta.ndim == 4:
        padded_down = padded_down.reshape(rank, *weight_delta.shape[1:])
        padded_up = padded_up.reshape(out_features, rank, 1, 1)
    return padded_down.contiguous(), padded_up.contiguous(), used, squared_error, squared_norm


def _extractable(module: torch.nn.Module, conv: bool) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    if isinstance(module, torch.nn.Conv2d) and module.groups == 1:
        return conv or tuple(module.kernel_size) == (1, 1)
    return False


def widest_rank(modules: list[tuple[torch.nn.Module, bool]]) -> int:
    """The largest full rank (``min(out, in * k * k)``) of the layers extraction would factor in ``modules``
    (``(module, conv)`` pairs); 0 when there are none."""
    return max((min(m.weight.shape[0], m.weight[0].numel()) for module, conv in modules
                for _, m in module.named_modules() if _extractable(m, conv)), default=0)


@dataclass
class _Totals:
    """Squared Frobenius norms summed over components, so errors combine like one big matrix."""

    captured: float = 0.0  # weight change inside extracted layers
    error: float = 0.0  # what truncation to the rank loses there
    total: float = 0.0  # weight change of every parameter
    layers: list[LayerError] = field(default_factory=list)
    components: list[str] = field(default_factory=list)

    def report(self, rank: int, **kw: str) -> ExtractionReport:
        worst = sorted(self.layers, key=lambda e: e.relative_error, reverse=True)
        return ExtractionReport(
            rank=rank, layers=len(self.layers),
            relative_error=math.sqrt(self.error / self.captured) if self.captured else 0.0,
            max_layer_error=worst[0].relative_error if worst else 0.0,
            coverage=self.captured / self.total if self.total else 1.0,
            components=list(self.components), worst_layers=worst[:5], **kw)


def extract_module(base: torch.nn.Module, tuned: torch.nn.Module, rank: int, *, conv: bool = False,
                   totals: _Totals | None = None, component: str = "") -> dict[str, torch.Tensor]:
    """LoRA factors (peft names: ``<layer>.lora_A.weight`` / ``lora_B``) for every changed layer of ``tuned``.

    Layers whose weights did not change are skipped, so a frozen text encoder yields an empty dict.
    """
    if rank < 1:
        raise SdtuneError(f"rank must be at least 1 (got {rank})")
    totals = totals if totals is not None else _Totals()
    base_modules = dict(base.named_modules())
    base_params = dict(base.named_parameters())
    for name, param in tuned.named_parameters():
        if name not in base_params or base_params[name].shape != param.shape:
            raise ModelLoadError(f"{component or 'model'} parameter {name} differs in shape from the base model: "
                                 "was the fine-tune made from this base?")
        totals.total += float((param.detach().float() - base_params[name].detach().float()).pow(2).sum())
    state: dict[str, torch.Tensor] = {}
    for name, module in tuned.named_modules():
        if not name or not _extractable(module, conv):
            continue
        delta = module.weight.detach().float() - base_modules[name].weight.detach().float()
        if not torch.any(delta):
            continue
        down, up, used, err, norm = _factor_layer(delta, rank)
        state[f"{name}.lora_A.weight"] = down
        state[f"{name}.lora_B.weight"] = up
        totals.captured += norm
        totals.error += err
        totals.layers.append(LayerError(f"{component}.{name}" if component else name, list(delta.shape), used,
                                        math.sqrt(err / norm) if norm else 0.0))
    if state and component:
        totals.components.append(component)
    return state


def extract_lora(base_ref: str, tuned_ref: str, out_dir: Path, rank: int, *, conv: bool = False,
                 allow_pickle: bool = False, check: Callable[[Path], None] | None = None,
                 revision: str | None = None, variant: str | None = None) -> ExtractionReport:
    """Extract a rank-``rank`` LoRA of ``tuned_ref - base_ref`` into ``out_dir`` (diffusers format + report).

    ``check(file)`` runs on the written file before the folder takes its final name; if it raises, nothing is
    left behind."""
    from sdtune.models.loading import load_pipeline
    from sdtune.models.lora import write_lora_file

    base = load_pipeline(base_ref, allow_pickle=allow_pickle, revision=revision, variant=variant)
    tuned = load_pipeline(tuned_ref, allow_pickle=allow_pickle)
    totals = _Totals()
    texts = [name for name in ("text_encoder", "text_encoder_2") if getattr(base, name, None) is not None]
    # no wider than the widest layer: padding beyond every layer's full rank would only store zeros
    width = min(rank, widest_rank([(tuned.unet, conv), *((getattr(tuned, n), False) for n in texts)]) or rank)
    with torch.no_grad():
        unet_state = extract_module(base.unet, tuned.unet, width, conv=conv, totals=totals, component="unet")
        te_states = {name: extract_module(getattr(base, name), getattr(tuned, name), width, totals=totals,
                                          component=name) for name in texts}
    te_state = te_states.get("text_encoder")
    if not unet_state and not any(te_states.values()):
        raise SdtuneError(f"{tuned_ref} has the same weights as {base_ref}: there is nothing to extract")
    report = totals.report(rank, source=str(tuned_ref), base=str(base_ref))
    report.conv, report.max_rank = conv, width

    staged: list[Path] = []

    def write(tmp: Path) -> None:
        staged.append(tmp)
        # the one writer: key names every diffusers version loads; SDXL's second encoder as text_encoder_2
        file = write_lora_file(tmp, unet_state, te_state, text_encoder_2_state=te_states.get("text_encoder_2"))
        (tmp / EXTRACTION_REPORT).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        if check is not None:
            check(file)

    try:
        write_folder(Path(out_dir), write)
    except BaseException:
        for tmp in staged:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def check_extractable(run_dir: Path) -> None:
    """Raise, naming what is missing, unless ``run_dir`` is a full fine-tune run folder extraction can read (its
    ``model/``, and its ``config.yaml`` naming the base); cheap, so commands ask before anything loads."""
    from sdtune.run_folder import CONFIG_FILE, read_run

    run_dir = Path(run_dir)
    has_config = (run_dir / CONFIG_FILE).is_file()
    if has_config and read_run(run_dir).trains_lora:
        raise SdtuneError(f"{run_dir} is a LoRA run: its LoRA is already in {run_dir / 'lora'}")
    if not (run_dir / "model" / "model_index.json").is_file():
        raise SdtuneError(f"{run_dir} has no full model (model/); extraction needs a full fine-tune run")
    if not has_config:
        raise SdtuneError(f"{run_dir} has no {CONFIG_FILE}, which names the base model the fine-tune started from: "
                          "extraction needs the run folder `sdtune train` wrote")


def extract_from_run(run_dir: Path, rank: int, out_dir: Path | None = None, *, conv: bool = False,
                     check: Callable[[Path], None] | None = None) -> ExtractionReport:
    """Extract the LoRA of a full fine-tune run (``RUN/model`` minus its base) into ``RUN/lora`` by default;
    ``check(file)`` verifies the written file before it takes its place (see :func:`extract_lora`)."""
    from sdtune.run_folder import read_run

    run_dir = Path(run_dir)
    check_extractable(run_dir)
    run = read_run(run_dir)  # the one reader of a run folder (resolves a base relative to the run)
    return extract_lora(run.base, str(run_dir / "model"), out_dir or run_dir / "lora", rank,
                        conv=conv, allow_pickle=run.allow_pickle, revision=run.revision, variant=run.variant,
                        check=check)
