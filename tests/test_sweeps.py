"""Sweeps: grid multiruns, the resumable Optuna sweeper, DDP inside a multirun, SLURM config."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lmforge.errors import LmforgeError
from lmforge.reporting.report import write_report
from lmforge.runtime.sweep import (
    OptunaSweeper,
    distribution_for,
    finished_trials,
    mark_interrupted,
    split_search_space,
)
from tests.helpers import compose_config, finish, launch, quick

optuna.logging.set_verbosity(optuna.logging.WARNING)


def digest(directory: Path) -> dict[str, str]:
    """Content hash of every file under a directory."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def parse(line: str):
    return OverridesParser.create().parse_override(line)


# ----- search space ---------------------------------------------------------------------------
def test_hydra_sweep_syntax_maps_to_optuna_distributions():
    assert distribution_for(parse("a=choice(8,16,32)")) == CategoricalDistribution(
        ["8", "16", "32"]
    )
    assert distribution_for(parse("a=full,lora")) == CategoricalDistribution(["full", "lora"])
    assert distribution_for(parse("a=interval(0.0,0.2)")) == FloatDistribution(0.0, 0.2)
    assert distribution_for(parse("a=tag(log, interval(1e-5,1e-3))")) == FloatDistribution(
        1e-5, 1e-3, log=True
    )
    assert distribution_for(parse("a=int(interval(4,64))")) == IntDistribution(4, 64)
    # Hydra's range excludes its stop value; Optuna's bounds are inclusive.
    assert distribution_for(parse("a=range(4,20,4)")) == IntDistribution(4, 16, step=4)


def test_fixed_overrides_are_kept_apart_from_the_search_space():
    overrides = OverridesParser.create().parse_overrides(
        ["optimizer.lr=interval(1e-5,1e-3)", "trainer.max_epochs=2", "finetune=full,lora"]
    )
    space, fixed = split_search_space(overrides)
    assert set(space) == {"optimizer.lr", "finetune"}
    assert fixed == ["trainer.max_epochs=2"]


def make_sweeper(**options) -> OptunaSweeper:
    settings = dict(
        study_name="s",
        storage=None,
        direction="max",
        n_trials=3,
        n_jobs=1,
        sampler=optuna.samplers.RandomSampler(seed=0),
        params={},
        retry_interrupted=True,
    )
    return OptunaSweeper(**{**settings, **options})


def test_a_killed_trial_is_marked_failed_and_its_parameters_run_again(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"x": FloatDistribution(0.0, 1.0)}
    first = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    done = first.ask(space)
    first.tell(done, 0.5)
    killed = first.ask(space)  # left RUNNING, as when the process is killed

    study = optuna.load_study(study_name="s", storage=storage)
    assert mark_interrupted(study, retry=True) == [killed.number]
    frozen = study.trials[killed.number]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["interrupted"] is True
    assert [t.number for t in finished_trials(study)] == [done.number]
    retry = study.ask(space)
    assert retry.params == killed.params
    assert retry.user_attrs["retry_of"] == killed.number


def test_resuming_a_study_with_other_settings_is_refused(tmp_path):
    sweeper = make_sweeper()
    space = {"optimizer.lr": FloatDistribution(1e-5, 1e-3, log=True)}
    study = sweeper._open_study(optuna, tmp_path, space, ["trainer.max_epochs=1"])
    study.tell(study.ask(space), 0.5)
    with pytest.raises(LmforgeError, match="was started with other settings") as err:
        sweeper._open_study(optuna, tmp_path, space, ["trainer.max_epochs=5"])
    assert "trainer.max_epochs=1" in str(err.value) and "study_name" in str(err.value)
    # More trials for the same study are fine.
    make_sweeper(n_trials=10)._open_study(optuna, tmp_path, space, ["trainer.max_epochs=1"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("direction", "up", "hydra.sweeper.direction"), ("n_trials", 0, "hydra.sweeper.n_trials")],
)
def test_bad_sweeper_settings_are_named(option, value, message):
    with pytest.raises(LmforgeError, match=message):
        make_sweeper(**{option: value})


# ----- configs --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lr_batch_optuna", "lora_optuna"])
def test_hparams_search_configs_compose_with_the_optuna_sweeper(name):
    cfg = compose_config([f"hparams_search={name}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("lmforge_sweepers.optuna_sweeper.OptunaSweeper")
    assert sweeper.direction == cfg.optimized_mode
    # Every searched key exists in the composed config (a typo would search nothing).
    for key in sweeper.params:
        node = cfg
        for part in key.split("."):
            assert part in node, f"{name}: {key} is not a config key"
            node = node[part]
    # The sweep dir is fixed per study, so a restart finds the study again.
    assert cfg.hydra.sweep.dir.endswith(f"sweeps/{sweeper.study_name}")


def test_the_slurm_launcher_config_composes():
    cfg = compose_config(["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.tasks_per_node == cfg.trainer.devices
    assert launcher.gpus_per_node == cfg.trainer.devices


# ----- end to end -----------------------------------------------------------------------------
def test_a_grid_multirun_writes_one_dir_per_job(tmp_path, tiny_model, tiny_data):
    result = finish(
        launch(
            *quick(tiny_model, tiny_data, tmp_path),
            "optimizer.lr=1e-3,3e-3",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            cwd=tmp_path,
        )
    )
    sweep = tmp_path / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"], result[-3000:]
    for job, lr in zip(jobs, ("0.001", "0.003"), strict=True):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["best_validation"]["value"] is not None
        assert f"optimizer.lr={lr}" in yaml.safe_load(
            (sweep / job / ".hydra/overrides.yaml").read_text()
        )
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("metrics.json"))


def test_a_grid_multirun_runs_every_job_and_lists_the_failed_ones(tmp_path, tiny_model, tiny_data):
    process = launch(
        *quick(tiny_model, tiny_data, tmp_path),
        "data.batch_size=0,16",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    output = finish(process)
    assert process.returncode == 1
    assert "1 of 2 jobs failed" in output and "job 0: Invalid config: data.batch_size" in output
    assert "Traceback" not in output
    assert (tmp_path / "sweep" / "1" / "metrics.json").is_file()


# A one-job DDP multirun also runs in tests/test_cluster.py (the reference of the SLURM run).
@pytest.mark.slow
def test_a_multirun_with_ddp_makes_one_dir_per_job(tmp_path, tiny_model, tiny_data):
    process = launch(
        *quick(tiny_model, tiny_data, tmp_path),
        "trainer=ddp_sim",
        "optimizer.lr=1e-3,3e-3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    assert len(list(tmp_path.rglob("metrics.json"))) == 2
    run_records = [p for p in tmp_path.rglob("config.yaml") if p.parent.name != ".hydra"]
    assert sorted(p.parent.name for p in run_records) == ["0", "1"]


@pytest.mark.parametrize(
    "stop",
    # A kill leaves no time to clean up, Ctrl-C does; both resume the same way, so the default
    # run keeps the harder case and the slow run adds the other.
    [signal.SIGKILL, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["kill", "ctrl-c"],
)
def test_an_optuna_sweep_stopped_mid_trial_resumes_without_rerunning_or_overwriting(
    stop, tmp_path, tiny_model, tiny_data
):
    sweep = tmp_path / "sweep"
    command = [
        *quick(tiny_model, tiny_data, tmp_path, epochs=6),
        "hparams_search=lr_batch_optuna",
        "hydra.sweeper.n_trials=3",
        "data.batch_size=16,32",
        f"hydra.sweep.dir={sweep}",
    ]
    process = launch(*command, cwd=tmp_path)
    # Kill the whole sweep once the second trial is training.
    deadline = time.monotonic() + 300
    while not (sweep / "1" / "csv" / "metrics.csv").is_file():
        assert process.poll() is None, finish(process)[-3000:]
        assert time.monotonic() < deadline, "the second trial never started"
        time.sleep(0.05)
    os.killpg(process.pid, stop)
    process.wait(timeout=120)
    assert not (sweep / "1" / "metrics.json").exists(), "killed too late: trial 1 finished"
    before = {job: digest(sweep / job) for job in ("0", "1")}

    output = finish(launch(*command, cwd=tmp_path))
    study = optuna.load_study(study_name="lr_batch", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3, output[-3000:]
    assert states == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    killed, retry = study.trials[1], study.trials[2]
    assert killed.user_attrs["interrupted"] is True
    assert retry.user_attrs["retry_of"] == 1 and retry.params == killed.params
    # No job dir was written twice; each trial has its own.
    assert {job: digest(sweep / job) for job in ("0", "1")} == before
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
            assert trial.value == pytest.approx(metrics["best_validation"]["value"])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["completed"] == 3 and results["interrupted"] == 1
    assert results["best_value"] == pytest.approx(study.best_value)
    assert "1 of 3 trials finished, 2 to run" in output

    # The report lists the 3 finished trials, best first, and says why trial 1 is missing.
    report = write_report(sweep)
    table = list(csv.DictReader((report.parent / "report.csv").open(encoding="utf-8")))
    assert sorted(row["run"] for row in table) == ["0", "2", "3"]
    assert float(table[0]["best_validation"]) == pytest.approx(study.best_value)
    assert "## Skipped" in report.read_text() and "1" in report.read_text().split("## Skipped")[1]

    # Run again: nothing is left to do.
    output = finish(launch(*command, cwd=tmp_path))
    assert "3 of 3 trials finished, 0 to run" in output
    assert (
        len(
            optuna.load_study(
                study_name="lr_batch", storage=f"sqlite:///{sweep / 'optuna.db'}"
            ).trials
        )
        == 4
    )


class FakeLauncher:
    """Runs no process: each job 'returns' its lr, or fails when its batch size is 0."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[str]], int]] = []

    def launch(self, jobs, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.calls.append(([list(j) for j in jobs], initial_job_idx))
        results = []
        for number, job in enumerate(jobs, start=initial_job_idx):
            values = dict(item.split("=", 1) for item in job)
            result = JobReturn(working_dir=f"sweep/{number}")
            if values.get("data.batch_size") == "0":
                result.status, result.return_value = JobStatus.FAILED, LmforgeError("bad batch")
            else:
                result.status, result.return_value = JobStatus.COMPLETED, float(values["x"])
            results.append(result)
        return results


def test_batches_of_trials_run_as_consecutive_jobs_and_failures_are_recorded(tmp_path):
    from omegaconf import OmegaConf

    sweeper = make_sweeper(n_jobs=2)
    sweeper.launcher = FakeLauncher()
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "x"}}})
    space = {
        "x": FloatDistribution(0.0, 1.0),
        "data.batch_size": CategoricalDistribution(["0", "8"]),
    }
    study = sweeper._open_study(optuna, tmp_path, space, ["trainer.max_epochs=1"])
    study.tell(study.ask(space), 0.5)  # an earlier trial: the batch starts at trial 1, not 0
    batch = [study.ask(space) for _ in range(2)]
    sweeper._run_batch(study, batch, ["trainer.max_epochs=1"], tmp_path)
    jobs, first = sweeper.launcher.calls[0]
    # One launch for the batch, numbered from its first trial; every job gets the fixed override.
    assert first == batch[0].number == 1 and len(jobs) == 2
    assert all("trainer.max_epochs=1" in job for job in jobs)
    for trial in study.trials[1:]:
        assert trial.user_attrs["job_dir"] == f"sweep/{trial.number}"
        if trial.params["data.batch_size"] == "0":
            assert trial.state == TrialState.FAIL and trial.user_attrs["error"] == "bad batch"
        else:
            assert trial.state == TrialState.COMPLETE and trial.value == trial.params["x"]


def test_without_retry_a_killed_trial_is_only_marked_failed(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"x": FloatDistribution(0.0, 1.0)}
    optuna.create_study(study_name="s", storage=storage).ask(space)  # left RUNNING
    study = optuna.load_study(study_name="s", storage=storage)
    assert mark_interrupted(study, retry=False) == [0]
    assert study.get_trials(states=(TrialState.WAITING,)) == []
