"""``sdtune personalize``'s people on the engine: submit, follow, stop, judge; a person's outcome from its folder.

The recipe (:mod:`sdtune.recipes.personalize`) decides each person's config and checks the input; this module only
translates people into units of work (:mod:`sdtune.engine`) and the engine's states back into outcomes. A person
is one ``sdtune train`` unit; with ``--prompts`` a finished person is one more unit, ``sdtune pick`` on its run
folder (its checkpoints judged for fidelity and composite, the best one kept), run where a slot is free too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtune.config import RunConfig, save_config
from sdtune.engine.unit import attempt_numbers
from sdtune.models.lora import LORA_WEIGHTS
from sdtune.recipes.runs import ConceptRun, run_state, write_stack_profile
from sdtune.recipes.subjects import Subject, SubjectOutcome
from sdtune.run_folder import read_json, read_metrics
from sdtune.training.resume import resumed_step
from sdtune.words import counted

if TYPE_CHECKING:
    from sdtune.engine.ray_engine import Engine

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 600.0  # each person finishes its step and saves a checkpoint


def one_line(text: object) -> str:
    return re.sub(r":?\s*\n\s*", "; ", str(text).strip())  # one line, no stray ':;'


@dataclass
class Scale:
    """Where and how people train: the Ray cluster (None: an embedded local one, or ``RAY_ADDRESS``), resources per
    person (``gpus`` None: 1 on a cluster with GPUs, else 0; fractions share a GPU), and retries after a crash.
    ``num_gpus``/``num_cpus``: the embedded Ray's totals (default: this machine's; tests fake GPUs)."""

    address: str | None = None
    gpus: float | None = None
    cpus: float = 1.0
    retries: int = 2
    num_gpus: float | None = None
    num_cpus: float | None = None


@dataclass
class Judge:
    """``--prompts``: after training, each person's checkpoints are judged by ``sdtune pick`` (one more unit of
    work): fidelity to ``reference`` (``REF/<name>/`` when given, else the person's own photos), the composite
    (CLIP-T on ``prompts``, ``{token}``/``{class}``/``{name}`` filled per person) and the checkpoint kept."""

    prompts: Path
    reference: Path | None = None
    seeds: int = 4
    extra: tuple[str, ...] = ()  # more `sdtune pick` options, e.g. ("--clip", PATH, "--steps", "2")

    def argv(self, subject: Subject, run_dir: Path) -> tuple[str, ...]:
        from sdtune.atomic import atomic_write_text

        prompts = run_dir / ".pick-prompts.txt"  # hidden: the run folder stays a run folder
        lines = Path(self.prompts).read_text(encoding="utf-8").splitlines()
        atomic_write_text(prompts, "\n".join(subject.fill(line) for line in lines if line.strip()) + "\n")
        reference = (Path(self.reference) / subject.name) if self.reference is not None else subject.photos
        return ("pick", str(run_dir), "--prompts", str(prompts), "--reference", str(reference), "--seeds",
                str(self.seeds), *self.extra)


def read_pick(run_dir: Path) -> dict[str, Any]:
    """``{fidelity, composite, picked_step}`` of ``RUN/picked/pick.json`` ({} when it was not judged)."""
    record = read_json(Path(run_dir) / "picked" / "pick.json") or {}
    kept = next((row for row in record.get("checkpoints") or [] if row.get("kept")), None)
    if kept is None:
        return {}
    values = kept.get("values") or {}
    fidelity = values.get("dino", values.get("clip_i"))
    return {"fidelity": fidelity, "composite": values.get("clip_t"), "picked_step": record.get("step")}


def retry_note(log: Path, attempts: int) -> str:
    """What a finished person's retries did, from its ``train.log`` (each attempt appends a ``=== ... attempt N``
    header with its command, then the trainer's ``resumed from CKPT (step K)`` when it resumed; ``pick`` units
    append to the same log later): ``retried 1x, resumed from step 6``;
    ``retried 1x, started over (no checkpoint yet)``; or, when the last attempt never started because the run had
    already finished (it ended just before its process or worker was killed), ``retried 1x: the run had already
    finished``. Never claims a resume the log does not show."""
    retried = f"retried {attempts - 1}x"
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return retried
    headers = attempt_numbers(text, "-m sdtune train ")  # not the judge's pick units
    if not headers or headers[-1][0] < attempts:
        return f"{retried}: the run had already finished"
    step = resumed_step(text, headers[-1][1])
    if step is None:
        return f"{retried}, started over (no checkpoint yet)"
    return f"{retried}, resumed from step {step}"


def final_outcome(subject: Subject, cfg: RunConfig, status: Any, concept: ConceptRun) -> SubjectOutcome:
    """A trained (or stopped, or failed) person's outcome, from the engine's last word and its run folder."""
    run_dir = Path(cfg.output_dir)
    outcome = SubjectOutcome(subject.name, "failed", seconds=status.seconds, attempts=status.attempts,
                             node=status.node, device=status.device)
    state = run_state(run_dir)
    if status.state == "finished" and state == "finished":
        metrics = read_metrics(run_dir) or {}
        outcome.status, outcome.steps, outcome.final_loss = "finished", metrics.get("steps"), metrics.get("final_loss")
        outcome.output = str(run_dir / "lora" / LORA_WEIGHTS)
        outcome.note = retry_note(run_dir / "train.log", status.attempts) if status.attempts > 1 else ""
        write_stack_profile(run_dir, concept, own_name=subject.name)
    elif status.state == "stopped":
        outcome.status = "interrupted" if state == "interrupted" else "pending"
        outcome.note = "stopped: rerun to resume from its latest checkpoint" if state == "interrupted" else \
            "not started: stopped"
    else:
        outcome.note = one_line(status.error or f"training exited with status {status.returncode}")
        if status.attempts > 1:
            outcome.note = f"after {counted(status.attempts, 'attempt')}: {outcome.note}"
    outcome.save(run_dir)
    return outcome


def run_people(ready: dict[str, tuple[Subject, RunConfig]], concept: ConceptRun, out_dir: Path, scale: Scale,
               echo: Callable[[str], None], live: bool | None, judge: Judge | None = None,
               finished: dict[str, tuple[Subject, RunConfig, SubjectOutcome]] | None = None, *,
               engine: Engine) -> dict[str, SubjectOutcome]:
    """Train ``ready`` people on the engine (and judge them, and the ``finished`` ones not judged yet, with
    ``judge``); follow them until each is final, then shut the engine down. Returns the outcomes of the people it
    ran or judged. ``engine``: started by the caller (personalize starts it while it prepares)."""
    from sdtune.engine import Unit
    from sdtune.recipes.personalize_view import Board
    from sdtune.stopping import STOP

    finished = finished or {}
    people = {name: subject for name, (subject, _) in ready.items()}
    people.update({name: subject for name, (subject, _, _) in finished.items()})
    run_dirs = {name: Path(cfg.output_dir) for name, (_, cfg) in ready.items()}
    run_dirs.update({name: Path(cfg.output_dir) for name, (_, cfg, _) in finished.items()})
    outcomes: dict[str, SubjectOutcome] = {}
    grace = STOP_GRACE_SECONDS
    try:
        resources = engine.resources
        echo(f"Ray: {resources.get('GPU', 0):g} GPU, {resources.get('CPU', 0):g} CPU "
             f"({'cluster ' + str(engine.address) if engine.address else 'local'})")
        train: dict[str, str] = {}
        judging: dict[str, str] = {}
        owner: dict[str, str] = {}

        def submit_judge(name: str, subject: Subject) -> None:
            unit = Unit(judge.argv(subject, run_dirs[name]), run_dirs[name] / "train.log", f"{name} (pick)")
            judging[name] = engine.submit(unit, gpus=scale.gpus, cpus=scale.cpus, retries=scale.retries)
            owner[judging[name]] = name
            board.change(name, "judging")

        with Board([*ready, *finished], out_dir / "personalize.log", echo, live) as board:
            # longest first (the config's max_steps): a long person started last would keep one slot busy alone
            # while the others idle; with people of uneven length this brings the wall time near total / slots
            for name, (_, cfg) in sorted(ready.items(), key=lambda item: -item[1][1].train.max_steps):
                save_config(cfg, run_dirs[name] / "config.yaml")
                unit = Unit(("train", str(run_dirs[name] / "config.yaml")), run_dirs[name] / "train.log", name,
                            run_dirs[name])
                train[name] = engine.submit(unit, gpus=scale.gpus, cpus=scale.cpus, retries=scale.retries)
                owner[train[name]] = name
            for name, (subject, _, outcome) in finished.items():
                board.change(name, "finished", attempts=outcome.attempts)
                if judge is not None:
                    submit_judge(name, subject)
            STOP.phase("stopping every person at a checkpoint", "quit: people stop where they are; rerun to resume "
                       "from their latest checkpoints")
            stopping = False
            while True:
                if STOP.requested and not stopping:
                    stopping = True
                    board.note("stopping: every person saves a checkpoint; rerun the same command to continue")
                    for handle in [*train.values(), *judging.values()]:
                        engine.cancel(handle)
                for event in engine.events():
                    name = owner[event.handle]
                    where = f"{event.node} {event.device}".strip() if event.node else ""
                    note = one_line(event.error) if event.state in ("retrying", "failed") and event.error else ""
                    if event.handle in judging.values():
                        if event.final:
                            board.change(name, "finished" if event.state == "finished" else f"pick {event.state}",
                                         note=note)
                        continue
                    board.change(name, event.state, where=where, attempts=event.attempts, note=note)
                    if event.state == "finished" and judge is not None and not stopping:
                        submit_judge(name, people[name])
                statuses = {name: engine.status(handle) for name, handle in train.items()}
                for name, status in statuses.items():
                    board.progress(name, status.step, status.steps, status.loss)
                board.refresh()
                if all(engine.poll(h) is not None for h in [*train.values(), *judging.values()]):
                    break
                time.sleep(POLL_SECONDS)
        for name, status in statuses.items():
            subject, cfg = ready[name]
            outcomes[name] = final_outcome(subject, cfg, status, concept)
        for name, handle in judging.items():
            outcome = outcomes.get(name) or finished[name][2]
            result = engine.result(handle)
            outcome.extra.update(read_pick(run_dirs[name]))
            if result is not None and result.kind != "ok":
                outcome.note = "; ".join(filter(None, [outcome.note, f"pick failed: {one_line(result.error)}"
                                                       if result.kind != "stopped" else "pick stopped"]))
            outcome.save(run_dirs[name])
            outcomes[name] = outcome
    except KeyboardInterrupt:  # a second Ctrl-C: quit now (Ray ends; each child dies with its worker)
        grace = 0.0
        raise
    finally:
        engine.shutdown(grace=grace)
    return outcomes

