"""lmforge's default grid sweeper: Hydra's basic sweeper that runs every job even when some
fail, then ends with one line per failed job instead of a traceback (see lmforge.runtime.sweep)."""

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper as _HydraBasicSweeper

from lmforge.runtime import sweep


class BasicSweeper(_HydraBasicSweeper):
    """Hydra's BasicSweeper (same options); failed jobs are reported together at the end."""

    def run_grid(self, arguments: list[str]) -> Any:
        return super().sweep(arguments)

    def sweep(self, arguments: list[str]) -> Any:
        return sweep.run_all_then_report(self, arguments)
