"""``sdtune demo``: the whole two-stage flow, offline, on CPU, in minutes, on the built-in ``toy`` model.

1. datasets: captioned images of the held-out glyph (the concept) and eight photos of the person in four shapes
   ("poses"), each captioned with its shape ("a photo of sks red circle");
2. stage 1, concept: text-to-image LoRA on the glyph, saved both as a LoRA and fused into ``concept/model``;
3. stage 2, person: textual inversion on the captioned photos: one new token's embedding learns the person on
   ``concept/model``, which stays untouched (``person_method="lora"``: a LoRA with output preservation instead);
   both stages are one ``sdtune run`` recipe (``OUT/recipe.yaml``), so a rerun skips finished stages;
4. evaluation of base, stage 1, the person stage's checkpoints and stage 2 with the same prompts and seeds:
   judge accuracy on the old world prompts (forgetting), concept rate, person rate (judge and pixel check),
   class-prompt drift, the composite (the person doing the concept: "a photo of sks red arrow"), toy-CLIP
   score of the old prompts; an HTML report (table with the benchmark's spread beside this one run, a chart
   across stages and checkpoints, image grids), ``results.json`` and a printed table.

Each stage is an ordinary run folder that ``sdtune generate`` and ``sdtune eval`` accept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtune import typed_yaml
from sdtune.toy import world
from sdtune.toy.demo_eval import benchmark_rows, demo_suite, eval_seeds
from sdtune.toy.evaluate import default_judge, evaluate, load_toy_pipeline, summary
from sdtune.toy.finetune import FINE_LEVELS, LORA_RANK, concept_config, dreambooth_config, level_targets
from sdtune.toy.report import write_report
from sdtune.toy.world import PERSONS, Person

# The cross-attention key and value projections: the only layers that read the prompt (Kumari et al., "Multi-Concept
# Customization of Text-to-Image Diffusion", 2023, fine-tune only these to learn a subject that composes).
CROSS_ATTENTION_KV = ("attn2.to_k", "attn2.to_v")


@dataclass
class DemoSettings:
    """Everything the demo (and ``benchmarks/two_stage.py``, which runs it over seeds and variants) trains with.

    The person-stage fields are the options measured for keeping the concept through the person stage; their
    numbers are in docs/two-stage.md ("Keeping the concept")."""

    concept_images: int = 24
    # The share of the concept's arrows drawn two-tone (checkered or striped, never the person's own look), as a
    # thumbs-up set shows many different people: with solid arrows only the concept model drew "a photo of a red
    # and cyan striped arrow" as a striped arrow in 4-11 of 16 images and the composite failed on 2 of 3 seeds
    # (0.21 mean); with half two-tone it was 0.88 on every seed, 0.25 gave 0.46 (benchmark, 6 Dec 2026).
    concept_two_tone: float = 0.5
    # The person photographed in 4 shapes ("poses"), each photo captioned with its shape ("a photo of sks red
    # circle"): the identifier then stands for what every photo shares, the stripes and colours, and the concept's
    # form can carry them (the composite). With one shape (DreamBooth's one fixed prompt) "sks" took the square's
    # form too, and "a photo of sks red arrow" drew no striped arrow in any variant (docs/two-stage.md).
    person_images: int = 8
    person_poses: int = 4
    # Whose photos: "striped" (red and cyan stripes, words the base knows: world.PERSON) or "halved" (green over
    # purple halves of the shape, a look no words of the toy world draw, as no words draw a real face:
    # world.HARD_PERSON). Both share token, poses and caption templates.
    person_look: str = "striped"
    # Masked loss on the person's photos (data.masked_loss): the loss counts on the shape's silhouette (written
    # beside the photos as "<photos>-masks", world.write_masks), person_mask_outside elsewhere
    person_masks: bool = False
    person_mask_outside: float = 0.0
    # 600 concept steps: concept 0.94 but old-prompt accuracy 0.92 -> 0.60, and no person learned on top;
    # 300: 0.81 and 0.73 (measured). LoRA on attention, convs and feed-forwards (finetune.LORA_TARGETS).
    concept_steps: int = 300
    concept_lora: bool = True
    concept_lr: float = 1e-3
    concept_rank: int = LORA_RANK
    concept_caption_dropout: float = 0.1  # share of concept captions dropped to "" (data.caption_dropout)
    concept_targets: str = "all"  # the concept LoRA's layers: "all" (finetune.LORA_TARGETS) or "kv" (Custom Diffusion)
    # Output preservation in stage 1 (train.preservation): keep the base's prediction on this many of the world's
    # other prompts (evaluate.generic_prompts, none of them an evaluated one) at this weight; 0: off
    concept_preservation: float = 0.0
    concept_preservation_prompts: int = 12
    # The striped person is learned in a few hundred steps (a checkered star needed 1000 and reached 0.31): 250 at
    # lr 2e-3 drew it in 0.83 of images at guidance 2 (seed 0, measured 29 Nov 2026) and keep the demo in minutes.
    person_steps: int = 400  # (a LoRA person: 250)
    person_lr: float = 2e-2  # (a LoRA person: 2e-3)
    person_rank: int = 4  # seed 0, 4 poses, fine levels: rank 8 drew the composite in 0.08, rank 4 0.21
    # "fine": LoRA only on the UNet's finer levels (finetune.FINE_LEVELS), which change texture and colour more
    # than form; "all"; "kv": only the cross-attention keys and values (Custom Diffusion)
    person_targets: str = "fine"
    person_on: str = "model"  # (c) "adapter": on the base with the concept LoRA as a frozen, unfused adapter
    # "lora", or "textual-inversion": only the embedding of a new token "sks" trains (the model is untouched, so
    # the concept and the old world stay exactly as stage 1 left them); person_steps / person_lr / person_batch
    # apply, person_rank / person_targets / preservation / prior do not
    # Textual inversion is the demo's default: 400 steps at 2e-2, batch 8 (benchmark: person 1.00, composite 0.88,
    # concept and old world exactly stage 1's, over three seeds); the LoRA fields below are the measured alternative.
    person_method: str = "textual-inversion"
    person_batch: int = 8
    person_norm_limit: float | None = None  # textual inversion: train.textual_inversion.norm_limit
    person_initializer: str | None = None  # textual inversion: the text the token starts from (None: "sks")
    # "pivotal": the token's embedding (person_ti_lr, frozen after person_ti_fraction of the steps) and the LoRA
    # (person_lr, rank, targets, preservation as a LoRA person) train together (sdtune.training.pivotal)
    person_ti_lr: float = 2e-2
    person_ti_fraction: float = 0.5
    # (With the first person a text-encoder LoRA helped, as DreamBooth users find for faces: on the base model,
    # person 0.50 of images (pixel check) and class prompt intact 0.29, against 0.38 and 0.04 without.)
    # Off since the striped person: the text-encoder LoRA changes every prompt's embedding, the old world's too
    # (old-prompt accuracy 0.19 below stage 1 without it, 0.33 with it; person 1.00 vs 0.83; benchmark, 29 Nov 2026)
    person_text_encoder: bool = False
    # How the person stage keeps the class prompt and the concept (docs/two-stage.md, "Keeping the concept", has
    # every option's numbers over three seeds): differential output preservation on the class prompt and the
    # concept's own prompts, no class images.
    prior: bool = False  # prior preservation with class images of the class prompt ("a photo of a red square")
    class_images: int = 12
    concept_prior: int = 0  # (a) also class images of the concept stage's prompts, drawn by the concept model
    # (b) weight of differential output preservation (0: off); 4 poses, seed 0: 1 -> composite 0.08, 3 -> 0.29
    # but person 0.38; with rank 4, 2 kept the person (0.62) and the concept (0.83), composite 0.21. Off by
    # default: textual inversion changes no weight, so there is nothing to preserve (a LoRA person: set 2.0)
    preservation: float = 0.0
    preservation_concept: bool = True  # (b) its prompts: the class prompt and the concept's own prompts
    preservation_generic: int = 0  # (b) also this many other world prompts (evaluate.generic_prompts)
    seed: int = 0  # training seed of both stages: one of the benchmark's training seeds, so its run is one of them
    checkpoint_every: int = 100  # person checkpoints, all kept: `sdtune pick` chooses among them
    # The evaluation, the benchmark's too (sdtune.toy.demo_eval): per old-world and concept prompt `seeds` images
    # (seeds 100...), per person, class and composite prompt `person_seeds` (200...): single prompts, more images
    seeds: int = 6
    person_seeds: int = 24
    old_prompts: int = 12
    eval_steps: int = 20

    @classmethod
    def quick(cls) -> DemoSettings:
        """For tests and a first look: a few dozen steps, two seeds (numbers are then only indicative)."""
        return cls(concept_images=8, person_images=4, concept_steps=30, person_steps=30, class_images=4, seeds=2,
                   person_seeds=4, old_prompts=6, eval_steps=10, checkpoint_every=15)


def person_of(settings: DemoSettings) -> Person:
    """The toy person ``settings.person_look`` names (``world.PERSONS``); ValueError naming the known looks."""
    if settings.person_look not in PERSONS:
        raise ValueError(f"person_look {settings.person_look!r}: one of {', '.join(PERSONS)}")
    return PERSONS[settings.person_look]


def concept_stage(settings: DemoSettings, data: Path, out: Path) -> dict[str, Any]:
    """Stage 1's run config: a text-to-image LoRA (or full fine-tune) on the captioned concept images."""
    cfg = concept_config("toy", data / "concept", out, steps=settings.concept_steps, lr=settings.concept_lr,
                         lora_rank=settings.concept_rank if settings.concept_lora else None, seed=settings.seed,
                         caption_dropout=settings.concept_caption_dropout)
    if settings.concept_targets == "kv" and settings.concept_lora:  # only what reads the prompt learns the word
        cfg["train"]["lora"]["targets"] = list(CROSS_ATTENTION_KV)
    elif settings.concept_targets != "all":
        raise ValueError(f"concept_targets {settings.concept_targets!r}: all or kv")
    if settings.concept_preservation:
        from sdtune.toy.evaluate import generic_prompts

        cfg["train"]["preservation"] = {"weight": settings.concept_preservation,
                                        "prompts": generic_prompts(settings.concept_preservation_prompts)}
    return cfg


def person_method_label(settings: DemoSettings) -> str:
    """How the person stage learns, in the words every printed line and label uses."""
    return {"textual-inversion": "textual inversion", "pivotal": "pivotal tuning"}.get(settings.person_method, "LoRA")


def person_stage(settings: DemoSettings, data: Path, out: Path, concept_model: str,
                 class_root: Path | None = None, concept: dict[str, Any] | None = None,
                 concept_lora: Path | None = None, person_dir: Path | None = None) -> dict[str, Any]:
    """Stage 2's run config on ``concept_model`` (the fused concept model): textual inversion of the person's token
    (the default ``person_method``), or a DreamBooth LoRA of the person.

    ``class_root``: where class images go (generated by the concept model; default ``data``). ``concept``: the
    concept stage's config, ``concept_lora`` its LoRA file: for ``settings.concept_prior``,
    ``settings.preservation_concept`` and ``settings.person_on`` outside a recipe (a recipe's stage does it).
    ``person_dir``: the person's photos (default ``data/person``)."""
    class_root = class_root or data
    person = person_of(settings)
    if settings.person_method == "textual-inversion":
        return _textual_inversion_stage(settings, data, out, concept_model, concept_lora, person_dir)
    if settings.person_poses > 1 and settings.prior:
        raise ValueError("prior preservation (class images of one class prompt) needs the one-pose person; "
                         "photos in several poses keep their class prompts with output preservation")
    cfg = dreambooth_config(concept_model, person_dir or data / "person", out, steps=settings.person_steps,
                            lr=settings.person_lr, lora_rank=settings.person_rank, seed=settings.seed,
                            batch_size=settings.person_batch,
                            prior=settings.prior,
                            class_dir=class_root / "class-person", train_text_encoder=settings.person_text_encoder,
                            num_class_images=settings.class_images, person=person)
    if settings.person_targets == "fine":
        cfg["train"]["lora"]["targets"] = level_targets(FINE_LEVELS)
    elif settings.person_targets == "kv":  # Custom Diffusion's choice: what the prompt's words write into the image
        cfg["train"]["lora"]["targets"] = list(CROSS_ATTENTION_KV)
    elif settings.person_targets != "all":
        raise ValueError(f"person_targets {settings.person_targets!r}: all, fine or kv")
    _person_common(cfg, settings, concept_lora)
    if settings.person_method == "pivotal":  # the token learns beside the LoRA; no decay pulls its vector to zero
        cfg["train"].update(textual_inversion={"token": person.token, "learning_rate": settings.person_ti_lr,
                                               "ti_fraction": settings.person_ti_fraction,
                                               "norm_limit": settings.person_norm_limit,
                                               "initializer": settings.person_initializer},
                            adam_weight_decay=0.0)
    elif settings.person_method != "lora":
        raise ValueError(f"person_method {settings.person_method!r}: textual-inversion, pivotal or lora")
    if settings.preservation:
        from sdtune.toy.evaluate import generic_prompts

        cfg["train"]["preservation"] = {"weight": settings.preservation,
                                        "prompts": [*person.class_prompts(max(1, settings.person_poses)),
                                                    *generic_prompts(settings.preservation_generic)]}
    keep_prompts = bool(settings.preservation and settings.preservation_concept)
    if concept is not None and (settings.concept_prior or keep_prompts):  # a recipe does this from its stage
        from sdtune.config import config_from_dict
        from sdtune.recipes.schema import keep_concept

        keep_concept(cfg, config_from_dict(concept), "concept", class_root, prior=settings.concept_prior,
                     preservation=keep_prompts, source="the person stage")
    return cfg


def _person_common(cfg: dict[str, Any], settings: DemoSettings, concept_lora: Path | None) -> None:
    """What both person methods share (in place): every checkpoint kept, the concept as an adapter when asked, the
    captioned photos as text-to-image data."""
    steps = settings.person_steps
    every = min(settings.checkpoint_every, steps)
    cfg["checkpoint"] = {"every": every, "keep": -(-steps // every)}  # all of them: small states
    if settings.person_on == "adapter" and concept_lora is not None:
        cfg["model"] = {"base": "toy", "adapters": [{"path": str(concept_lora), "name": "concept"}]}
    if settings.person_poses > 1:  # captioned photos: text-to-image on them (DreamBooth has one fixed prompt)
        cfg["data"] = {"train_dir": cfg["data"]["instance_dir"], "resolution": cfg["data"]["resolution"],
                       "check": False}
    if settings.person_masks:
        photos = Path(cfg["data"].get("train_dir") or cfg["data"]["instance_dir"])
        cfg["data"].update(masked_loss=True, mask_dir=str(person_mask_dir(photos)),
                           mask_outside_weight=settings.person_mask_outside)


def _textual_inversion_stage(settings: DemoSettings, data: Path, out: Path, concept_model: str,
                             concept_lora: Path | None, person_dir: Path | None) -> dict[str, Any]:
    """The person as a new token "sks" on the concept model: its embedding is all that trains (no weight decay:
    decay would pull the one vector towards zero), started from the word "sks" the toy vocabulary already has."""
    if settings.prior or settings.preservation or settings.concept_prior:
        raise ValueError("textual inversion changes no weight of the model, so nothing needs preserving: set "
                         "prior=False, preservation=0 and concept_prior=0")
    person = person_of(settings)
    cfg = dreambooth_config(concept_model, person_dir or data / "person", out, steps=settings.person_steps,
                            lr=settings.person_lr, lora_rank=None, seed=settings.seed,
                            batch_size=settings.person_batch, person=person)
    cfg["train"].update(textual_inversion={"token": person.token, "norm_limit": settings.person_norm_limit,
                                           "initializer": settings.person_initializer},
                        adam_weight_decay=0.0)
    _person_common(cfg, settings, concept_lora)
    return cfg


def demo_recipe(out: Path, settings: DemoSettings):
    """The two stages as an ``sdtune run`` recipe (written to OUT/recipe.yaml: re-runnable as is)."""
    from sdtune.recipes.schema import Recipe, Stage

    data = out / "data"
    concept = concept_stage(settings, data, out / "concept")
    person = person_stage(settings, data, out / "person", "toy")  # the stage's fields keep the concept
    for cfg in (concept, person):
        cfg.pop("output_dir")  # the recipe puts each stage in OUT/<stage>
    person.pop("model")  # trains on the concept stage's model (LoRA fused in)
    return Recipe(output_dir=out, stages=[Stage(name="concept", config=concept, extract_rank=16),
                                          Stage(name="person", base="stage:concept", config=person,
                                                base_as="adapter" if settings.person_on == "adapter" else "model",
                                                concept_prior=settings.concept_prior or None,
                                                concept_preservation=bool(settings.preservation
                                                                          and settings.preservation_concept))])


def clip_scores(results: dict[str, Any], clip_dir: Path) -> None:
    """Add the mean toy-CLIP score of the old prompts' images against their prompts, in place.

    Only there: the toy CLIP knows "sks" as a green-and-pink striped heart (``world.NAMED``), so its score of
    the person prompt FALLS as the person is learned (73 for the base, 4-9 after the person stage, measured) -
    the judge's person and composite rates are the subject's metrics."""
    from sdtune.evaluation.clip_score import ClipScorer

    scorer = ClipScorer(str(clip_dir), local_files_only=True)
    for res in results.values():
        seeds = res["old"]["seeds"]
        values = scorer.scores(res["old"]["images_pil"], [p for p in res["old"]["prompts"] for _ in seeds])
        res["old"]["clip_score"] = sum(values) / len(values)


def person_mask_dir(photos: Path) -> Path:
    """Where the masks of the person's photos are (``settings.person_masks``): beside the photo folder."""
    return photos.with_name(f"{photos.name}-masks")


def write_person_photos(folder: Path, settings: DemoSettings) -> Path:
    """The person's photos as the settings ask: one pose (DreamBooth's instance images, no captions) or several,
    each captioned with its shape; with ``person_masks`` their masks too (:func:`person_mask_dir`)."""
    world.write_person_set(folder, settings.person_images, seed=2, captioned=settings.person_poses > 1,
                           poses=settings.person_poses, person=person_of(settings))
    if settings.person_masks:
        world.write_masks(folder, person_mask_dir(folder))
    return folder


def check_demo_folder(out: Path, recipe_text: str) -> None:
    """``--out`` must be new, empty, or this very demo's folder (its ``recipe.yaml``, the same settings: a rerun
    continues); anything else is refused before a file is written: a folder of other files or data, another
    recipe's runs, or a demo with other settings (``--quick``), whose stages would not match."""
    from sdtune.errors import ConfigError
    from sdtune.output_folders import check_group_folder

    written = out / "recipe.yaml"
    if written.is_file():
        if written.read_text(encoding="utf-8") != recipe_text:
            raise ConfigError(f"--out {out} holds other runs: its recipe.yaml is not this demo's (another recipe, "
                              "or the demo with other settings such as --quick). Choose a new folder with --out")
        return
    check_group_folder(out, {"data"}, [], "demo folder", "recipe.yaml", "--out", "sdtune demo")


def run_demo(out: Path, settings: DemoSettings | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the demo into ``out`` and return ``{"table": ..., "benchmark": ..., "paths": ..., "seconds": ...}``."""
    from sdtune.errors import Interrupted
    from sdtune.evaluation.checkpoints import expand_checkpoints
    from sdtune.models.presets import toy_path
    from sdtune.recipes.runner import run_recipe

    settings = settings or DemoSettings()
    out = Path(out).resolve()
    seconds: dict[str, float] = {}
    clock = time.time()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.time() - clock, 1)
        clock = time.time()
        echo(f"[demo] {name}: {seconds[name]:.0f} s")

    recipe = demo_recipe(out, settings)
    recipe_text = typed_yaml.dump(recipe.model_dump(mode="json"))
    check_demo_folder(out, recipe_text)  # before anything is written into it
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(recipe_text, encoding="utf-8")
    data = out / "data"
    if not (data / "concept" / "metadata.jsonl").exists():
        world.write_concept_set(data / "concept", settings.concept_images, seed=1, captioned=True,
                                two_tone=settings.concept_two_tone)
    if not (data / "person" / "scenes.jsonl").exists():
        write_person_photos(data / "person", settings)
    lap("datasets")

    concept_dir, person_dir = out / "concept", out / "person"
    if run_recipe(recipe, out / "recipe.yaml", echo=echo).status != "finished":
        raise Interrupted("the demo stopped during training (a checkpoint was saved): run the same command again "
                          "to continue")
    lap(f"two-stage recipe (concept LoRA, then person {person_method_label(settings)})")

    judge = default_judge()
    suite = demo_suite(settings)
    seeds, group_seeds = eval_seeds(settings)  # the benchmark's: its row of settings.seed is this run
    models = {"base": "toy", "stage 1: concept": str(concept_dir)}
    steps = {}
    for checkpoint in expand_checkpoints(person_dir, out / "report")[:-1]:  # the last one is the final result
        models[f"stage 2 @ step {checkpoint.step}"] = str(checkpoint.folder)
        steps[f"stage 2 @ step {checkpoint.step}"] = checkpoint.step
    models["stage 2: person"] = str(person_dir)
    results = {name: evaluate(load_toy_pipeline(ref), judge, suite, seeds, steps=settings.eval_steps,
                              group_seeds=group_seeds)
               for name, ref in models.items()}
    clip_scores(results, toy_path() / "clip")
    lap("evaluation")

    rows = {name: {**summary(res), "clip_score_old": res["old"]["clip_score"]} for name, res in results.items()}
    table = {name: row for name, row in rows.items() if name not in steps}
    chart = {("stage 1" if name.startswith("stage 1") else f"step {steps[name]}" if name in steps else
              f"step {settings.person_steps}" if name.startswith("stage 2") else name): row
             for name, row in rows.items()}
    benchmark = benchmark_rows(settings)
    notes = ["toy-CLIP score of the person prompt: not shown, it misleads - the toy CLIP knows 'sks' as a "
             "green-and-pink striped heart, so the score falls as the person is learned (73 for the base, 4-9 "
             "after the person stage, measured)"]
    if benchmark and not benchmark["matches"]:
        notes.append("the benchmark's rows are for `sdtune demo` as shipped: this run's settings, evaluation or "
                     "training seed differ (--quick, --seeds), so they are no spread of this run")
    elif benchmark and benchmark["matches"]:
        notes.append(f"this run is the benchmark's run of training seed {settings.seed} (the same settings, "
                     "evaluation seeds and prompts): its 'benchmark seed' rows are what it measured for that run")
    if benchmark and benchmark.get("ceiling"):
        c = benchmark["ceiling"]
        notes.append(f"ceiling: the judge reads the person in {c['person_judge']:.2f} (pixel check "
                     f"{c['person_pixels']:.2f}) and the composite in {c['composite']:.2f} "
                     f"({c['composite_pixels']:.2f}) of the VAE's reconstructions of true renders - the most a "
                     "generated image can score")
    report = write_report(out / "report", results, table, seconds, chart, benchmark, notes)
    lap("report")
    paths = {"report": str(report), "results": str(out / "report" / "results.json"), "recipe": str(out / "recipe.yaml"),
             "concept run": str(concept_dir), "person run": str(person_dir), "data": str(data)}
    return {"table": table, "benchmark": benchmark, "notes": notes, "paths": paths, "seconds": seconds}
