"""Recipes: a YAML file (`load_recipe`, conan_embed.recipe.schema), one stage trained from it
(`train_stage`), a whole run (`run_recipe`: data, curation, stages, mining, merge, evaluation, report)
and the paper's ablation (conan_embed.recipe.ablation). This layer sits above training and mining and
wires them together (docs/architecture.md).
"""

from conan_embed.recipe.runner import run_recipe
from conan_embed.recipe.schema import Recipe, load_recipe, recipe_from_dict
from conan_embed.recipe.stage_training import train_stage

__all__ = ["Recipe", "load_recipe", "recipe_from_dict", "run_recipe", "train_stage"]
