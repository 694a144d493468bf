"""Several workers on one Optuna study: exactly n_trials run, each trial's directory written by
one worker, a killed worker leaves the study resumable, storages across machines checked."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from lmforge.data.datamodule import available_cores
from lmforge.errors import LmforgeError
from lmforge.runtime.sweep import OptunaSweeper, finished_trials, mark_interrupted
from lmforge.runtime.sweep_workers import (
    check_launcher,
    counts,
    fail_stale,
    heartbeat,
    open_storage,
    take_trial,
    worker_command,
    worker_environment,
)
from tests.helpers import compose_config, finish, launch, quick

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"x": FloatDistribution(0.0, 1.0)}


def test_workers_asking_at_once_run_exactly_n_trials(tmp_path):
    """Six threads, each its own storage connection, take trials of one SQLite study until it
    is full: exactly 10 count, the numbers that ran are the first free ones asked, and the
    extra trials asked in the race are marked surplus and never counted."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="s", storage=open_storage(url))
    ran: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def worker() -> None:
        study = optuna.load_study(study_name="s", storage=open_storage(url))
        start.wait()
        while (trial := take_trial(study, SPACE, n_trials=10)) is not None:
            with lock:
                ran.append(trial.number)
            time.sleep(0.01)
            study.tell(trial, trial.params["x"])

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    study = optuna.load_study(study_name="s", storage=url)
    assert len(ran) == len(set(ran)) == 10
    assert sum(counts(t) for t in study.trials) == 10
    assert len(finished_trials(study)) == 10
    surplus = [t for t in study.trials if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and t.number not in ran for t in surplus)
    assert len(study.trials) == 10 + len(surplus)


def test_a_queued_retry_runs_before_new_trials_and_interrupted_ones_do_not_count(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.tell(study.ask(SPACE), 0.1)
    lost = study.ask(SPACE)  # a worker died while running it
    assert mark_interrupted(study, retry=True) == [lost.number]
    retry = take_trial(study, SPACE, n_trials=2)
    assert retry is not None and retry.params == lost.params
    study.tell(retry, 0.2)
    assert take_trial(study, SPACE, n_trials=2) is None


def test_a_trial_whose_heartbeat_stops_is_failed_and_queued_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat=1))
    alive, dead = study.ask(SPACE), study.ask(SPACE)
    with heartbeat(study, alive, interval=1):
        # `dead` beat once and then stopped, as when its worker is killed.
        study._storage.record_heartbeat(dead._trial_id)
        time.sleep(3.5)  # SQLite's clock counts whole seconds
        assert fail_stale(study, retry=True) == [dead.number]
        assert fail_stale(study, retry=True) == []  # found once, queued once
    frozen = {t.number: t for t in study.trials}
    assert frozen[alive.number].state == TrialState.RUNNING
    assert frozen[dead.number].state == TrialState.FAIL
    assert frozen[dead.number].user_attrs["interrupted"] is True
    retry = take_trial(study, SPACE, n_trials=3)
    assert retry is not None and retry.params == dead.params
    assert retry.user_attrs["retry_of"] == dead.number


def test_the_journal_file_storage_holds_a_study(tmp_path):
    url = f"journal:{tmp_path / 'shared' / 'study.journal'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.tell(take_trial(study, SPACE, n_trials=1), 0.5)
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [t.value for t in again.trials] == [0.5]
    assert take_trial(again, SPACE, n_trials=1) is None


def test_sqlite_is_refused_for_workers_on_several_machines():
    launchers = compose_config(
        ["hydra/launcher=slurm", "hparams_search=lr_batch_optuna"], return_hydra_config=True
    ).hydra.launcher
    with pytest.raises(LmforgeError, match="SQLite") as err:
        check_launcher(launchers, "sqlite:////shared/optuna.db", workers=4)
    assert "postgresql://" in str(err.value) and "journal:" in str(err.value)
    # A storage every node reaches passes; jobs of several tasks are refused with the way out.
    assert check_launcher(launchers, "postgresql://u@db/optuna", workers=4) == "launcher"
    OmegaConf.update(launchers, "tasks_per_node", 4, force_add=True)
    with pytest.raises(LmforgeError, match="n_jobs"):
        check_launcher(launchers, "postgresql://u@db/optuna", workers=4)
    assert check_launcher(None, "sqlite:///x.db", workers=2) == "local"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "workers=0"),
        ({"workers": 2, "n_jobs": 2}, "choose one"),
        ({"heartbeat": -1}, "heartbeat=-1"),
    ],
)
def test_bad_worker_settings_are_named(options, message):
    settings = dict(
        study_name="s",
        storage=None,
        direction="max",
        n_trials=3,
        n_jobs=1,
        sampler=None,
        params={},
        retry_interrupted=True,
    )
    with pytest.raises(LmforgeError, match=message):
        OptunaSweeper(**{**settings, **options})


def test_a_worker_runs_the_sweeps_own_command():
    config = OmegaConf.create(
        {
            "hydra": {
                "runtime": {
                    "config_sources": [
                        {"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                        {"path": "/my/conf", "schema": "file", "provider": "command-line"},
                    ]
                },
                "job": {"config_name": "mine"},
                "overrides": {
                    "hydra": ["hydra.sweeper.workers=2", "hydra.sweep.dir=/s"],
                    "task": ["hparams_search=lr_batch_optuna", "data.batch_size=16,32"],
                },
            }
        }
    )
    command = worker_command(config, 1)
    assert command[1:] == [
        "-m",
        "lmforge",
        "-m",
        "--config-dir",
        "/my/conf",
        "--config-name",
        "mine",
        "hydra.sweep.dir=/s",
        "hparams_search=lr_batch_optuna",
        "data.batch_size=16,32",
        "hydra.sweeper.worker_index=1",
    ]


def worker_sweep(tiny_model, tiny_data, tmp_path, n_trials: int, epochs: int = 1) -> list[str]:
    return [
        *quick(tiny_model, tiny_data, tmp_path, epochs=epochs),
        "hparams_search=lr_batch_optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.workers=2",
        "hydra.sweeper.heartbeat=1",
        "data.batch_size=16,32",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]


def study_of(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="lr_batch", storage=f"sqlite:///{sweep / 'optuna.db'}")


def test_two_local_workers_run_n_distinct_trials_each_in_its_own_dir(
    tmp_path, tiny_model, tiny_data
):
    sweep = tmp_path / "sweep"
    process = launch(*worker_sweep(tiny_model, tiny_data, tmp_path, n_trials=4), cwd=tmp_path)
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    study = study_of(sweep)
    ran = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 4
    # One directory per trial that ran, each holding one run's record of that trial's settings.
    dirs = sorted(p.name for p in sweep.iterdir() if p.name.isdigit())
    assert dirs == sorted(str(t.number) for t in ran)
    # Each worker samples with its own seed: no two trials share their settings.
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 4
    for trial in ran:
        run = sweep / str(trial.number)
        assert trial.user_attrs["job_dir"] == str(run)
        metrics = json.loads((run / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["best_validation"]["value"])
        assert OmegaConf.load(run / "config.yaml").optimizer.lr == pytest.approx(
            trial.params["optimizer.lr"]
        )
        # Each worker computes on its share of the cores (or on what the user set).
        threads = os.environ.get("OMP_NUM_THREADS") or max(1, available_cores() // 2)
        record = json.loads((run / "reproducibility.json").read_text())
        assert record["platform"]["torch_threads"] == int(threads)
    logs = [(sweep / "workers" / f"{i}.log").read_text() for i in (0, 1)]
    taken = [int(n) for text in logs for n in _numbers_run(text)]
    assert sorted(taken) == sorted(t.number for t in ran)  # no trial run by both workers
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["completed"] == 4 and results["best_value"] == pytest.approx(study.best_value)


def _numbers_run(log: str) -> list[str]:
    lines = [line for line in log.splitlines() if " runs trial " in line]
    return [line.split(" runs trial ")[1].split(":")[0] for line in lines]


@pytest.mark.slow  # about a minute; the heartbeat test above covers the retry in the default run
def test_a_killed_worker_leaves_the_study_resumable(tmp_path, tiny_model, tiny_data):
    sweep = tmp_path / "sweep"
    command = worker_sweep(tiny_model, tiny_data, tmp_path, n_trials=3, epochs=6)
    process = launch(*command, cwd=tmp_path)
    # SIGKILL worker 0 (only it) once it trains a trial.
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert process.poll() is None, finish(process)[-3000:]
        assert time.monotonic() < deadline, "worker 0 never started a trial"
        log = sweep / "workers" / "0.log"
        numbers = _numbers_run(log.read_text()) if log.is_file() else []
        if numbers and (sweep / numbers[0] / "csv" / "metrics.csv").is_file():
            victim = int(numbers[0])
        time.sleep(0.05)
    pattern = f"{sweep}.*hydra.sweeper.worker_index=0"
    pids = [int(p) for p in os.popen(f"pgrep -f '{pattern}'").read().split()]
    assert pids, "worker 0's process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    output = finish(process)
    before = {
        p.name: sorted(q.name for q in p.iterdir()) for p in sweep.iterdir() if p.name.isdigit()
    }
    # The other worker finished; the killed trial either ran again there (heartbeat missed) or
    # the sweep says how to go on.
    study = study_of(sweep)
    if len(finished_trials(study)) < 3:
        assert process.returncode != 0 and "run the same command again" in output, output[-3000:]
        output = finish(launch(*command, cwd=tmp_path))
        study = study_of(sweep)
    assert len(finished_trials(study)) == 3, output[-3000:]
    killed = study.trials[victim]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"] is True
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == victim]
    assert retry and retry[0].params == killed.params and retry[0].state == TrialState.COMPLETE
    # The killed trial's directory was left as it was; no directory was written twice.
    assert sorted(q.name for q in (sweep / str(victim)).iterdir()) == before[str(victim)]
    assert not (sweep / str(victim) / "metrics.json").exists()


@pytest.mark.slow
def test_workers_as_launcher_jobs_on_a_journal_file(tmp_path, tiny_model, tiny_data):
    """Each worker one job of the configured launcher (submitit's local executor standing in
    for SLURM), sharing a study in Optuna's journal file."""
    sweep = tmp_path / "sweep"
    journal = tmp_path / "shared" / "study.journal"
    process = launch(
        *worker_sweep(tiny_model, tiny_data, tmp_path, n_trials=3),
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweeper.storage=journal:{journal}",
        cwd=tmp_path,
    )
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    study = optuna.load_study(study_name="lr_batch", storage=open_storage(f"journal:{journal}"))
    ran = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 3
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == sorted(
        str(t.number) for t in ran
    )
    # The worker jobs ran through submitit, each in its own directory beside the trials'.
    assert sorted(p.name for p in (sweep / "workers").iterdir()) == ["0", "1"]
    assert (sweep / ".submitit").is_dir()


@pytest.mark.parametrize(
    ("workers", "cores", "gpus", "threads", "visible"),
    [
        (2, 2, 0, ["1", "1"], [None, None]),
        (3, 16, 0, ["5", "5", "5"], [None, None, None]),
        (4, 2, 0, ["1"] * 4, [None] * 4),
        (2, 8, 4, ["4", "4"], ["0,2", "1,3"]),
        (3, 8, 2, ["2"] * 3, ["0", "1", "0"]),
        (2, 8, 1, ["4", "4"], [None, None]),
    ],
)
def test_local_workers_get_their_share_of_the_cores_and_gpus(
    workers, cores, gpus, threads, visible
):
    envs = [worker_environment(i, workers, {"PATH": "/bin"}, cores, gpus) for i in range(workers)]
    assert [e["OMP_NUM_THREADS"] for e in envs] == threads
    assert [e["MKL_NUM_THREADS"] for e in envs] == threads
    assert [e.get("CUDA_VISIBLE_DEVICES") for e in envs] == visible
    assert all(e["PATH"] == "/bin" for e in envs)


def test_what_the_user_set_for_threads_and_gpus_is_kept():
    mine = {"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "5,6"}
    env = worker_environment(1, 2, mine, cores=16, gpus=8)
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "5,6"
    assert "MKL_NUM_THREADS" not in env  # the user's setting of threads stands as it is
