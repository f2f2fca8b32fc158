"""The one training loop: text-to-image and DreamBooth, LoRA or full, on accelerate.

Methods differ only in data (see ``sdtune.data.subsets``) and in which parameters are trainable (see
``sdtune.training.modules``); what one micro-batch computes and how one update applies is ``sdtune.training.step``.
Exact resume rests on three rules:

1. every random draw of a micro-step (VAE sample, noise, timesteps, LoRA dropout) comes from the global RNG
   reseeded from (seed, micro-step, rank) at the start of that micro-step;
2. the data stream is position-addressed, and the position is saved;
3. checkpoints restore weights, optimizer and scheduler state in place into the live objects.

A resume may change some settings (``sdtune.config_resume``, applied by ``sdtune.training.resume``); a resume
without changes is exact. A diverging run stops before anything non-finite is saved
(``sdtune.training.divergence``). Ctrl-C / SIGTERM stop it at the next safe point of whatever phase it is in
(``sdtune.stopping``): before training nothing is saved; during training the step finishes and a checkpoint is
saved; while finishing, the final checkpoint is always complete and the output being written is completed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sdtune.config import RunConfig, dump_config, resolve_config
from sdtune.data.buckets import bucket_step_of, check_bucket_resolution
from sdtune.data.cache import Conditioner, cache_for_run
from sdtune.data.class_images import check_for_run as check_class_images
from sdtune.data.held_out import held_out_paths
from sdtune.data.stream_record import stream_record
from sdtune.data.subsets import StreamPositions, build_stream, collate, data_counts, write_bucket_record
from sdtune.errors import DiskFullError, Interrupted, SdtuneError
from sdtune.run_status import mark_unfinished
from sdtune.stopping import QUIT_NOW, NotStarted, Stop, stop_scope
from sdtune.training import checkpoint as ckpt
from sdtune.training import data_resume
from sdtune.training import resume as resuming
from sdtune.training.attention_loss import build_attention_loss
from sdtune.training.divergence import DivergenceGuard
from sdtune.training.eval_weights import EvalWeights, build_ema
from sdtune.training.finish import TrainResult, finish, validate
from sdtune.training.modules import (
    build_lr_scheduler,
    build_optimizer,
    check_machine,
    check_mixed_precision,
    configure_trainables,
    frozen_dtypes,
    prepare_models,
)
from sdtune.training.pivotal import hold_phases
from sdtune.training.preservation import build_preservation
from sdtune.training.progress_log import ProgressLog
from sdtune.training.step import StepLoss, apply_update, micro_step_seed, timestep_range
from sdtune.training.textual_inversion import check_learned_token
from sdtune.training.val_loss import build_validation_loss
from sdtune.words import counted


def _prepare_run_dir(cfg: RunConfig, resume: str | None) -> Path | None:
    from sdtune.output_folders import check_run_output

    run_dir = Path(cfg.output_dir)
    from sdtune.models.presets import check_preset_cache

    existed = run_dir.exists()  # before check_run_output, which makes it
    check_run_output(cfg)  # never over a user's files, never into the data, writable (before anything is written)
    check_preset_cache(cfg.model.base)  # a built-in model built on first use: its cache must be writable
    ckpt.clean_partial(run_dir / "checkpoints")
    if resume is None:
        if ckpt.list_checkpoints(run_dir / "checkpoints"):
            raise SdtuneError(f"{run_dir} already has checkpoints. Continue it with --resume latest, or choose "
                              "another output_dir (nothing was overwritten)")
        return None
    found = ckpt.resolve_checkpoint(run_dir, resume)
    if found is None:
        print(resuming.fresh_start_line(run_dir, existed))
    return found


def _cpu_processes() -> bool:
    """Launched with several processes (torchrun) where accelerate finds no GPU-like device.

    accelerate then sets up each process as a run of its own (N independent runs writing into one folder)
    unless it is told to use the CPU (``ACCELERATE_USE_CPU=1``). Train data-parallel on the CPU instead, as
    ``accelerate launch --multi_gpu --num_processes N`` with that variable would.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from accelerate.state import AcceleratorState, PartialState

    if PartialState().num_processes > 1:
        return False
    AcceleratorState._reset_state(reset_partial_state=True)  # nothing was started: rebuild it for the CPU
    return True


def _make_accelerator(cfg: RunConfig, run_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    check_mixed_precision(cfg.train.mixed_precision)
    trackers = list(cfg.logging.trackers) or None
    cpu = _cpu_processes()
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision, log_with=trackers, cpu=cpu,
                              project_config=ProjectConfiguration(project_dir=str(run_dir),
                                                                  logging_dir=str(run_dir / "logs")))
    if cpu and accelerator.is_main_process:
        print(f"no GPU: training data-parallel on the CPU with {counted(accelerator.num_processes, 'process')}")
    return accelerator


def _ensure_class_images(cfg: RunConfig, accelerator, stop: Stop, plan) -> None:
    """Process 0 makes the missing class images; a stop between batches keeps them and ends before training."""
    from sdtune.data.class_images import class_image_jobs, generate_for_run

    if not class_image_jobs(cfg.data):
        return
    stopped = ""
    if accelerator.is_main_process:
        try:
            generate_for_run(cfg, accelerator.device)
        except Interrupted as exc:
            stopped = str(exc)
    _not_started(stop, plan, accelerator, stopped)


def train(cfg: RunConfig, resume: str | None = None, new_data_epoch: bool = False) -> TrainResult:
    """Run (or continue) one training run and write its outputs; see the module docstring for guarantees.

    Returns status "interrupted" when Ctrl-C / SIGTERM stopped it (it printed what was saved); a second Ctrl-C
    raises :class:`~sdtune.errors.QuitWithoutSaving`.
    """
    with stop_scope() as stop:
        try:
            return _train(cfg, resume, stop, new_data_epoch)
        except NotStarted as exc:
            if os.environ.get("RANK", "0") == "0":
                print(exc)
            return TrainResult(Path(cfg.output_dir), "interrupted", exc.step, None)


def _not_started(stop: Stop, plan, accelerator=None, why: str = "") -> None:
    """Raise NotStarted when a stop was asked for (on any process, once they are connected); ``why``: what
    stopped, when a phase already knows (class images)."""
    asked = stop.requested or bool(why)
    if accelerator is not None:
        asked = bool(accelerator.gather(torch.tensor([float(asked)], device=accelerator.device)).any())
    if asked:
        raise NotStarted(why or ("stopped before training started: nothing to save" if plan is None else
                                 f"stopped before training resumed: nothing new to save ({plan.checkpoint} is "
                                 "still the checkpoint to resume from)"), plan.step if plan is not None else 0)


def _train(cfg: RunConfig, resume: str | None, stop: Stop, new_data_epoch: bool) -> TrainResult:
    from sdtune.data.check_before_train import check_training_data
    from sdtune.models.loading import base_schedule_length, load_components
    from sdtune.models.sources import check_model_sources

    stop.phase("training has not started; stopping before it does", "quit: nothing was trained", QUIT_NOW)
    cfg = resolve_config(cfg)
    check_machine(cfg)
    run_dir = Path(cfg.output_dir)
    resume_from = _prepare_run_dir(cfg, resume)
    plan = resuming.plan_resume(resume_from, cfg) if resume_from is not None else None  # refuse in seconds
    if plan is not None:
        stop.phase("training has not resumed; stopping before it does",
                   f"quit: nothing new was trained; {plan.checkpoint} is still the checkpoint to resume from",
                   QUIT_NOW)
    check_class_images(cfg)  # generated for another model, prompt or resolution: refused in seconds too
    _not_started(stop, plan)
    check_model_sources(cfg)  # model.base, model.vae, model.adapters: one line with the key, before any loads
    check_training_data(cfg)  # before any model is loaded: fail in seconds, not after a download
    check_bucket_resolution(cfg.data, cfg.model.base, cfg.model.revision)  # the model's configs only
    if (schedule := base_schedule_length(cfg.model.base, cfg.model.revision)) is not None:
        timestep_range(cfg, schedule)  # a bad timestep range: one line before class images or the model load
    _not_started(stop, plan)
    accelerator = _make_accelerator(cfg, run_dir)
    _ensure_class_images(cfg, accelerator, stop, plan)
    data_record = stream_record(cfg.data)  # what the stream is built from: in every checkpoint, compared on resume
    data_lines = (data_resume.check_data(plan, data_record, new_data_epoch) + resuming.nothing_to_train(plan, cfg)
                  if plan is not None else [])

    comps = load_components(cfg.model.base, allow_pickle=cfg.model.allow_pickle, revision=cfg.model.revision,
                            variant=cfg.model.variant, prediction_type=cfg.model.prediction_type, vae=cfg.model.vae,
                            **frozen_dtypes(cfg))
    timestep_range(cfg, comps.noise_scheduler.config.num_train_timesteps)  # a scheduler not readable before
    torch.manual_seed(cfg.train.seed)  # LoRA initialisation draws from the global RNG: make it the run's
    trainables = configure_trainables(cfg, comps, accelerator.device)  # a learned token joins the tokenizer here
    stream = build_stream(cfg.data, comps.tokenizer, cfg.train.seed, batch_size=cfg.train.batch_size,
                          bucket_step=bucket_step_of(comps.vae.config, comps.unet.config),
                          held_out=held_out_paths(cfg))  # validation.loss.split: never trained on
    check_learned_token(cfg, stream, comps.tokenizer)
    attention = build_attention_loss(cfg, comps)  # its map sizes checked before any latent is cached
    optimizer = build_optimizer(cfg, trainables, accelerator.num_processes)
    lr_scheduler = build_lr_scheduler(cfg, optimizer)
    fresh_hyperparameters = resuming.optimizer_hyperparameters(optimizer)  # the new config's, before loading
    ema = build_ema(cfg, trainables)
    _not_started(stop, plan, accelerator)
    unet, optimizer, text_encoder_ddp = prepare_models(accelerator, trainables, optimizer)
    text_encoder = text_encoder_ddp if text_encoder_ddp is not None else comps.text_encoder
    view = EvalWeights(cfg, trainables, optimizer, ema)  # EMA / schedule-free average: what is evaluated and saved
    val_loss = build_validation_loss(cfg, comps, trainables.text_encoder if trainables.text_encoder is not None
                                     else comps.text_encoder, accelerator.device,
                                     bucket_step_of(comps.vae.config, comps.unet.config))
    state = ckpt.TrainerState(world_size=accelerator.num_processes, batch_size=cfg.train.batch_size)
    resumed = None
    if plan is not None:
        state = ckpt.load_checkpoint(plan.checkpoint, trainables.modules(), optimizer, lr_scheduler,
                                     scaler=accelerator.scaler, ema=ema)
        if state.world_size != accelerator.num_processes or state.batch_size != cfg.train.batch_size:
            raise SdtuneError(f"{plan.checkpoint} was made with {counted(state.world_size, 'process')} x batch "
                              f"{state.batch_size} (train.batch_size); resume with the same, since processes x "
                              "batch define the data of every step (this run has "
                              f"{accelerator.num_processes} x {cfg.train.batch_size})")
        resuming.apply_changes(plan, cfg, optimizer, lr_scheduler, ema, fresh_hyperparameters)
        data_resume.start_new_epoch(state, plan)
        branch = resuming.start_branch(run_dir, plan) if accelerator.is_main_process else None
        accelerator.wait_for_everyone()
        resumed = resuming.history_entry(plan, branch)
        state.history.append(resumed)
        if accelerator.is_main_process:
            print(resuming.resumed_line(plan.checkpoint, state.step))
            if plan.changes or branch:
                print(resuming.describe(resumed))
            for line in data_lines:
                print(line)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        resuming.write_run_config(cfg, run_dir / "config.yaml", state.history)
    if accelerator.is_main_process and (line := write_bucket_record(stream, run_dir)):
        print(line)
    with stop.during("training has not started; stopping after the entry being cached (those cached are kept)",
                     "quit: nothing was trained", QUIT_NOW):
        for line in cache_for_run(cfg, stream, comps.vae, comps.text_encoder, accelerator, state.step,
                                  should_stop=lambda: stop.requested, family=comps.family):
            if accelerator.is_main_process:
                print(line)
    _not_started(stop, plan, accelerator)  # the last chance before trackers start a logged run
    if cfg.logging.trackers:
        from sdtune.training.trackers import flat_config, tracker_init_kwargs

        accelerator.init_trackers(cfg.logging.project, config=flat_config(cfg),
                                  init_kwargs=tracker_init_kwargs(cfg, run_dir / "logs"))
        if resumed is not None:
            accelerator.log({"resume": resuming.describe(resumed)}, step=state.step)

    conditioner = Conditioner(comps.vae, text_encoder, comps.vae.dtype, cfg.train.trains_text,
                              device=accelerator.device, family=comps.family)
    loader = DataLoader(stream, batch_size=cfg.train.batch_size, collate_fn=collate,
                        num_workers=cfg.train.num_workers,
                        sampler=StreamPositions(data_resume.stream_start(state), cfg.train.batch_size,
                                                accelerator.num_processes, accelerator.process_index))
    batches = iter(loader)
    accum = cfg.train.gradient_accumulation_steps
    micro_loss = StepLoss(cfg, accelerator, unet, text_encoder, conditioner, comps.noise_scheduler,
                          build_preservation(cfg, comps.tokenizer), comps.family, attention)

    guard = DivergenceGuard(cfg, run_dir, main_process=accelerator.is_main_process,
                            grad_scaler=accelerator.scaler is not None, resumed_step=plan.step if plan else None)
    config_text = dump_config(cfg)

    def save(current: ckpt.TrainerState) -> None:
        guard.check_weights(trainables.parameters(), current.step)
        error: Exception | None = None
        if accelerator.is_main_process:
            try:
                ckpt.save_checkpoint(run_dir / "checkpoints", current, trainables.modules(), optimizer, lr_scheduler,
                                     scaler=accelerator.scaler, ema=ema, keep=cfg.checkpoint.keep,
                                     config_text=config_text, keep_also=guard.keep_also(),
                                     evaluated=evaluated_state(cfg, view, trainables), data_record=data_record)
                mark_unfinished(run_dir, current.step)  # a finished run trained further: its outputs are older
            except Exception as exc:  # every process must hear of it, or the others wait forever
                error = exc
        failed = accelerator.gather(torch.tensor([float(error is not None)], device=accelerator.device))
        if error is not None:
            raise error
        if bool(failed.any()):
            raise SdtuneError(f"process 0 could not save checkpoint {ckpt.step_dir_name(current.step)} (see its "
                              "message)")
        guard.saved(current.step)

    bar = tqdm(total=cfg.train.max_steps, initial=state.step, desc="train", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    started, status, last_saved = time.time(), "finished", state.step if resume_from else -1
    validated = -1  # the step whose validation images are complete
    step_times: list[float] = []

    def lost() -> str:
        since = (f"nothing was saved after checkpoint {ckpt.step_dir_name(last_saved)}; --resume latest continues "
                 "from there" if last_saved >= 0 else "no checkpoint of this run was saved")
        return f"quit without saving at step {state.step}: {since}"

    stop.phase("finishing this step and saving a checkpoint", lost)
    progress_log = ProgressLog(run_dir, accelerator.is_main_process, state.step)  # RUN/logs/progress.jsonl
    with bar:  # the bar ends its line before any message
        while state.step < cfg.train.max_steps:
            step_start = time.time()
            for micro in range(accum):
                batch = next(batches)
                torch.manual_seed(micro_step_seed(cfg.train.seed, state.micro_step + micro, accelerator.process_index))
                sync = micro == accum - 1
                with contextlib.ExitStack() as no_sync:
                    if not sync:
                        for model in (unet, text_encoder_ddp):
                            if model is not None:
                                no_sync.enter_context(accelerator.no_sync(model))
                    loss, zero_loss = micro_loss(batch, state.step)
                    gathered = accelerator.gather(torch.stack([loss.detach(), zero_loss]).reshape(1, 2))
                    guard.record_loss(gathered[:, 0], gathered[:, 1])  # read with the step: judges state.step's weights
                    accelerator.backward(loss / accum)
            hold_phases(cfg, trainables, state.step)  # pivotal tuning: the LoRA's and the token's own steps
            grad_norm = None
            if cfg.train.max_grad_norm is not None:
                grad_norm = accelerator.clip_grad_norm_(trainables.parameters(), cfg.train.max_grad_norm)
            elif accelerator.scaler is None:  # fp16's scaler skips steps with inf gradients itself
                grads = [p.grad for p in trainables.parameters() if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
            guard.record_gradients(grad_norm)
            apply_update(optimizer, lr_scheduler, ema, view.ema_parameters)
            state.step += 1
            state.micro_step += accum
            # the step's one host sync, after its update is queued and before anything of it is saved or validated
            verdict = guard.judge(state.step, _stop_flag(accelerator, stop), micro_loss.take_terms())
            if state.step == cfg.train.max_steps:  # a stop from here on ends in the final phase, not a resume point
                stop.phase(f"saving the final checkpoint {ckpt.step_dir_name(state.step)}; --resume latest then "
                           "writes the outputs without training again", lost)
            state.last_loss = verdict.loss
            lr = lr_scheduler.get_last_lr()[0]
            step_times.append(time.time() - step_start)
            accelerator.log({"loss": state.last_loss, "lr": lr, "step_time": step_times[-1], **verdict.terms},
                            step=state.step)  # the loss terms too: is the preservation or attention term falling?
            progress_log.step(state.step, cfg.train.max_steps, state.last_loss, lr, step_times[-1], verdict.terms)
            bar.set_postfix(loss=f"{state.last_loss:.4f}", lr=f"{lr:.2e}", refresh=False)  # drawn by update()
            bar.update(1)
            busy = False  # saving or validating: a stop asked for meanwhile is read again after them
            if val_loss is not None:  # before the checkpoint: it carries the value (sdtune pick --by val_loss)
                val_loss.after_step(state, accelerator, trainables.unet, view)
            if state.step % cfg.checkpoint.every == 0:
                save(state)
                last_saved, busy = state.step, True
            if cfg.validation.prompts and cfg.validation.every and state.step % cfg.validation.every == 0:
                busy = True
                if validate(cfg, accelerator, comps, trainables, view, state.step, run_dir, stop):
                    validated = state.step
            if _stop_agreed(accelerator, stop, verdict.stop_requested, busy) and state.step < cfg.train.max_steps:
                status = "interrupted"
                break
    stop.phase("completing the checkpoint being written", lost)
    if last_saved != state.step:  # a stop asked for now lets it complete: the run is in it
        save(state)
        last_saved = state.step
    counts = data_counts(stream)
    # The DDP wrappers (their Reducer holds the process group) go now, while the group is alive on every process:
    # freed only when this function returned, after end_training had destroyed the group, their gloo group's
    # destructor waited forever for its threads (2-process CPU runs hung at exit in the full test suite, twice)
    del unet, text_encoder, text_encoder_ddp, micro_loss, conditioner
    accelerator.free_memory()
    if status == "interrupted":
        if accelerator.is_main_process:
            print(f"stopped at step {state.step}: checkpoint saved. Continue with --resume latest")
        accelerator.end_training()
        return TrainResult(run_dir, status, state.step, state.last_loss)
    timing = {"seconds": round(time.time() - started, 2),
              "median_step_seconds": round(statistics.median(step_times[1:] or step_times or [0.0]), 4)}
    try:
        return finish(cfg, accelerator, comps, trainables, view, state, run_dir, timing, counts, stop, validated)
    except DiskFullError as exc:
        raise DiskFullError(f"{exc}. Training itself is complete (checkpoint {ckpt.step_dir_name(state.step)}): "
                            f"once there is space, `sdtune train {run_dir / 'config.yaml'} --resume latest` writes "
                            "the outputs without training again") from None


def _stop_flag(accelerator, stop: Stop) -> torch.Tensor | None:
    """Several processes: whether any was asked to stop, as a device flag (``torch.full`` fills on the device, where
    ``torch.tensor(x, device=...)`` copies from the host and waits); the step's one read carries it. None with one
    process (its ``stop.requested`` needs no read)."""
    if accelerator.num_processes == 1:
        return None
    return accelerator.gather(torch.full((1,), float(stop.requested), device=accelerator.device)).amax()


def _stop_agreed(accelerator, stop: Stop, read: bool, again: bool) -> bool:
    """Stop after this step? Every process must agree on the step. ``read``: the flag read with the step; ``again``:
    the step saved or validated after that read, so a stop asked for meanwhile is gathered once more."""
    if accelerator.num_processes == 1:
        return stop.requested
    return read or (again and bool(_stop_flag(accelerator, stop)))


def evaluated_state(cfg: RunConfig, view: EvalWeights, trainables) -> dict[str, torch.Tensor] | None:
    """A checkpoint's evaluated weights (EMA, schedule-free average) for LoRA and textual-inversion runs, whose
    checkpoints ``sdtune pick`` evaluates; None when they are the trained ones, or for a full fine-tune (its EMA is
    in ema.pt already and its checkpoints are not evaluated: a second UNet per checkpoint would buy nothing)."""
    if not view.differs or cfg.is_full:
        return None
    with view.swapped():
        return ckpt.trainable_state(trainables.modules())
