"""A run's checkpoints as models: evaluate each one like a finished run, and export the one worth keeping.

Users of every trainer ask which checkpoint to keep. A checkpoint (``RUN/checkpoints/step-N``) is resume state:
the trainable weights, optimizer, RNG. To generate with it, its LoRA matrices are written out as a small run
folder ``OUT/checkpoints/<run>/step-N/`` (the run's ``config.yaml`` and ``lora/``), exactly what the run itself
would have saved had it stopped there: the adapter is rebuilt as training built it (``models.lora.add_lora`` with
the run's settings), the checkpoint's weights are copied in, and ``models.lora.save_lora`` writes them (a
checkpoint that learns a token: its rows as ``embeddings/<token>.safetensors``, beside the LoRA when pivotal). Every
tool that takes a run folder (``generate``, ``eval``, ``export``) then takes a checkpoint too. A folder is
rewritten only when its checkpoint's weights changed (content hash).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sdtune.errors import SdtuneError

SOURCE_FILE = "checkpoint.json"  # in a materialised folder: which checkpoint, and the hash of its weights


@dataclass
class CheckpointModel:
    """One checkpoint of a run, materialised as a run folder."""

    run: Path
    step: int
    folder: Path
    final: bool  # the run's last checkpoint: the weights its lora/ holds

    @property
    def label(self) -> str:
        return f"{self.run.name} @ step {self.step}" + (" (final)" if self.final else "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_checkpoints(run: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of a run's complete checkpoints, oldest first."""
    from sdtune.run_folder import CHECKPOINTS_DIR, list_checkpoints, step_of

    return [(step_of(path), path) for path in list_checkpoints(Path(run) / CHECKPOINTS_DIR)]


def materialise(run: Path, checkpoint: Path, folder: Path) -> Path:
    """Write ``folder`` = the run's config + the checkpoint's LoRA (diffusers format) and/or its token's embedding
    (``embeddings/<token>.safetensors``), as the run writes them; returns ``folder``."""
    from sdtune.atomic import atomic_write_json, write_folder
    from sdtune.config import config_from_dict
    from sdtune.models.embeddings import EMBEDDINGS_DIR, add_learned_token, save_embedding
    from sdtune.models.loading import load_components
    from sdtune.models.lora import add_lora, apply_model_adapters, save_lora
    from sdtune.run_folder import read_run_config
    from sdtune.training.checkpoint import load_trainable_state_, read_evaluated_weights

    digest = _sha256(checkpoint / "trainable.safetensors")
    source = folder / SOURCE_FILE
    cfg = config_from_dict(read_run_config(run), source=str(run / "config.yaml"))
    lora, learned = cfg.train.lora, cfg.train.textual_inversion
    written = ([folder / "lora" / "pytorch_lora_weights.safetensors"] if lora is not None else []) \
        + ([_embedding_file(folder, learned.token)] if learned is not None else [])
    if source.is_file() and json.loads(source.read_text(encoding="utf-8")).get("sha256") == digest \
            and all(file.is_file() for file in written):
        return folder
    if not written:
        raise SdtuneError(f"{run} is a full fine-tune: its checkpoints hold the whole UNet, which this evaluation "
                          "does not write out; evaluate its final model/, or train with train.lora")
    if lora is not None and lora.kind in ("loha", "lokr"):
        raise SdtuneError(f"{run} trains a {lora.kind} adapter: checkpoint evaluation writes diffusers-format LoRA "
                          "files, which cannot hold it; evaluate its final lora/ (sdtune eval RUN)")
    comps = load_components(cfg.model.base, allow_pickle=cfg.model.allow_pickle, revision=cfg.model.revision,
                            variant=cfg.model.variant)
    comps.text_encoder.requires_grad_(False)
    modules = {}
    if lora is not None:
        modules["unet"] = comps.unet
        apply_model_adapters(cfg, comps.unet, comps.text_encoder)  # as training built it (same parameter names)
        add_lora(comps.unet, lora, lora.targets)
        if cfg.train.train_text_encoder:
            add_lora(comps.text_encoder, lora, lora.text_encoder_targets)
            modules["text_encoder"] = comps.text_encoder
    if learned is not None:  # the token added and the embedding wrapped as training did (same parameter names)
        add_learned_token(comps.tokenizer, comps.text_encoder, learned.token, learned.initializer,
                          learned.norm_limit, learned.num_vectors)
        modules["text_encoder"] = comps.text_encoder
    load_trainable_state_(modules, read_evaluated_weights(checkpoint))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text((run / "config.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    if learned is not None:
        write_folder(folder / EMBEDDINGS_DIR, lambda tmp: save_embedding(tmp, comps.text_encoder, learned.token))
    if lora is not None:
        text_lora = comps.text_encoder if cfg.train.train_text_encoder else None

        def write(tmp: Path) -> None:
            save_lora(tmp, comps.unet, text_lora, lora)
            if lora.kind == "dora":  # and its kohya/LyCORIS file, as the run writes (what pick exports)
                from sdtune.models.lycoris import write_lycoris_and_verify, write_peft_folder

                write_peft_folder(tmp, comps.unet, text_lora, lora)
                write_lycoris_and_verify(tmp, "dora", verify=False, base=cfg.model.base,
                                         allow_pickle=cfg.model.allow_pickle, revision=cfg.model.revision,
                                         variant=cfg.model.variant)

        write_folder(folder / "lora", write)
    atomic_write_json(source, {"run": str(run), "checkpoint": str(checkpoint), "sha256": digest})
    return folder


def _embedding_file(folder: Path, token: str) -> Path:
    from sdtune.models.embeddings import EMBEDDINGS_DIR, embedding_file_name

    return folder / EMBEDDINGS_DIR / embedding_file_name(token)


def expand_checkpoints(run: Path, out: Path) -> list[CheckpointModel]:
    """Every complete checkpoint of a LoRA or textual-inversion run, materialised under
    ``OUT/checkpoints/<run name>-<hash>/``."""
    run = Path(run).expanduser().resolve()
    found = run_checkpoints(run)
    if not found:
        raise SdtuneError(f"{run} has no checkpoints to compare (RUN/checkpoints/step-N). Keep several with "
                          "checkpoint.every and checkpoint.keep (LoRA and embedding checkpoints are small)")
    from sdtune.run_folder import read_metrics

    root = Path(out) / "checkpoints" / f"{run.name}-{hashlib.sha256(str(run).encode()).hexdigest()[:6]}"
    final_step = (read_metrics(run) or {}).get("steps")
    return [CheckpointModel(run, step, materialise(run, path, root / path.name), step == final_step)
            for step, path in found]
