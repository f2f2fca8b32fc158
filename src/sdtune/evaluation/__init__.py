"""Evaluation: CLIP score over seeds, subject fidelity (CLIP-I, DINO), forgetting, and a side-by-side report."""

from sdtune.evaluation.cache import GenerationCache, ModelSpec
from sdtune.evaluation.clip_score import DEFAULT_CLIP, ClipScorer, clip_t, default_clip_for, load_backbone
from sdtune.evaluation.fidelity import DinoEmbedder, load_reference_images, mean_similarity_to_references
from sdtune.evaluation.forgetting import paired_similarity, score_deltas
from sdtune.evaluation.report import write_reports
from sdtune.evaluation.runner import EvalRequest, run_eval
from sdtune.evaluation.stats import Summary, per_prompt, summarize

__all__ = [
    "DEFAULT_CLIP",
    "ClipScorer",
    "DinoEmbedder",
    "EvalRequest",
    "GenerationCache",
    "ModelSpec",
    "Summary",
    "clip_t",
    "default_clip_for",
    "load_backbone",
    "load_reference_images",
    "mean_similarity_to_references",
    "paired_similarity",
    "per_prompt",
    "run_eval",
    "score_deltas",
    "summarize",
    "write_reports",
]
