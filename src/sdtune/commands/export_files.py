"""Where ``sdtune export`` writes: output names it accepts, folders it makes, and extractions it replaces.

* A single-file export (kohya, or a diffusers LoRA file) must be named ``*.safetensors``: AUTOMATIC1111 and ComfyUI
  list only such files, and diffusers reads any other name as a pickle (:func:`check_file_name`).
* Output folders are made only when there is something to write, and a failed export removes the (empty) folders
  it made (:func:`sdtune.atomic.removing_new_folders`): no empty ``RUN/export/`` after a failed verification.
* An extraction into ``RUN/lora`` replaces the earlier one there; the command says which (:func:`earlier_extraction`,
  :func:`replaced_line`).
* What a written file means to the tools that load it, said where it is written (``export`` and ``pick``): the
  prompt words of an embedding file and of a token bundled in a LoRA file (:func:`embedding_use`, :func:`bundle_use`),
  and a LoRA that is the identity (:func:`identity_lora_note`).
"""

from __future__ import annotations

from pathlib import Path

from sdtune.errors import SdtuneError

SUFFIX = ".safetensors"


def check_file_name(file: Path, what: str) -> None:
    """Refuse an output file whose name does not end in ``.safetensors`` (one line, with the name to pass)."""
    if file.suffix.lower() != SUFFIX:
        raise SdtuneError(f"-o {file}: {what} must end in {SUFFIX} (AUTOMATIC1111 and ComfyUI list only such files, "
                          f"and diffusers loads other names as pickles): pass -o {file.with_suffix(SUFFIX)}")


def earlier_extraction(lora_dir: Path) -> dict | None:
    """What ``lora_dir`` holds before an extraction replaces it: its ``extraction.json`` (``{}`` for a LoRA file
    without one), or None when it holds no LoRA."""
    from sdtune.models.extract import EXTRACTION_REPORT
    from sdtune.models.lora import LORA_WEIGHTS
    from sdtune.run_folder import read_json

    if not (lora_dir / LORA_WEIGHTS).is_file():
        return None
    return read_json(lora_dir / EXTRACTION_REPORT) or {}


def _settings(report: dict) -> str:
    return f"rank {report.get('rank', '?')}, {'with' if report.get('conv') else 'without'} --conv"


def replaced_line(lora_dir: Path, earlier: dict, now: dict, run: Path) -> str:
    """The note that an extraction replaced the one ``lora_dir`` held (settings of both), and how to keep one."""
    was = (f"the earlier extraction in {lora_dir} ({_settings(earlier)})" if earlier
           else f"the earlier LoRA in {lora_dir}")
    return (f"note: replaced {was} with this one ({_settings(now)}); `sdtune export kohya {run}` and stacks that use "
            f"{lora_dir} now get this one. To keep RUN/lora as it is, extract with -o FOLDER (or -o FILE.safetensors "
            "with --format kohya)")


def embedding_use(file: Path) -> str:
    """How AUTOMATIC1111 and ComfyUI load an embedding FILE on its own: both name it after the file (``_sks_`` for
    ``_sks_.safetensors``, whatever token it was trained as), ComfyUI with its ``embedding:`` prefix."""
    return (f"AUTOMATIC1111: copy it to its embeddings/ folder and write {file.stem} in the prompt; ComfyUI: "
            f"models/embeddings/ and write embedding:{file.stem} in the prompt")


def bundle_use(lora: Path, tokens: list[str], copy: Path) -> str:
    """How the two tools reach a token bundled in a kohya LoRA file (``bundle_emb.<token>.*`` keys) and its copy
    beside it. AUTOMATIC1111's Lora extension registers each bundled embedding under the name in its key (the token
    as trained, ``<sks>``), only while ``<lora:NAME:w>`` is in the prompt, and skips it when its embeddings/ folder
    already has one of that name. ComfyUI's LoRA loader reads no bundle (it warns "lora key not loaded" for those
    keys), so it needs the embedding file, named after the file."""
    words = " ".join(tokens)
    return (f"  with the run's learned token: bundled in the LoRA file (keys bundle_emb.{tokens[0]}.*). "
            f"AUTOMATIC1111 names it after that key: write <lora:{lora.stem}:1> {words} in the prompt (the token "
            f"exists only while the LoRA is in the prompt). ComfyUI does not read the bundle: LoraLoader for the "
            f"LoRA, and {copy} to models/embeddings/, write embedding:{copy.stem} in the prompt. diffusers' "
            "load_lora_weights refuses the bundled file: use RUN/lora and RUN/embeddings")


def identity_lora_note(source: Path, home: Path) -> str | None:
    """A note that the diffusers-format LoRA ``source`` is the identity (every up matrix 0: as initialised), and
    why; None when it is not. The usual why: a checkpoint of a pivotal run saved before its LoRA started
    (``train.textual_inversion.lora_start``; ``home`` is then the folder ``sdtune pick`` or ``eval --checkpoints``
    wrote out, naming its checkpoint in checkpoint.json), said in the words ``sdtune pick`` uses."""
    from sdtune.evaluation.checkpoints import SOURCE_FILE
    from sdtune.evaluation.pick import before_lora_line, lora_start_of
    from sdtune.models.safetensors_files import open_safetensors
    from sdtune.run_folder import STEP_DIR, is_run_folder, read_json

    with open_safetensors(source) as handle:
        ups = [key for key in handle.keys() if "lora_B" in key or "lora_up" in key]
        if not ups or any(bool(handle.get_tensor(key).any()) for key in ups):
            return None
    why = "this LoRA is the identity: every lora_B matrix is 0 (it has not trained)"
    made_from = Path(str((read_json(home / SOURCE_FILE) or {}).get("checkpoint", "")))
    step = STEP_DIR.match(made_from.name)
    start = lora_start_of(home) if step and is_run_folder(home) else None
    if step and start is not None and int(step.group(1)) < start[0]:
        why = before_lora_line([int(step.group(1))], *start)
    return f"note: {why}"


def embedding_copy(export_file: Path, embedding_name: str) -> Path:
    """Where the embedding file that goes with the export ``export_file`` is written: ``RUN/export/<its stem>/<name>``.

    Its own folder because its file name is the prompt word in AUTOMATIC1111 and ComfyUI (``_sks_``), so it cannot
    carry a step: beside the LoRA files, ``sdtune pick``'s step-3 export and ``sdtune export``'s final one wrote the
    same ``export/_sks_.safetensors``, the later silently replacing the other (found by a newcomer review)."""
    return export_file.parent / export_file.stem / embedding_name
