"""The two-stage flow on the toy model, measured over training seeds: does the person stage keep the concept, and
does the model draw the person doing the concept (the composite)?

    python benchmarks/two_stage.py --out runs/bench-2stage --shard 0/2 &     # one process per core
    python benchmarks/two_stage.py --out runs/bench-2stage --shard 1/2
    python benchmarks/two_stage.py --out runs/bench-2stage --variants baseline,concept-prior --seeds 0,1,2
    python benchmarks/two_stage.py --out runs/bench-2stage --report-only --publish   # table + shipped summary
    python benchmarks/two_stage.py --out runs/bench-2stage --variants demo --concept-variants dop-1,rank-4

Variant ``demo`` is the demo exactly (``DemoSettings()`` as shipped, its evaluation: ``sdtune.toy.demo_eval``):
``--publish`` ships it with its settings, evaluation and per-seed rows, and the demo's own run (training seed 0)
is the benchmark's run of that seed. ``--concept-variants`` measure stage 1 alone with other concept settings
(forgetting: old-prompt accuracy against the base's, row ``base``).

For every training seed: stage 1 (the concept LoRA, the demo's settings) is trained once and evaluated; then
every variant of stage 2 (the person) is trained on that seed's concept model and evaluated with the same
prompts and seeds: old-prompt accuracy (forgetting), concept, person (judge / pixel check), class prompt kept
plain, composite ("a photo of sks red arrow": the person's striped red-and-cyan in the arrow's form, which
no stage trains on). Every number is a fraction of generated images; the table is mean +- std over training seeds.

Rows are appended to ``OUT/results.jsonl`` as they come; a rerun skips measured rows and re-evaluates finished
runs without training them again. ``--publish`` writes ``src/sdtune/assets/toy/two_stage_benchmark.json``, the
spread the demo prints beside its single run.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import statistics
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_forgetting import load_done, record  # noqa: E402
from two_stage_pick import held_out as held_out_seeds  # noqa: E402
from two_stage_pick import pick  # noqa: E402
from two_stage_variants import BASELINE, CONCEPT_VARIANTS, DEMO, VARIANTS  # noqa: E402

from sdtune.config import config_from_dict  # noqa: E402
from sdtune.data.class_images import generate_for_run  # noqa: E402
from sdtune.recipes.runs import run_state  # noqa: E402
from sdtune.toy import world  # noqa: E402
from sdtune.toy.demo import (  # noqa: E402
    DemoSettings,
    concept_stage,
    person_mask_dir,
    person_stage,
    write_concept_data,
    write_person_photos,
)
from sdtune.toy.demo_eval import STAGE1, demo_suite, eval_plan, eval_seeds, trained_settings  # noqa: E402
from sdtune.toy.evaluate import default_judge, evaluate, load_toy_pipeline, summary  # noqa: E402
from sdtune.toy.finetune import run  # noqa: E402
from sdtune.toy.world import PERSONS  # noqa: E402

CONCEPT_FIELDS = {f.name for f in fields(DemoSettings) if f.name.startswith("concept_")}
# the settings recorded per row (person_* covers poses, targets, steps, ...)
PERSON_FIELDS = ("person", "prior", "class", "concept_prior", "preservation")
KEYS = ("old_both", "concept", "person_judge", "person_pixels", "class_solid", "composite", "composite_pixels",
        "composite_shape", "composite_identity")
LABELS = {"old_both": "old acc", "concept": "concept", "person_judge": "person (judge)",
          "person_pixels": "person (px)", "class_solid": "class plain", "composite": "composite (judge)",
          "composite_pixels": "composite (px)", "composite_shape": "composite: arrow",
          "composite_identity": "composite: identity"}
PUBLISHED = Path(__file__).resolve().parents[1] / "src" / "sdtune" / "assets" / "toy" / "two_stage_benchmark.json"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-2stage"))
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of: {', '.join(VARIANTS)}")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (the spread is over these)")
    p.add_argument("--eval-seeds", type=int, default=None, help="images per old-world and concept prompt "
                   "(default: the demo's, DemoSettings.seeds)")
    p.add_argument("--person-seeds", type=int, default=None, help="images of the person, class and composite "
                   "prompts (default: the demo's, DemoSettings.person_seeds)")
    p.add_argument("--concept-variants", default="", help=f"comma list of stage-1 variants, measured alone: "
                   f"{', '.join(CONCEPT_VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="I/N: this process takes every N-th person run from I")
    p.add_argument("--checkpoints", default="", help="comma list of variants whose person checkpoints are "
                   "evaluated too (rows VARIANT@STEP: the steps dimension without retraining)")
    p.add_argument("--pick", default="", help="comma list of variants whose runs are followed by sdtune pick's "
                   "rule on held-out seeds (rows VARIANT+pick: the chosen checkpoint's numbers)")
    p.add_argument("--report-only", action="store_true", help="no training: the table of what is measured")
    p.add_argument("--publish", action="store_true", help=f"also write {PUBLISHED.name} for the demo")
    p.add_argument("--demo", default=DEMO, help="the variant the demo runs (its row is printed beside it; "
                   "--publish refuses a variant whose settings are not the demo's)")
    p.add_argument("--concept-two-tone", type=float, default=None,
                   help="the share of two-tone arrows in the concept set (default: the demo's); use a new --out")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny steps (numbers not meaningful)")
    return p.parse_args(argv)


def settings_for(variant: str, seed: int, quick: bool, two_tone: float | None = None,
                 concept: str = "") -> DemoSettings:
    """A variant's settings for one training seed: the demo's (``DemoSettings``), BASELINE (except for ``demo``),
    the variant's changes, and the concept variant's."""
    base = DemoSettings.quick() if quick else DemoSettings()
    person = {} if quick or variant == DEMO else BASELINE
    return replace(base, seed=seed, **{**person, **VARIANTS[variant], **CONCEPT_VARIANTS.get(concept, {})},
                   **({} if two_tone is None else {"concept_two_tone": two_tone}))


def eval_settings(args: argparse.Namespace) -> DemoSettings:
    """The demo's evaluation settings, with --eval-seeds / --person-seeds where given."""
    base = DemoSettings.quick() if args.quick else DemoSettings()
    return replace(base, **{k: v for k, v in (("seeds", args.eval_seeds), ("person_seeds", args.person_seeds))
                            if v is not None})


def concept_run(settings: DemoSettings, data: Path, run_dir: Path) -> dict[str, Any]:
    """Stage 1's run config: the demo's, its fused model saved (the person trains on it, as in the recipe)."""
    cfg = concept_stage(settings, data, run_dir)
    cfg["save"]["full_model"] = not settings.concept_token  # a learned token is no part of a fused model
    return cfg


def person_run(settings: DemoSettings, data: Path, run_dir: Path, concept: Path, photos: Path) -> dict[str, Any]:
    """Stage 2's run config on the concept run ``concept`` (its fused model, its LoRA, its class images)."""
    return person_stage(settings, data, run_dir, str(concept / "model"), class_root=concept, person_dir=photos,
                        concept=concept_stage(settings, data, concept),
                        concept_lora=concept / "lora" / "pytorch_lora_weights.safetensors")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out.resolve()
        self.results = self.out / "results.jsonl"
        self.judge = default_judge()
        self.evaluation = eval_settings(args)  # the demo's: seeds, prompts, sampling steps
        self.seeds, self.group_seeds = eval_seeds(self.evaluation)
        self.suites = {look: demo_suite(replace(self.evaluation, person_look=look)) for look in PERSONS}
        self.data = self.out / "data"

    def ensure_data(self, settings: DemoSettings) -> None:
        with self.lock("data"):
            write_concept_data(settings, self.data)
            person = self.person_data(settings)
            if not (person / "scenes.jsonl").exists():
                write_person_photos(person, settings)
            elif settings.person_masks and not person_mask_dir(person).is_dir():
                world.write_masks(person, person_mask_dir(person))

    def person_data(self, settings: DemoSettings) -> Path:
        """The person's photos: one folder per number of poses (one pose: DreamBooth's instance images)."""
        look = "" if settings.person_look == "striped" else f"{settings.person_look}-"
        return self.data / (f"{look}person" if settings.person_poses == 1 else
                            f"{look}person-{settings.person_poses}-poses")

    def lock(self, name: str):
        """An exclusive file lock: two shards never train the same concept run."""
        import contextlib

        @contextlib.contextmanager
        def held():
            (self.out / "locks").mkdir(parents=True, exist_ok=True)
            with open(self.out / "locks" / f"{name}.lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        return held()

    def measure(self, key: str, ref: str, extra: dict[str, Any], look: str = "striped",
                concept_token: str | None = None, held_out: bool = False) -> dict[str, Any]:
        """Evaluate ``ref`` for the person ``look`` (its person, class and composite prompts and identity);
        ``concept_token``: the concept's prompts write it (a stage 1 that learned one); ``held_out``: on other
        seeds (``two_stage_pick``: what a checkpoint is chosen on)."""
        done = load_done(self.results)
        if key in done:
            return done[key]
        suite = self.suites[look] if not concept_token else demo_suite(
            replace(self.evaluation, person_look=look, concept_token=concept_token))
        seeds, groups = held_out_seeds(self.seeds, self.group_seeds) if held_out else (self.seeds, self.group_seeds)
        row = {"key": key, **extra, **summary(evaluate(load_toy_pipeline(ref), self.judge, suite, seeds,
                                                       steps=self.evaluation.eval_steps, group_seeds=groups))}
        record(self.results, row)
        print(f"[bench] {key}: " + ", ".join(f"{k}={row[k]:.2f}" for k in KEYS if k in row), flush=True)
        return row

    def train(self, cfg: dict[str, Any]) -> float | None:
        """Train unless a finished run of the same config is there; the training seconds, None when reused."""
        run_dir = Path(cfg["output_dir"])
        if run_state(run_dir) == "finished":
            return None
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.time()
        run(cfg)
        return round(time.time() - started, 1)

    def concept(self, seed: int, variant: str = "") -> Path:
        """Stage 1 of a training seed (the demo's concept settings, or a concept variant's), trained once."""
        settings = settings_for(DEMO, seed, self.args.quick, self.args.concept_two_tone, concept=variant)
        self.ensure_data(settings)
        name = f"concept-{variant}-s{seed}" if variant else f"concept-s{seed}"
        run_dir = self.out / "runs" / name
        with self.lock(name):
            cfg = concept_run(settings, self.data, run_dir)
            if cfg["data"].get("subsets"):  # stage 1's class images (concept_prior), drawn by the base model
                with self.lock("class-generic"):
                    generate_for_run(config_from_dict(cfg), "cpu")
            seconds = self.train(cfg)
            self.measure(name, str(run_dir), {"stage": "concept", "seed": seed, "train_seconds": seconds,
                                              "concept_variant": variant,
                                              "settings": {k: v for k, v in asdict(settings).items()
                                                           if k in CONCEPT_FIELDS}},
                         concept_token=settings.concept_token)
        return run_dir

    def person(self, variant: str, seed: int) -> None:
        key = f"{variant}-s{seed}"
        if key in load_done(self.results):
            return
        concept = self.concept(seed)
        settings = settings_for(variant, seed, self.args.quick, self.args.concept_two_tone)
        self.ensure_data(settings)  # this variant's person photos (one folder per number of poses)
        run_dir = self.out / "runs" / key
        cfg = person_run(settings, self.data, run_dir, concept, self.person_data(settings))
        with self.lock(f"class-s{seed}"):  # class images are generated by this seed's concept model, once
            generate_for_run(config_from_dict(cfg), "cpu")
        seconds = self.train(cfg)
        self.measure(key, str(run_dir), {"stage": "person", "variant": variant, "seed": seed,
                                         "settings": {k: v for k, v in asdict(settings).items()
                                                      if k.startswith(PERSON_FIELDS)},
                                         "train_seconds": seconds}, look=settings.person_look)


    def checkpoints(self, variant: str, seed: int) -> None:
        """Each checkpoint of a finished person run, evaluated as a model (rows ``<variant>@<step>-s<seed>``)."""
        from sdtune.evaluation.checkpoints import expand_checkpoints

        run_dir = self.out / "runs" / f"{variant}-s{seed}"
        if run_state(run_dir) != "finished":
            return
        look = settings_for(variant, seed, self.args.quick).person_look
        for c in expand_checkpoints(run_dir, self.out / "materialised"):
            if not c.final:
                self.measure(f"{variant}@{c.step}-s{seed}", str(c.folder),
                             {"stage": "checkpoint", "variant": f"{variant}@{c.step}", "seed": seed, "step": c.step},
                             look=look)


def ceiling_looks(variants: list[str]) -> list[str]:
    """The persons whose ceiling the table shows: the easy one always (the demo prints it), the hard one when a
    hard-* variant is asked for."""
    return ["striped", *(["halved"] if any(v.startswith("hard-") for v in variants) else [])]


def ceiling_key(look: str) -> str:
    """The results row of a person's VAE ceiling ("vae-ceiling" for the easy person, as before the hard one)."""
    return "vae-ceiling" if look == "striped" else f"vae-ceiling-{look}"


def ceilings(bench: Bench, variants: list[str]) -> None:
    """Part 1 of #23: the person and composite checks on the VAE's reconstructions of true renders
    (evaluate.vae_ceiling, 200 each), the most a generated image of that person can score; recorded once."""
    from sdtune.toy.evaluate import vae_ceiling

    done = load_done(bench.results)
    missing = [look for look in ceiling_looks(variants) if ceiling_key(look) not in done]
    if not missing:
        return
    pipe = load_toy_pipeline("toy")
    for look in missing:
        row = {"key": ceiling_key(look), **vae_ceiling(pipe, bench.judge, person=PERSONS[look])}
        record(bench.results, row)
        print(f"[bench] {row['key']}: " + ", ".join(f"{k}={row[k]:.2f}" for k in KEYS if k in row), flush=True)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(done: dict[str, dict], variants: list[str], seeds: list[int],
          concept_variants: tuple[str, ...] = ()) -> dict[str, Any]:
    """Per variant: mean and std over seeds of every key, and old-prompt accuracy minus stage 1's (paired); stage 1
    (and each concept variant's) with old-prompt accuracy minus the base's; ``per_seed``: every row's runs."""
    out: dict[str, Any] = {"seeds": seeds, "rows": {}, "per_seed": {}}
    if "base" in done:
        out["rows"]["base"] = {k: (done["base"][k], 0.0) for k in KEYS} | {"n": 1}
    for concept in ("", *concept_variants):
        concepts = {s: done[k] for s in seeds if (k := f"concept-{concept}-s{s}" if concept else f"concept-s{s}")
                    in done}
        if concepts:
            name = f"stage 1: {concept}" if concept else STAGE1
            out["rows"][name] = {k: mean_std([c[k] for c in concepts.values()]) for k in KEYS} | {
                "n": len(concepts)}
            if "base" in done:
                out["rows"][name]["old_vs_base"] = mean_std([c["old_both"] - done["base"]["old_both"]
                                                             for c in concepts.values()])
            out["per_seed"][name] = {str(s): {k: c[k] for k in KEYS} for s, c in concepts.items()}
    for variant in variants:
        rows = [(done[f"{variant}-s{s}"], done.get(f"concept-s{s}")) for s in seeds if f"{variant}-s{s}" in done]
        if not rows:
            continue
        entry: dict[str, Any] = {k: mean_std([r[k] for r, _ in rows]) for k in KEYS}
        paired = [r["old_both"] - c["old_both"] for r, c in rows if c is not None]
        entry["old_vs_stage1"] = mean_std(paired) if paired else (float("nan"), 0.0)
        secs = [r["train_seconds"] for r, _ in rows if r.get("train_seconds")]
        entry["train_seconds"] = statistics.mean(secs) if secs else None
        entry["n"] = len(rows)
        out["rows"][variant] = entry
        out["per_seed"][variant] = {str(s): {k: done[f"{variant}-s{s}"][k] for k in KEYS}
                                    for s in seeds if f"{variant}-s{s}" in done}
    return out


def markdown(tab: dict[str, Any]) -> str:
    cols = [*KEYS, "old_vs_stage1", "old_vs_base"]
    head = ["after", *(LABELS.get(k, k.replace("old_vs_", "old acc - ").replace("stage1", "stage 1"))
                       for k in cols), "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in tab["rows"].items():
        cells = [f"{row[k][0]:.2f} ± {row[k][1]:.2f}" if k in row else "" for k in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['n']} |")
    for key, look in (("ceiling", "striped"), ("ceiling_halved", "halved")):
        if tab.get(key):  # one measurement over 200 reconstructions, not a spread over seeds
            cells = [f"{tab[key][k]:.2f}" if k in tab[key] else "" for k in cols]
            lines.append(f"| VAE ceiling ({look} person) | " + " | ".join(cells) + " | 200 |")
    return "\n".join(lines)


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    concept_variants = tuple(v for v in args.concept_variants.split(",") if v)
    unknown = [v for v in concept_variants if v not in CONCEPT_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown concept variants {unknown}; known: {', '.join(CONCEPT_VARIANTS)}")
    demo = DemoSettings()
    if args.publish and (trained_settings(settings_for(args.demo, demo.seed, args.quick)) != trained_settings(demo)
                         or args.quick or args.concept_two_tone is not None or demo.seed not in seeds):
        raise SystemExit(f"--publish: --demo {args.demo} with these options is not the demo's settings and "
                         f"training seed {demo.seed}; publish variant {DEMO} over seeds that include it")
    bench = Bench(args)
    bench.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        ceilings(bench, variants)  # first: seconds, and its numbers stand even when training is cut short
        shard, shards = (int(v) for v in args.shard.split("/"))
        jobs = [(v, s) for s in seeds for v in variants]  # seed-major: each seed's concept is trained first
        for i, (variant, seed) in enumerate(jobs):
            if i % shards == shard:
                bench.person(variant, seed)
        if concept_variants and shard == 0:
            bench.measure("base", "toy", {"stage": "base"})  # the old world before any stage
        for i, (variant, seed) in enumerate([(v, s) for s in seeds for v in concept_variants]):
            if i % shards == shard:
                bench.concept(seed, variant)
        marked = [v for v in args.checkpoints.split(",") if v]
        for i, (variant, seed) in enumerate([(v, s) for s in seeds for v in marked]):
            if i % shards == shard:
                bench.checkpoints(variant, seed)
        picked = [v for v in args.pick.split(",") if v]
        for i, (variant, seed) in enumerate([(v, s) for s in seeds for v in picked]):
            if i % shards == shard:
                pick(bench, variant, seed, settings_for(variant, seed, args.quick).person_look)
    done = load_done(bench.results)
    variants += [f"{v}+pick" for v in args.pick.split(",") if v]
    marked = [v for v in args.checkpoints.split(",") if v]
    steps = {r["variant"] for r in done.values()
             if r.get("stage") == "checkpoint" and r["variant"].split("@")[0] in marked}
    variants += sorted(steps, key=lambda v: (v.split("@")[0], int(v.split("@")[1])))
    tab = table(done, variants, seeds, concept_variants)
    for look in ceiling_looks(variants):
        if ceiling_key(look) in done:
            tab[ceiling_key(look)[len("vae-"):].replace("-", "_")] = {  # "ceiling" (the demo reads it), ...
                k: v for k, v in done[ceiling_key(look)].items() if k != "key"}
    text = markdown(tab)
    (bench.out / "README.md").write_text(text + "\n")
    print(text)
    if args.publish:
        if eval_plan(bench.evaluation) != eval_plan(demo):
            raise SystemExit("--publish: --eval-seeds / --person-seeds differ from the demo's evaluation")
        tab.update(demo=args.demo, settings=trained_settings(demo), eval=eval_plan(bench.evaluation))
        PUBLISHED.write_text(json.dumps(tab, indent=1) + "\n")
        print(f"published: {PUBLISHED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
