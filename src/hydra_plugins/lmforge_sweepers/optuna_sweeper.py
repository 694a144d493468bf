"""The Hydra entry for lmforge's resumable Optuna sweeper (implemented in lmforge.runtime.sweep).

Hydra instantiates sweepers only from the `hydra_plugins` package, hence this alias; it imports
no optuna until a sweep starts, so plugin discovery stays fast.
"""

from lmforge.runtime import sweep


class OptunaSweeper(sweep.OptunaSweeper):
    """See lmforge.runtime.sweep.OptunaSweeper."""
