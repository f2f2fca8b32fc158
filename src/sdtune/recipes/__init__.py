"""Multi-stage flows as data: recipes (concept, then person), and personalization of many people at once."""

from sdtune.recipes.runner import MANIFEST, RecipeResult, StageResult, run_recipe
from sdtune.recipes.schema import Recipe, Stage, load_recipe, stage_config, stage_configs

__all__ = [
    "MANIFEST",
    "Recipe",
    "RecipeResult",
    "Stage",
    "StageResult",
    "load_recipe",
    "run_recipe",
    "stage_config",
    "stage_configs",
]
