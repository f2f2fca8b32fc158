"""Where ``sdtune export`` writes: output names it accepts, folders it makes, and extractions it replaces.

* A single-file export (kohya, or a diffusers LoRA file) must be named ``*.safetensors``: AUTOMATIC1111 and ComfyUI
  list only such files, and diffusers reads any other name as a pickle (:func:`check_file_name`).
* Output folders are made only when there is something to write, and a failed export removes the (empty) folders
  it made (:func:`sdtune.atomic.removing_new_folders`): no empty ``RUN/export/`` after a failed verification.
* An extraction into ``RUN/lora`` replaces the earlier one there; the command says which (:func:`earlier_extraction`,
  :func:`replaced_line`).
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
