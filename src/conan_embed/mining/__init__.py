"""Hard-negative mining (docs/mining.md): offline candidate pools (`mine`) and dynamic hard-negative
mining during training (`DynamicHardNegativeMiner`), with the paper's rule as pure functions
(`is_exhausted`, `negative_window`, `false_negative_limit`)."""

from conan_embed.mining.mining_config import MineConfig, RecipeMineConfig
from conan_embed.mining.rule import false_negative_limit, is_exhausted, negative_window

__all__ = ["DynamicHardNegativeMiner", "MineConfig", "RecipeMineConfig", "false_negative_limit", "is_exhausted", "mine",
           "negative_window"]


def __getattr__(name):  # the heavy parts (torch, faiss, the trainer) load on first use
    if name == "DynamicHardNegativeMiner":
        from conan_embed.mining.dynamic import DynamicHardNegativeMiner

        return DynamicHardNegativeMiner
    if name == "mine":
        from conan_embed.mining.offline import mine

        return mine
    raise AttributeError(f"module 'conan_embed.mining' has no attribute {name!r}")
