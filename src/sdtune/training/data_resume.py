"""Resume versus the data folders: a checkpoint's position counts examples of the stream it was made on.

The config comparison (``sdtune.training.resume``) cannot see the files the config points at. Each checkpoint
records them (``sdtune.data.stream_record``); on resume the folders as they are now are compared with that record
before any model is loaded:

* unchanged: the resume is exact, as always;
* changed (images added, removed or edited, captions changed, a masked loss's masks edited, class images
  replaced): refused with one line per folder saying what changed, and how to go on: a new run, or
  ``sdtune train ... --resume latest --new-data-epoch``, which trains on the data as it is now, starting a new
  data epoch at the checkpoint's step (the stream's position 0 is that step), says so and records it in the
  resume history (``metrics.json``, ``config.yaml`` comments, every later checkpoint);
* a checkpoint made before records were kept: resumed, with a note that the data could not be compared; one made
  before masks were recorded is compared on images and captions only (its masks are never "changed").
"""

from __future__ import annotations

from typing import Any

from sdtune.errors import ConfigError, listing
from sdtune.training import checkpoint as ckpt
from sdtune.training.resume import ResumePlan

FLAG = "--new-data-epoch"
ORIGIN = "data_origin"  # TrainerState.extra key: the micro-step at which the current data stream began


def check_data(plan: ResumePlan, record: dict[str, Any], new_data_epoch: bool) -> list[str]:
    """Compare the data ``record`` of now with ``plan.checkpoint``'s; fill ``plan.data``; return lines to print.

    Raises ConfigError (one message: what changed and how to go on) when the data changed and ``new_data_epoch``
    is not set.
    """
    from sdtune.data.stream_record import record_changes

    saved = ckpt.read_data_record(plan.checkpoint)
    if saved is None:
        plan.data = {"note": "checkpoint without a data record (made by an older sdtune): the data folders could "
                             "not be compared with it"}
        return [f"note: {plan.data['note']}; resuming at its position"]
    changes = record_changes(saved, record)
    if not changes:
        return [f"note: {FLAG}: the data did not change since {plan.checkpoint.name}; resuming exactly"] \
            if new_data_epoch else []
    if not new_data_epoch:
        raise ConfigError(listing(
            f"cannot resume {plan.checkpoint}: the training data changed since it was saved (its data position "
            "would point into another stream):", changes,
            f"Start a new run (another output_dir), put the data back, or resume with {FLAG} to train on the data "
            f"as it is now, starting a new data epoch at step {plan.step}"))
    plan.data = {"changed": changes, "new_data_epoch": True}
    return [f"{FLAG}: the data changed since {plan.checkpoint.name}; a new data epoch starts at step {plan.step}:",
            *(f"  {line}" for line in changes)]


def start_new_epoch(state: ckpt.TrainerState, plan: ResumePlan) -> None:
    """After loading: the new stream's position 0 is this micro-step (kept by every later checkpoint)."""
    if plan.data.get("new_data_epoch"):
        state.extra[ORIGIN] = state.micro_step


def stream_start(state: ckpt.TrainerState) -> int:
    """The micro-step position in the current stream (``micro_step`` minus where the stream began)."""
    return state.micro_step - int(state.extra.get(ORIGIN, 0))
