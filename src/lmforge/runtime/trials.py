"""The trial side of a pruned sweep: a run that is a trial of an Optuna study reports its
monitored validation metric to that trial and stops when the study's pruner says so (see
lmforge.runtime.sweep for the sweeper side)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, cast

import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError
from lmforge.runtime.sweep import PRUNED_ATTR, build_pruner
from lmforge.runtime.sweep_workers import open_storage

log = logging.getLogger(__name__)


class TrialReporter(pl.Callback):
    """Reports a sweep trial's monitored validation metric to its Optuna trial after every
    validation (the validation's number is the step) and stops training when the study's
    pruner prunes the trial; `pruned` then says where (for metrics.json).

    Args:
        settings: the run's `trial` config (study_name, storage, number, pruner,
            pruner_warmup, pruner_startup_trials).
        monitor: the validation metric the study optimizes (`optimized_metric`).
    """

    def __init__(self, settings: Mapping[str, Any], monitor: str) -> None:
        self.settings = dict(settings)
        self.monitor = monitor
        self.validations = 0
        self.pruned: dict[str, Any] | None = None
        self._trial: Any = None

    def _open(self) -> Any:
        """The Optuna trial this run is (its study loaded with the sweep's pruner)."""
        if self._trial is None:
            import optuna

            pruner = build_pruner(
                str(self.settings.get("pruner") or "none"),
                int(self.settings.get("pruner_warmup") or 0),
                int(self.settings.get("pruner_startup_trials") or 0),
            )
            study = optuna.load_study(
                study_name=str(self.settings["study_name"]),
                storage=open_storage(str(self.settings["storage"])),
                pruner=pruner,
            )
            number = int(self.settings["number"])
            found = [t for t in study.get_trials(deepcopy=False) if t.number == number]
            if not found:
                raise LmforgeError(
                    f"trial.number={number}: study '{study.study_name}' in "
                    f"{self.settings['storage']} has no such trial."
                )
            # Optuna has no public lookup of a trial by number; its id is on the frozen trial.
            self._trial = optuna.trial.Trial(study, found[0]._trial_id)
        return self._trial

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned is not None:
            return
        # Rank 0 reports and asks the pruner; every process of a DDP run learns the answer.
        pruned = self._report(trainer) if trainer.global_rank == 0 else None
        strategy = getattr(trainer, "strategy", None)
        if strategy is not None and trainer.world_size > 1:
            pruned = strategy.broadcast(pruned, src=0)
        if pruned is None:
            return
        self.pruned = pruned
        trainer.should_stop = True
        # The pruner's word outranks trainer.min_epochs/min_steps, which would otherwise keep a
        # pruned trial training (Lightning honours should_stop only after them).
        fit_loop = getattr(trainer, "fit_loop", None)
        if fit_loop is not None:
            fit_loop.min_epochs = 0
            fit_loop.epoch_loop.min_steps = 0
        log.info(
            "Pruned by the sweep's pruner at validation %d (epoch %d, %s = %.6g): training "
            "stops here; the best checkpoint so far is tested.",
            pruned["validation"],
            pruned["epoch"],
            self.monitor,
            pruned["value"],
        )

    def _report(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """Report this validation's value; where the trial is pruned, what the record says."""
        logged = trainer.callback_metrics.get(self.monitor)
        if logged is None or not math.isfinite(value := float(logged)):
            return None
        step = self.validations
        self.validations += 1
        trial = self._open()
        trial.report(value, step)
        if not trial.should_prune():
            return None
        pruned = {
            "validation": step,
            "epoch": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "value": value,
        }
        trial.set_user_attr(PRUNED_ATTR, pruned)
        return pruned


def trial_reporter(cfg: DictConfig) -> TrialReporter | None:
    """The reporter of a run that is a sweep trial (its `trial.study_name` set), else None."""
    settings = cfg.get("trial")
    if not settings or not settings.get("study_name"):
        return None
    return TrialReporter(
        cast(dict, OmegaConf.to_container(settings, resolve=True)), str(cfg.optimized_metric)
    )
