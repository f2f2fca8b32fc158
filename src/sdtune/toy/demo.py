"""``sdtune demo``: the whole two-stage flow, offline, on CPU, in minutes, on the built-in ``toy`` model.

1. datasets: captioned images of the held-out glyph (the concept) and eight photos of the person in four shapes
   ("poses"), each captioned with its shape ("a photo of sks red circle");
2. stage 1, concept: text-to-image LoRA on the glyph, saved both as a LoRA and fused into ``concept/model``;
3. stage 2, person: pivotal tuning in sequence on the captioned photos, on ``concept/model``: one new token's
   embedding learns the person alone first, then a LoRA (with output preservation) around the frozen token
   (``person_method``: "textual-inversion" or "lora" instead);
   both stages are one ``sdtune run`` recipe (``OUT/recipe.yaml``), so a rerun skips finished stages;
4. evaluation of base, stage 1, the person stage's checkpoints and stage 2 with the same prompts and seeds:
   judge accuracy on the old world prompts (forgetting), concept rate, person rate (judge and pixel check),
   class-prompt drift, the composite (the person doing the concept: "a photo of sks red arrow"), toy-CLIP
   score of the old prompts; an HTML report (table with the benchmark's spread beside this one run, a chart
   across stages and checkpoints, image grids), ``results.json`` and a printed table.

Each stage is an ordinary run folder that ``sdtune generate`` and ``sdtune eval`` accept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdtune import typed_yaml
from sdtune.toy import world
from sdtune.toy.demo_eval import benchmark_rows, evaluate_models
from sdtune.toy.demo_settings import DemoSettings
from sdtune.toy.evaluate import summary
from sdtune.toy.finetune import FINE_LEVELS, concept_config, dreambooth_config, level_targets
from sdtune.toy.report import write_report
from sdtune.toy.world import PERSONS, Person

# The cross-attention key and value projections: the only layers that read the prompt (Kumari et al., "Multi-Concept
# Customization of Text-to-Image Diffusion", 2023, fine-tune only these to learn a subject that composes).
CROSS_ATTENTION_KV = ("attn2.to_k", "attn2.to_v")


def person_of(settings: DemoSettings) -> Person:
    """The toy person ``settings.person_look`` names (``world.PERSONS``); ValueError naming the known looks."""
    if settings.person_look not in PERSONS:
        raise ValueError(f"person_look {settings.person_look!r}: one of {', '.join(PERSONS)}")
    return PERSONS[settings.person_look]


def concept_data(settings: DemoSettings, data: Path) -> Path:
    """The concept's captioned images: ``data/concept``, or with ``concept_token`` a copy whose captions write
    the token for the concept's word (``data/concept-<token>``)."""
    if not settings.concept_token:
        return data / "concept"
    return data / ("concept-" + "".join(c if c.isalnum() else "_" for c in settings.concept_token))


def write_concept_data(settings: DemoSettings, data: Path) -> Path:
    """Write :func:`concept_data` unless it is there (``scenes.jsonl`` is written last)."""
    folder = concept_data(settings, data)
    if (folder / "scenes.jsonl").exists():
        return folder
    world.write_concept_set(folder, settings.concept_images, seed=1, captioned=True,
                            two_tone=settings.concept_two_tone)
    if settings.concept_token:
        import json
        import re

        meta = folder / "metadata.jsonl"
        rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines()]
        for row in rows:
            row["text"] = re.sub(rf"\b{world.CONCEPT}\b", settings.concept_token, row["text"])
        meta.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


def concept_stage(settings: DemoSettings, data: Path, out: Path) -> dict[str, Any]:
    """Stage 1's run config: a text-to-image LoRA (or full fine-tune) on the captioned concept images."""
    cfg = concept_config("toy", concept_data(settings, data), out, steps=settings.concept_steps,
                         lr=settings.concept_lr, lora_rank=settings.concept_rank if settings.concept_lora else None,
                         seed=settings.seed, caption_dropout=settings.concept_caption_dropout)
    cfg["train"]["train_text_encoder"] = settings.concept_text_encoder
    if settings.concept_token:  # pivotal tuning of the concept: its own token, trained beside the LoRA
        cfg["train"].update(textual_inversion={"token": settings.concept_token, "learning_rate":
                                               settings.concept_token_lr,
                                               "initializer": settings.concept_token_init},
                            adam_weight_decay=0.0)
        cfg["save"]["full_model"] = False  # a learned token is no part of a fused model (a stage-1 screen only)
    if settings.concept_targets == "kv" and settings.concept_lora:  # only what reads the prompt learns the word
        cfg["train"]["lora"]["targets"] = list(CROSS_ATTENTION_KV)
    elif settings.concept_targets != "all":
        raise ValueError(f"concept_targets {settings.concept_targets!r}: all or kv")
    if settings.concept_preservation:
        from sdtune.toy.evaluate import generic_prompts

        cfg["train"]["preservation"] = {"weight": settings.concept_preservation,
                                        "prompts": generic_prompts(settings.concept_preservation_prompts)}
    if settings.concept_class_images:  # the base model's images of other prompts: prior preservation's class images
        from sdtune.toy.evaluate import generic_prompts

        shapes = settings.concept_class_shapes
        prompts = generic_prompts(None, shapes) if shapes else generic_prompts(settings.concept_class_prompts)
        name = "-".join(shapes) if shapes else str(settings.concept_class_prompts)
        cfg["data"]["subsets"] = [{"path": str(data / f"class-generic-{name}"),
                                   "role": "class", "class_prompts": prompts,
                                   "num_images": settings.concept_class_images,
                                   "loss_weight": settings.concept_class_weight}]
    return cfg


def person_method_label(settings: DemoSettings) -> str:
    """How the person stage learns, in the words every printed line and label uses."""
    return {"textual-inversion": "textual inversion", "pivotal": "pivotal tuning"}.get(settings.person_method, "LoRA")


def person_stage(settings: DemoSettings, data: Path, out: Path, concept_model: str,
                 class_root: Path | None = None, concept: dict[str, Any] | None = None,
                 concept_lora: Path | None = None, person_dir: Path | None = None) -> dict[str, Any]:
    """Stage 2's run config on ``concept_model`` (the fused concept model): pivotal tuning of the person's token and
    a LoRA (the default ``person_method``), textual inversion of the token alone, or a DreamBooth LoRA.

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
                                               "lora_start": settings.person_lora_start,
                                               "norm_limit": settings.person_norm_limit,
                                               "initializer": settings.person_initializer,
                                               "num_vectors": settings.person_vectors},
                            adam_weight_decay=0.0)
        if settings.person_attention_loss:  # the token's attention towards the masks (Break-A-Scene)
            cfg["train"]["attention_loss"] = {"weight": settings.person_attention_loss,
                                              "downscales": list(settings.person_attention_downscales)}
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
    if settings.person_max_timestep is not None:  # the person trains on the low-noise steps only (detail, colour)
        cfg["train"]["max_timestep"] = settings.person_max_timestep
    if settings.person_masks:
        photos = Path(cfg["data"].get("train_dir") or cfg["data"]["instance_dir"])
        cfg["data"].update(masked_loss=True, mask_dir=str(person_mask_dir(photos)),
                           mask_outside_weight=settings.person_mask_outside, mask_start=settings.person_mask_start)


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
                                           "initializer": settings.person_initializer,
                                           "num_vectors": settings.person_vectors},
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
    check_group_folder(out, {"data"}, [], "demo folder", "recipe.yaml", "--out", "sdtune demo",
                       "data/, a run folder per stage, report/")


def _person_steps_held(recipe: Any) -> int:
    """The first steps of the person stage that train its token alone (pivotal tuning's ``lora_start``; 0: none),
    from the stage's own run config, rounded as training rounds them."""
    from sdtune.recipes.schema import stage_configs
    from sdtune.training.pivotal import lora_steps_held

    return lora_steps_held(stage_configs(recipe)[-1][1])


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
    write_concept_data(settings, data)
    if not (data / "person" / "scenes.jsonl").exists():
        write_person_photos(data / "person", settings)
    lap("datasets")

    concept_dir, person_dir = out / "concept", out / "person"
    if run_recipe(recipe, out / "recipe.yaml", echo=echo).status != "finished":
        raise Interrupted("the demo stopped during training (a checkpoint was saved): run the same command again "
                          "to continue")
    lap(f"two-stage recipe (concept LoRA, then person {person_method_label(settings)})")

    models = {"base": "toy", "stage 1: concept": str(concept_dir)}
    steps = {}
    for checkpoint in expand_checkpoints(person_dir, out / "report")[:-1]:  # the last one is the final result
        models[f"stage 2 @ step {checkpoint.step}"] = str(checkpoint.folder)
        steps[f"stage 2 @ step {checkpoint.step}"] = checkpoint.step
    models["stage 2: person"] = str(person_dir)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    results = evaluate_models(models, settings, workers=min(2, cores))  # training left a core idle: use it here
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
    held = _person_steps_held(recipe)
    if held and steps:
        notes.append(f"the person's token learns alone for its first {held} steps, then the LoRA trains around it: "
                     f"the checkpoints up to step {held} are the token alone (textual inversion)")
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
