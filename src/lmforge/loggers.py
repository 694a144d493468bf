"""A CSV logger that appends to a run's existing metrics file instead of deleting it.

Lightning's CSVLogger deletes `metrics.csv` when its directory already holds files, and a
fresh writer process (a resumed run, a spawned DDP worker, the test stage after fit) rewrites the
header with only the keys it has seen. Both lose rows of a run that continues in its own
directory, so this subclass keeps the file and merges headers.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing metrics.csv and extends its header when new keys appear."""

    def _check_log_dir_exists(self) -> None:
        """Never delete earlier rows: a resumed run appends to them."""

    def _record_new_keys(self) -> set[str]:
        if not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])
        return super()._record_new_keys()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, writing through `AppendingExperimentWriter`."""

    @property
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def __getstate__(self) -> dict:
        # A spawned worker opens its own writer on the same file.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


__all__ = ["AppendingExperimentWriter", "CSVLogger"]
