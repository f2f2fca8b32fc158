"""The person stage followed by ``sdtune pick``, measured without picking on the numbers it reports.

``sdtune personalize --prompts`` (and a user after ``sdtune train``) keeps one checkpoint of each person's run by
the rule of :func:`sdtune.evaluation.pick.choose`: checkpoints that forgot more than 0.05 of old-prompt accuracy
against the run's base (the concept model) are out, then the best mean of the person and composite rates, each
relative to its best, ties to the earlier step. Choosing on the same images the table reports would report the
luckiest checkpoint's noise as a gain, so here the rule reads a **held-out evaluation**: the same prompts with
other seeds (each seed + ``HELD_OUT``), and the row ``VARIANT+pick`` reports the chosen checkpoint's numbers on
the benchmark's own seeds (its ``VARIANT@STEP`` row, or the run's when the final step is chosen).

On the toy the rule reads the judge: the person rate of the run's own look (the easy person's judge verdict, the
hard person's halves check) where ``sdtune pick`` on the toy knows the easy person only; the rule is the same
function.
"""

from __future__ import annotations

from typing import Any

from sdtune.evaluation.pick import choose

HELD_OUT = 10_000  # added to every evaluation seed: the selection's images share no seed with the reported ones


def held_out(seeds: list[int], group_seeds: dict[str, list[int]]) -> tuple[list[int], dict[str, list[int]]]:
    """The benchmark's evaluation seeds, shifted by ``HELD_OUT``."""
    return [s + HELD_OUT for s in seeds], {g: [s + HELD_OUT for s in v] for g, v in group_seeds.items()}


def _as_model(label: str, step: int, ref: str, row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint in the shape ``sdtune eval`` writes (what :func:`choose` reads)."""
    return {"label": label, "ref": ref, "checkpoint": {"step": step},
            "metrics": {"toy_person": {"mean": row["person_judge"]}, "toy_composite": {"mean": row["composite"]},
                        "toy_forgetting": {"mean": base["old_both"] - row["old_both"]}}}


def pick(bench: Any, variant: str, seed: int, look: str) -> dict[str, Any] | None:
    """Choose a checkpoint of ``VARIANT-sSEED`` on held-out seeds and record its benchmark row as
    ``VARIANT+pick-sSEED`` (``picked_step`` in it); None when the run is not finished."""
    from toy_forgetting import load_done, record

    from sdtune.evaluation.checkpoints import expand_checkpoints
    from sdtune.recipes.runs import run_state

    key = f"{variant}+pick-s{seed}"
    done = load_done(bench.results)
    if key in done:
        return done[key]
    run_dir = bench.out / "runs" / f"{variant}-s{seed}"
    if run_state(run_dir) != "finished":
        return None
    concept = bench.out / "runs" / f"concept-s{seed}"
    base = bench.measure(f"concept-s{seed}-heldout-{look}", str(concept), {"stage": "heldout"}, look=look,
                         held_out=True)
    models, reported = [], {}
    for c in expand_checkpoints(run_dir, bench.out / "materialised"):
        ref = str(run_dir if c.final else c.folder)
        suffix = "" if c.final else f"@{c.step}"
        row = bench.measure(f"{variant}{suffix}-s{seed}-heldout", ref, {"stage": "heldout"}, look=look,
                            held_out=True)
        models.append(_as_model(f"step-{c.step}", c.step, ref, row, base))
        reported[c.step] = (f"{variant}{suffix}-s{seed}", ref)
    results = {"metrics": {"toy_person": {}, "toy_composite": {}, "toy_forgetting": {}}, "models": models}
    step = choose(results).model["checkpoint"]["step"]
    name, ref = reported[step]
    row = bench.measure(name, ref, {"stage": "checkpoint", "variant": name.rsplit("-s", 1)[0], "seed": seed,
                                    "step": step}, look=look)
    picked = {**{k: v for k, v in row.items() if k != "key"}, "key": key, "stage": "picked",
              "variant": f"{variant}+pick", "seed": seed, "picked_step": step}
    record(bench.results, picked)
    print(f"[bench] {key}: step {step} (held-out seeds) person={picked['person_judge']:.2f} "
          f"composite={picked['composite']:.2f}", flush=True)
    return picked
