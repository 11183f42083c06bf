"""Training one stage's model: the sentence-transformers Trainer (`ConanTrainer`) with our own data path,
a pluggable batch composer and losses on embeddings, with per-example records for callbacks
(`StepRecordCallback`). See docs/training.md.

Training owns its seams (the negative source a task asks for its rows' hard negatives, the training
state a checkpoint saves); conan_embed.mining implements them, and conan_embed.recipe, above both,
loads recipes and runs stages.
"""

from conan_embed.training.callbacks import StepRecordCallback
from conan_embed.training.trainer import StepRecord

__all__ = ["StepRecord", "StepRecordCallback"]
