"""The end of a run: final validation, outputs (lora/, model/, embeddings/), metrics.json and the model card.

metrics.json is written last: it is what marks a run finished. A stop request (``sdtune.stopping``) lets the
output being written complete and skips the rest; the final checkpoint is already saved, so ``sdtune train
RUN/config.yaml --resume latest`` runs only this part again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdtune.config import RunConfig
from sdtune.data.cache import on_device
from sdtune.errors import TrainingStopped
from sdtune.stopping import Stop
from sdtune.training import checkpoint as ckpt


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "finished" | "interrupted"
    step: int
    final_loss: float | None
    outputs: dict[str, str] = field(default_factory=dict)


def validate(cfg: RunConfig, accelerator, comps, trainables, view, step: int, run_dir: Path, stop: Stop) -> bool:
    """Validation images from the live modules, under the training's autocast, with the evaluated weights (``view``:
    an ``EvalWeights``; the EMA or schedule-free's average when kept) swapped in.

    False when a stop request cut it short (process 0 decides; the loop's next stop check tells the others).
    """
    complete = True
    if accelerator.is_main_process:
        from sdtune.training.trackers import log_images
        from sdtune.training.validation import ValidationStopped, run_validation

        text_encoder = trainables.text_encoder if trainables.text_encoder is not None else comps.text_encoder
        try:
            with on_device(accelerator.device, comps.vae, text_encoder), view.swapped():  # cached encoders: offloaded
                images = run_validation(cfg, comps, trainables.unet, text_encoder, step, run_dir / "samples",
                                        autocast=accelerator.autocast, should_stop=lambda: stop.requested)
            log_images(accelerator, images, step)
        except ValidationStopped:
            complete = False
    accelerator.wait_for_everyone()
    return complete


def _rank_checksums(accelerator, trainables) -> list[float]:
    """A float64 sum of every trainable weight, per process: data-parallel ranks must agree exactly."""
    total = sum(p.detach().double().sum() for p in trainables.parameters())
    gathered = accelerator.gather(torch.tensor([float(total)], dtype=torch.float64, device=accelerator.device))
    sums = [float(x) for x in gathered.cpu()]
    if len(set(sums)) > 1 and accelerator.is_main_process:
        print(f"warning: data-parallel ranks ended with different weights: {sums}")
    return sums


def release_models(*modules: torch.nn.Module | None) -> None:
    """Free the weights of spent modules (moved to the meta device: every holder of the module sees it, so the
    memory goes even though the loop, the accelerator and the pipeline objects still refer to them). Used once the
    final checkpoint and the LoRA file are written: the LoRA check that follows loads the base model afresh, and
    the fused model (``RUN/model``) is built from the written files, so neither needs the live weights."""
    for module in modules:
        if isinstance(module, torch.nn.Module):
            module.to("meta")


def _output_writers(cfg: RunConfig, run_dir: Path, trainables, comps) -> list[tuple[str, Callable[[], Path]]]:
    """The final outputs in the order they are written (the fused model reads the written lora/)."""
    from sdtune.training import outputs

    unet, text_encoder = trainables.unet, trainables.text_encoder
    embedding: list[tuple[str, Callable[[], Path]]] = []
    if cfg.train.textual_inversion is not None:  # first: the LoRA writer below frees the live text encoder
        from sdtune.training.textual_inversion import save_embedding_output

        learned_in = text_encoder
        embedding = [("embedding", lambda: save_embedding_output(run_dir, cfg, comps.tokenizer, learned_in))]
        if cfg.train.lora is None:
            return embedding
        text_encoder = text_encoder if cfg.train.train_text_encoder else None  # pivotal: its rows are no LoRA
    if cfg.train.lora is None:
        return [("model", lambda: outputs.save_full_model(run_dir, cfg, unet, text_encoder))]
    def release() -> None:  # comps.unet is the trained unet; comps.text_encoder the frozen one when not trained
        release_models(unet, text_encoder, comps.vae, comps.text_encoder)

    return embedding + ([("lora", lambda: outputs.save_lora_output(run_dir, cfg, unet, text_encoder, release))]
            if cfg.save.lora else []) \
        + ([("model", lambda: outputs.save_fused_model(run_dir, cfg))] if cfg.save.full_model else [])


def _attention_maps(cfg: RunConfig, comps) -> dict[str, str]:
    """The cross-attention loss's maps in words for the model card (left out, the term picks a level itself, which
    the card would otherwise not name)."""
    if cfg.train.attention_loss is None or cfg.train.textual_inversion is None:
        return {}
    from sdtune.training.attention_loss import describe_maps

    return {"attention_maps": describe_maps(cfg, comps)}


def finish(cfg: RunConfig, accelerator, comps, trainables, view, state, run_dir: Path, timing: dict,
           counts: dict[str, int], stop: Stop, validated: int) -> TrainResult:
    """Final validation and outputs, then metrics.json (which marks the run finished).

    ``view`` (``EvalWeights``): its evaluated weights (EMA, schedule-free's average) are swapped in for good here,
    after the final checkpoint: the outputs and the final validation show them.

    A stop request lets the output being written complete and skips the rest: the final checkpoint is saved, so
    ``--resume latest`` runs only this again.
    """
    from sdtune.training import outputs

    result = TrainResult(run_dir, "finished", state.step, state.last_loss)
    checksums = _rank_checksums(accelerator, trainables)
    view.apply()
    final = ckpt.step_dir_name(state.step)
    stop.phase(f"completing the output being written (the final checkpoint {final} is saved)",
               f"quit: the final checkpoint {final} is saved; `sdtune train {run_dir / 'config.yaml'} --resume "
               "latest` writes the outputs without training again")
    stopped = bool(accelerator.gather(torch.tensor([float(stop.requested)], device=accelerator.device)).any())
    if cfg.validation.prompts and validated != state.step and not stopped:
        stopped = not validate(cfg, accelerator, comps, trainables, view, state.step, run_dir, stop)
    if accelerator.is_main_process and not stopped:
        for name, write in _output_writers(cfg, run_dir, trainables, comps):
            if stop.requested:
                break
            result.outputs[name] = str(write())
        stopped = stop.requested
    if accelerator.is_main_process and not stopped:
        metrics = {"status": "finished", "steps": state.step, "final_loss": state.last_loss,
                   "prediction_type": comps.noise_scheduler.config.prediction_type, "family": comps.family.name,
                   "mixed_precision": cfg.train.mixed_precision,
                   **timing, "method": cfg.method, **counts,
                   "outputs": result.outputs, "processes": accelerator.num_processes,
                   "rank_weight_checksums": checksums, "history": state.history,
                   **({"val_loss": state.extra["val_loss"]} if "val_loss" in state.extra else {}),
                   **_attention_maps(cfg, comps)}
        outputs.write_metrics(run_dir, metrics)
        outputs.write_model_card(run_dir, cfg, metrics, comps.family.pipeline_class_name)
    stopped = bool(accelerator.gather(torch.tensor([float(stopped)], device=accelerator.device)).any())
    accelerator.end_training()
    if stopped:
        if accelerator.is_main_process:
            written = f" ({', '.join(result.outputs)} written)" if result.outputs else ""
            print(f"stopped while finishing: the final checkpoint {final} is saved{written}; `sdtune train "
                  f"{run_dir / 'config.yaml'} --resume latest` writes the outputs without training again")
        return TrainResult(run_dir, "interrupted", state.step, state.last_loss, result.outputs)
    if stop.requested and accelerator.is_main_process:
        print("the stop request came while the last file was written: the run is complete")
    if not math.isfinite(state.last_loss or 0.0):
        raise TrainingStopped("training ended with a non-finite loss")
    return result
