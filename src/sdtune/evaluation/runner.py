"""``sdtune eval``: generate (cached) every model x prompt x seed, then score them all with one backbone.

Generation happens first, one model in memory at a time; then the CLIP (and DINO) backbone is loaded once and
embeds every image, text and reference photo. The result is a plain dict (JSON-ready) that ``report`` renders.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdtune.errors import SdtuneError
from sdtune.evaluation.cache import GenerationCache, Job, ModelSpec
from sdtune.evaluation.clip_score import CLIP_T_SCALE, COSINE_SCALE, ClipScorer, clip_t, default_clip_for
from sdtune.evaluation.fidelity import DinoEmbedder, load_reference_images, mean_similarity_to_references
from sdtune.evaluation.forgetting import paired_similarity, score_deltas
from sdtune.evaluation.stats import per_prompt, summarize
from sdtune.inference.generate import GenerationSettings, pick_device
from sdtune.inference.pipeline import base_of

TOY_BACKBONE = "toy judge"
# name -> (label, backbone kind, scale, what is better, what it measures)
METRICS: dict[str, tuple[str, str, str, str, str]] = {
    "clip_t": ("CLIP-T", "clip", CLIP_T_SCALE, "higher", "image-prompt agreement on the evaluation prompts"),
    "clip_i": ("CLIP-I", "clip", COSINE_SCALE, "higher", "mean similarity to the reference photos (CLIP)"),
    "dino": ("DINO", "dino", COSINE_SCALE, "higher", "mean similarity to the reference photos (DINO CLS)"),
    "generic_clip_t": ("CLIP-T generic", "clip", CLIP_T_SCALE, "higher", "image-prompt agreement, generic prompts"),
    "generic_clip_delta": ("ΔCLIP-T vs base", "clip", "CLIP-T points", "near 0",
                           "generic prompts: CLIP-T minus the base model's at the same seed"),
    "base_similarity": ("similarity to base", "clip", COSINE_SCALE, "higher",
                        "generic prompts: image similarity to the base model's image at the same seed"),
}


@dataclass
class EvalRequest:
    """Everything ``sdtune eval`` was asked to do."""

    models: list[str]
    prompts: list[str]
    seeds: list[int]
    out_dir: Path
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    clip: str | None = None
    dino: str | None = None
    reference_dir: Path | None = None
    generic_prompts: list[str] = field(default_factory=list)
    base: str | None = None  # base for forgetting when a model is not a run folder (run folders know theirs)
    device: str | None = None
    dtype: str = "auto"
    batch_size: int = 4
    allow_pickle: bool = False
    local_files_only: bool | None = None
    toy: bool = False  # the toy suite's prompts too, each image judged (sdtune.evaluation.toy_suite)
    checkpoints: bool = False  # a LoRA run folder stands for all its checkpoints (sdtune.evaluation.checkpoints)


def choose_clip(models: Sequence[str], clip: str | None) -> str:
    """The user's ``--clip``, else the models' common default (scores from two backbones never mix)."""
    if clip:
        from sdtune.models.presets import is_preset

        if clip == "toy":  # the toy model's own CLIP, as its models default to
            from sdtune.evaluation.clip_score import toy_clip

            return str(toy_clip())
        if is_preset(clip):
            raise SdtuneError(f"--clip {clip}: the built-in model {clip} has no CLIP; pass a hub id or a local "
                              "CLIP folder (or --clip toy)")
        return clip
    defaults = sorted({default_clip_for(m) for m in models})
    if len(defaults) > 1:
        raise SdtuneError(f"these models default to different CLIP backbones ({', '.join(defaults)}); scores "
                          "would not compare. Pass --clip to choose one for all.")
    return defaults[0]


def _labels(models: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for m in models:
        seen[m] = seen.get(m, 0) + 1
        out.append(m if seen[m] == 1 else f"{m} #{seen[m]}")
    return out


def _validate(req: EvalRequest) -> None:
    if not req.models:
        raise SdtuneError("no models to evaluate: pass one or more base models or run folders")
    if not req.prompts and not req.toy:
        raise SdtuneError("no prompts: pass --prompts FILE (one prompt per line) or --prompt TEXT")
    if not req.seeds:
        raise SdtuneError("no seeds: pass --seeds K (K >= 1)")
    check_models(req.models, checkpoints=req.checkpoints)
    _check_before_backbones(req.models, req.allow_pickle)


def _check_before_backbones(models: Sequence[str], allow_pickle: bool) -> None:
    """What :func:`check_models` leaves to the command, checked before the CLIP backbone loads (it would fail first
    and name only itself): hub ids neither cached nor reachable (not in check_models: a job queued here may run
    where the hub is reachable), and a pickle-format model file without --allow-pickle."""
    from sdtune.models.loading import resolve_model_ref
    from sdtune.models.presets import is_preset
    from sdtune.models.refs import looks_local
    from sdtune.run_folder import check_weights_file

    for ref in models:
        path = Path(ref).expanduser()
        if path.is_file():
            check_weights_file(path, allow_pickle)
        elif not is_preset(ref) and not path.exists() and not looks_local(ref):
            resolve_model_ref(ref)


def check_models(models: Sequence[str], *, checkpoints: bool = False) -> None:
    """Every model at once, before any is loaded, so a bad one is not found after the others generated for minutes:
    a folder that is no model (a dataset), the same model twice (``toy1`` and ``toy1/``), and runs resumed past
    their outputs and stopped (named with the step they stopped at, ``sdtune.run_status``). With ``checkpoints``
    (``eval --checkpoints``, ``pick``) a stopped run that has checkpoints is evaluated on those, with a note: which
    of them to keep is the question an interrupted run raises."""
    from sdtune.models.loading import resolve_model_ref
    from sdtune.models.presets import is_preset
    from sdtune.models.refs import looks_local
    from sdtune.run_folder import is_run_folder
    from sdtune.run_status import run_progress

    problems = []
    seen: dict[str, str] = {}
    for ref in models:
        path = Path(ref).expanduser()
        key = str(path.resolve()) if path.exists() else ref
        if key in seen:
            raise SdtuneError(f"{seen[key]} and {ref} are the same model: pass it once")
        seen[key] = ref
        if path.is_dir() and not is_preset(ref) and not is_run_folder(ref) \
                and not (path / "model_index.json").is_file():
            raise SdtuneError(f"{ref} is not a model (a folder without model_index.json or a run's config.yaml"
                              f"{': it holds images' if _has_images(path) else ''}); pass base models (hub id, "
                              "diffusers folder, .safetensors, built-in name) or run folders to compare")
        if is_run_folder(ref):
            progress = run_progress(ref)
            if progress.trained and not progress.finished:
                if checkpoints and _has_checkpoints(path):
                    print(f"note: {progress.unfinished_line(ref)}; evaluating the checkpoints it has",
                          file=sys.stderr)
                else:
                    problems.append(progress.unfinished_line(ref))
        elif path.exists() or looks_local(ref):  # a missing path, a LoRA file: now, not after CLIP has loaded
            resolve_model_ref(ref)
    if problems:
        raise SdtuneError("; ".join(problems))


def _has_checkpoints(run: Path) -> bool:
    from sdtune.evaluation.checkpoints import run_checkpoints

    return bool(run_checkpoints(run))


def _has_images(folder: Path) -> bool:
    from sdtune.data.folders import list_images

    try:
        return bool(list_images(folder))
    except Exception:  # noqa: BLE001 - only the wording of an error depends on it
        return False


def expand_models(req: EvalRequest) -> list[tuple[str, str, dict[str, Any] | None]]:
    """``(ref, label, checkpoint info or None)`` of every model to evaluate: with ``checkpoints``, each run folder
    that has checkpoints stands for all of them (written out as run folders under OUT/checkpoints), oldest first."""
    from sdtune.evaluation.checkpoints import expand_checkpoints, run_checkpoints
    from sdtune.run_folder import is_run_folder

    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for ref, label in zip(req.models, _labels(req.models), strict=True):
        if req.checkpoints and is_run_folder(ref) and run_checkpoints(Path(ref)):
            out += [(str(c.folder), c.label, {"run": str(c.run), "step": c.step, "final": c.final})
                    for c in expand_checkpoints(Path(ref), req.out_dir)]
        else:
            out.append((ref, label, None))
    return out


def run_eval(req: EvalRequest, progress: bool = True) -> dict[str, Any]:
    """Generate what is missing, score everything, return the results (see ``report.write_reports``)."""
    _validate(req)
    if req.toy:
        from sdtune.evaluation.toy_suite import suite_prompts

        req.prompts = list(dict.fromkeys([*req.prompts, *suite_prompts()]))
    clip_ref = choose_clip(req.models, req.clip)
    references = load_reference_images(req.reference_dir) if req.reference_dir else []
    if req.dino and not references:
        raise SdtuneError("--dino measures similarity to reference photos: pass --reference DIR too")
    # Backbones first: a missing CLIP should fail in seconds, not after an hour of generation.
    device = pick_device(req.device)
    scorer = ClipScorer(clip_ref, device=device, local_files_only=req.local_files_only)
    dino = DinoEmbedder(req.dino, device=device, local_files_only=req.local_files_only) if req.dino else None
    out = Path(req.out_dir)
    cache = GenerationCache(out / "cache", req.settings, device=req.device, dtype=req.dtype,
                            batch_size=req.batch_size, allow_pickle=req.allow_pickle, progress=progress)
    main_jobs = [(p, s) for p in req.prompts for s in req.seeds]
    generic_jobs = [(p, s) for p in req.generic_prompts for s in req.seeds]

    judge = None
    if req.toy:
        from sdtune.toy.evaluate import default_judge

        judge = default_judge()
    models: list[dict[str, Any]] = []
    for ref, label, checkpoint in expand_models(req):
        spec = ModelSpec(ref, label=label)
        entry: dict[str, Any] = {"label": label, "ref": ref, "base": None, "fingerprint": spec.digest[:12],
                                 "checkpoint": checkpoint, "paths": {"main": cache.ensure(spec, main_jobs)}}
        if judge is not None:
            entry["toy"] = _toy_metrics(entry["paths"]["main"], ref, req, cache, main_jobs, judge)
        if generic_jobs:
            entry["paths"]["generic"] = cache.ensure(spec, generic_jobs)
            base_ref = base_of(ref) or req.base  # a run folder's own base wins over --base
            if base_ref is not None:
                base_spec = ModelSpec(base_ref, label=base_ref)
                if base_spec.digest != spec.digest:  # a base model is not compared with itself
                    entry["base"] = base_ref
                    entry["paths"]["base"] = cache.ensure(base_spec, generic_jobs)
        models.append(entry)

    all_paths = sorted({p for m in models for group in m["paths"].values() for p in group.values()})
    image_emb = _embed_files(scorer.image_embeddings, all_paths, progress, "CLIP")
    texts = list(dict.fromkeys([*req.prompts, *req.generic_prompts]))
    text_emb = dict(zip(texts, scorer.text_embeddings(texts), strict=True))
    ref_clip = scorer.image_embeddings([im for _, im in references]) if references else None
    dino_emb = _embed_files(dino.embeddings, sorted({p for m in models for p in m["paths"]["main"].values()}),
                            progress, "DINO") if dino else {}
    ref_dino = dino.embeddings([im for _, im in references]) if dino else None

    backbones = {"clip": clip_ref, "dino": req.dino}
    for m in models:
        values: dict[str, dict[Job, float]] = {}
        main = m["paths"]["main"]
        values["clip_t"] = _clip_scores(main, image_emb, text_emb)
        if ref_clip is not None:
            values["clip_i"] = _to_refs(main, image_emb, ref_clip)
        if ref_dino is not None:
            values["dino"] = _to_refs(main, dino_emb, ref_dino)
        if "generic" in m["paths"]:
            generic = m["paths"]["generic"]
            values["generic_clip_t"] = _clip_scores(generic, image_emb, text_emb)
            if "base" in m["paths"]:
                base = m["paths"]["base"]
                values["generic_clip_delta"] = score_deltas(values["generic_clip_t"],
                                                            _clip_scores(base, image_emb, text_emb))
                values["base_similarity"] = paired_similarity({k: image_emb[p] for k, p in generic.items()},
                                                              {k: image_emb[p] for k, p in base.items()})
        m["metrics"] = {}
        m["per_prompt"] = {}
        for name, vals in values.items():
            prompts = req.prompts if name in ("clip_t", "clip_i", "dino") else req.generic_prompts
            info = METRICS[name]
            m["metrics"][name] = {**summarize(vals, req.seeds).as_dict(), "backbone": backbones[info[1]],
                                  "scale": info[2]}
            m["per_prompt"][name] = per_prompt(vals, prompts, req.seeds)
        m["metrics"].update(m.pop("toy", {}))
        m["generated"] = cache.generated[m["label"]]
        m["reused"] = cache.reused[m["label"]]
        m["images"] = {group: [[_rel(paths[(p, s)], out) for s in req.seeds] for p in _prompts_of(group, req)]
                       for group, paths in m.pop("paths").items()}

    return {
        "sdtune_eval": 1,
        "settings": {**req.settings.as_dict(), "seeds": list(req.seeds), "prompts": list(req.prompts),
                     "generic_prompts": list(req.generic_prompts)},
        "backbones": backbones,
        "metrics": {**{name: {"label": i[0], "backbone": backbones[i[1]], "scale": i[2], "better": i[3],
                              "help": i[4]} for name, i in METRICS.items()
                       if any(name in m["metrics"] for m in models)}, **_toy_metric_info(models)},
        "references": [str(p) for p, _ in references],
        "generation": {"generated": sum(cache.generated.values()), "reused": sum(cache.reused.values()),
                       "by_model": {k: {"generated": cache.generated[k], "reused": cache.reused[k]}
                                    for k in sorted(set(cache.generated) | set(cache.reused))}},
        "models": models,
    }


def _toy_metrics(paths: dict[Job, Path], ref: str, req: EvalRequest, cache: GenerationCache, jobs: list[Job],
                 judge: Any) -> dict[str, Any]:
    """The judge's metrics of one model's toy-suite images; forgetting against its run's base (same seeds)."""
    from sdtune.evaluation.toy_suite import toy_metrics
    from sdtune.toy.evaluate import old_prompts

    base_paths = None
    base_ref = base_of(ref)
    if base_ref is not None:
        old = {e.prompt for e in old_prompts(12)}
        base_paths = cache.ensure(ModelSpec(base_ref, label=f"base of {Path(ref).name}"),
                                  [j for j in jobs if j[0] in old])
    return {name: {**summary, "backbone": TOY_BACKBONE, "scale": "fraction"}
            for name, summary in toy_metrics(paths, base_paths, req.seeds, judge).items()}


def _toy_metric_info(models: list[dict[str, Any]]) -> dict[str, Any]:
    from sdtune.evaluation.toy_suite import TOY_METRICS

    return {name: {"label": label, "backbone": TOY_BACKBONE, "scale": "fraction", "better": better,
                   "help": what} for name, (label, better, what, _) in TOY_METRICS.items()
            if any(name in m["metrics"] for m in models)}


def _prompts_of(group: str, req: EvalRequest) -> list[str]:
    return req.prompts if group == "main" else req.generic_prompts


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _embed_files(embed: Any, paths: list[Path], progress: bool, what: str) -> dict[Path, torch.Tensor]:
    """Embed image files in chunks (never all decoded in memory at once)."""
    from tqdm.auto import tqdm

    out: dict[Path, torch.Tensor] = {}
    chunk = 64
    with tqdm(total=len(paths), desc=f"scoring ({what})", unit="img", disable=not progress) as bar:
        for i in range(0, len(paths), chunk):
            part = paths[i:i + chunk]
            images = []
            for p in part:
                with Image.open(p) as im:
                    images.append(im.convert("RGB"))
            out.update(zip(part, embed(images), strict=True))
            bar.update(len(part))
    return out


def _clip_scores(paths: dict[Job, Path], image_emb: dict[Path, torch.Tensor],
                 text_emb: dict[str, torch.Tensor]) -> dict[Job, float]:
    keys = list(paths)
    if not keys:
        return {}
    imgs = torch.stack([image_emb[paths[k]] for k in keys])
    txts = torch.stack([text_emb[k[0]] for k in keys])
    return dict(zip(keys, clip_t(imgs, txts).tolist(), strict=True))


def _to_refs(paths: dict[Job, Path], emb: dict[Path, torch.Tensor], refs: torch.Tensor) -> dict[Job, float]:
    keys = list(paths)
    sims = mean_similarity_to_references(torch.stack([emb[paths[k]] for k in keys]), refs)
    return dict(zip(keys, sims.tolist(), strict=True))
