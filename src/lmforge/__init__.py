"""lmforge: config-driven fine-tuning of pretrained language models.

Importing the package is cheap (no torch, transformers or lightning): the command-line entry
points compose and validate configs before any heavy import.
"""

from lmforge.errors import LmforgeError

__version__ = "0.1.0"
__all__ = ["LmforgeError", "__version__"]
