"""Training: recipes (`load_recipe`), one stage (`train_stage`), a whole run (`run_recipe`).

See docs/training.md. The stages run on the sentence-transformers Trainer (`ConanTrainer`) with our
own data path: a pluggable batch composer and losses on embeddings, with per-example records for
callbacks (`StepRecordCallback`).
"""

from conan_embed.training.callbacks import StepRecordCallback
from conan_embed.training.config import Recipe, load_recipe, recipe_from_dict
from conan_embed.training.run import run_recipe
from conan_embed.training.stage import train_stage
from conan_embed.training.trainer import StepRecord

__all__ = ["Recipe", "StepRecord", "StepRecordCallback", "load_recipe", "recipe_from_dict", "run_recipe",
           "train_stage"]
