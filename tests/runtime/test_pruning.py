"""Pruned sweeps: a trial's run reports its validation metric to its Optuna trial and stops when
the pruner says so; the sweeper ends such trials PRUNED; the run's record and the report say so."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from lmforge.errors import LmforgeError
from lmforge.runtime.sweep import OptunaSweeper, build_pruner
from lmforge.runtime.trials import TrialReporter
from tests.helpers import QUICK, compose_config, tiny_overrides

optuna.logging.set_verbosity(optuna.logging.WARNING)


def fake_trainer(value: float, epoch: int = 0) -> SimpleNamespace:
    """What the reporter reads of a Lightning trainer at a validation's end."""
    return SimpleNamespace(
        sanity_checking=False,
        global_rank=0,
        world_size=1,
        callback_metrics={"val/acc": torch.tensor(value)},
        current_epoch=epoch,
        global_step=3 * (epoch + 1),
        should_stop=False,
    )


def settings(storage: str, number: int, **pruner) -> dict:
    return {
        "study_name": "s",
        "storage": storage,
        "number": number,
        **{"pruner": "median", "pruner_warmup": 0, "pruner_startup_trials": 1, **pruner},
    }


def test_a_trial_worse_than_the_median_is_pruned_and_told_where(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = study.ask()
    for step, value in enumerate([0.8, 0.9]):
        first.report(value, step)
    study.tell(first, 0.9)

    good = TrialReporter(settings(storage, study.ask().number), "val/acc")
    trainer = fake_trainer(0.85)
    good.on_validation_end(trainer, None)
    assert not trainer.should_stop and good.pruned is None  # above the median (0.8) at step 0

    bad = TrialReporter(settings(storage, study.ask().number), "val/acc")
    trainer = fake_trainer(0.3)
    bad.on_validation_end(trainer, None)
    assert trainer.should_stop
    assert bad.pruned == {
        "validation": 0,
        "epoch": 0,
        "global_step": 3,
        "value": pytest.approx(0.3),
    }
    stored = study.trials[2]
    assert stored.intermediate_values == {0: pytest.approx(0.3)}
    assert stored.user_attrs["pruned"]["validation"] == 0


def test_warmup_and_startup_trials_hold_pruning_back(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = study.ask()
    first.report(0.9, 0)
    first.report(0.9, 1)
    study.tell(first, 0.9)
    # Two validations of warm-up: the first bad value is only reported.
    reporter = TrialReporter(settings(storage, study.ask().number, pruner_warmup=1), "val/acc")
    trainer = fake_trainer(0.1)
    reporter.on_validation_end(trainer, None)
    assert not trainer.should_stop
    reporter.on_validation_end(trainer := fake_trainer(0.1, epoch=1), None)
    assert trainer.should_stop and reporter.pruned["validation"] == 1
    # With two finished trials required first, nothing is pruned after one.
    waiting = TrialReporter(
        settings(storage, study.ask().number, pruner_startup_trials=2), "val/acc"
    )
    waiting.on_validation_end(trainer := fake_trainer(0.1), None)
    assert not trainer.should_stop


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("none", optuna.pruners.NopPruner),
        ("median", optuna.pruners.MedianPruner),
        ("asha", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
    ],
)
def test_pruners_by_name(name, kind):
    assert isinstance(build_pruner(name, 1, 3), kind)


def test_an_unknown_pruner_is_refused_naming_the_choices():
    with pytest.raises(LmforgeError, match=r"pruner='mean'.*none, median, asha, hyperband"):
        build_pruner("mean", 1, 3)


class ReportingLauncher:
    """Runs no training: each job's run 'validates' three times with the value its x says and
    reports through the TrialReporter its trial.* overrides describe, as a real run would."""

    def launch(self, jobs, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        results = []
        for number, job in enumerate(jobs, start=initial_job_idx):
            values = dict(item.split("=", 1) for item in job)
            told = {
                k.removeprefix("trial."): v.strip("'") for k, v in values.items() if "trial." in k
            }
            told["number"] = int(told["number"])
            for key in ("pruner_warmup", "pruner_startup_trials"):
                told[key] = int(told[key])
            reporter = TrialReporter(told, "val/acc")
            x = float(values["x"])
            for epoch in range(3):
                trainer = fake_trainer(x, epoch)
                reporter.on_validation_end(trainer, None)
                if trainer.should_stop:
                    break
            result = JobReturn(working_dir=f"sweep/{number}")
            result.status, result.return_value = JobStatus.COMPLETED, x
            results.append(result)
        return results


def test_the_sweeper_tells_each_run_its_trial_and_ends_pruned_ones_pruned(tmp_path):
    sweeper = OptunaSweeper(
        study_name="s",
        storage=None,
        direction="max",
        n_trials=4,
        n_jobs=1,
        sampler=optuna.samplers.RandomSampler(seed=0),
        params=None,
        retry_interrupted=True,
        pruner="median",
        pruner_warmup=0,
        pruner_startup_trials=1,
    )
    sweeper.launcher = ReportingLauncher()
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "x"}}})
    space = {"x": FloatDistribution(0.0, 1.0)}
    study = sweeper._open_study(optuna, tmp_path, space, [])
    for x in (0.6, 0.9, 0.2, 0.8):
        study.enqueue_trial({"x": x})
    for _ in range(4):
        sweeper._run_batch(study, [study.ask(space)], [], tmp_path)
    states = [(t.params["x"], t.state) for t in study.trials]
    # The median of the completed trials at the first validation: 0.6 (trial 0 only), then
    # 0.75 (0.6 and 0.9) for trials 2 and 3: 0.2 is pruned, 0.8 goes on.
    assert states == [
        (0.6, TrialState.COMPLETE),
        (0.9, TrialState.COMPLETE),
        (0.2, TrialState.PRUNED),
        (0.8, TrialState.COMPLETE),
    ]
    pruned = study.trials[2]
    assert pruned.value == pytest.approx(0.2) and len(pruned.intermediate_values) == 1
    sweeper._write_results(study, tmp_path)
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert results.pruned == 1 and results.best_value == pytest.approx(0.9)


def test_a_pruned_run_stops_early_and_keeps_a_complete_record(tmp_path, tiny_model, tiny_data):
    """A run told it is trial 1 of a study whose trial 0 reported an accuracy of 2.0 (better
    than any run can) at every validation: the median pruner stops it after its first."""
    from lmforge.reporting.report import write_report
    from lmforge.train import train

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = study.ask()
    for step in range(3):
        first.report(2.0, step)
    study.tell(first, 2.0)
    number = study.ask().number
    cfg = compose_config(
        [
            *tiny_overrides(tiny_model, tiny_data),
            *[o for o in QUICK if "max_epochs" not in o and "test=" not in o],
            "trainer.max_epochs=3",
            "trial.study_name=s",
            f"trial.storage='{storage}'",
            f"trial.number={number}",
            "trial.pruner=median",
            "trial.pruner_warmup=0",
            "trial.pruner_startup_trials=1",
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    trial = optuna.load_study(study_name="s", storage=storage).trials[number]
    assert metrics["pruned"]["validation"] == 0 and metrics["pruned"]["epoch"] == 0, (
        metrics["pruned"],
        trial.intermediate_values,
    )
    assert metrics["epochs_completed"] == 1  # of 3
    assert metrics["test"]["test/acc"] is not None  # the best checkpoint was tested
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "comparison.md").is_file()
    trial = optuna.load_study(study_name="s", storage=storage).trials[number]
    assert trial.user_attrs["pruned"]["validation"] == 0
    assert trial.intermediate_values[0] == pytest.approx(metrics["pruned"]["value"])
    text = write_report(run).read_text()
    assert "pruned by the sweep's pruner: 1 of 1 runs, 2 epoch(s) not trained" in text
