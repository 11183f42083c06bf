"""conan-embed: the Conan-Embedding recipe (arXiv 2408.15710) as one tool.

Curate pair data, pre-train and fine-tune a Chinese embedder, evaluate it on a C-MTEB-shaped
suite and serve it. See README.md and docs/ for the data flow.
"""

__version__ = "0.1.0"

from conan_embed.errors import ConanEmbedError, InputError

__all__ = ["ConanEmbedError", "InputError", "__version__"]
