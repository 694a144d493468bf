"""Lightning training strategies as lmforge launches them.

Lightning starts FSDP's processes by running the command line again for every rank. Under a
Hydra `-m` sweep that would start the whole sweep again in each of them, so lmforge's FSDP
strategy spawns its processes from inside the run instead, as `trainer=ddp` does (Lightning's
DDP strategy offers both; its FSDP strategy only the first). A cluster that starts the
processes itself (SLURM, torchrun) is joined as before.
"""

from __future__ import annotations

from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher


class SpawnedFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, its processes spawned from the run (see the module doc)."""

    def _configure_launcher(self) -> None:
        assert self.cluster_environment is not None
        if self.cluster_environment.creates_processes_externally:
            super()._configure_launcher()
            return
        self._launcher = _MultiProcessingLauncher(self, start_method="spawn")
