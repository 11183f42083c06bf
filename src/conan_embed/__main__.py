"""`python -m conan_embed ...` = `conan-embed ...` (what `torchrun -m conan_embed` launches)."""

import sys

from conan_embed.cli import main

sys.exit(main())
