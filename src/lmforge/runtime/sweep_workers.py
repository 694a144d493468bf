"""Several workers on one Optuna study (`hydra.sweeper.workers=N`): the storage they share, how a
worker takes a trial so that exactly `n_trials` run, the heartbeats that let the others retry
the trial of a worker that died, and how the workers are started (local processes, or jobs of a
Hydra launcher such as SLURM through submitit).

Each worker is the same `lmforge-train -m` command with `hydra.sweeper.worker_index=<i>`: it asks
the study for a trial, runs it in its own process, tells the result and asks again, with no
barrier between workers. Optuna's storages (RDB or journal file) keep the study consistent;
nothing here schedules trials beyond that.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

# Storage URLs of Optuna's journal file storage: `journal:<path>` (a file on a file system every
# worker reaches; Optuna locks it with symlinks, which NFS supports).
JOURNAL_PREFIX = "journal:"
# User attributes on trials: a trial asked after the study was full (never run), and one whose
# worker stopped (killed, heartbeat lost) before it ended.
SURPLUS_ATTR = "surplus"
INTERRUPTED_ATTR = "interrupted"
WORKERS_DIR = "workers"


def open_storage(url: str, heartbeat: int = 0) -> optuna.storages.BaseStorage:
    """Optuna's storage for `url`: a journal file for `journal:<path>`, else an RDB URL, with
    heartbeats every `heartbeat` seconds where given (RDB storages only: Optuna's journal storage
    keeps none); see fail_stale."""
    import optuna

    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len(JOURNAL_PREFIX) :]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Workers on one SQLite file wait for each other's writes instead of failing at once.
        engine = {"connect_args": {"timeout": 60}}
    if not heartbeat:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat
        )


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts towards n_trials: running, or ended on its own (not interrupted,
    not surplus)."""
    from optuna.trial import TrialState

    if trial.state == TrialState.RUNNING:
        return True
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        return False
    return not (trial.user_attrs.get(INTERRUPTED_ATTR) or trial.user_attrs.get(SURPLUS_ATTR))


def take_trial(study: optuna.Study, space: dict[str, Any], n_trials: int) -> optuna.Trial | None:
    """A trial for this worker to run, or None when the study holds n_trials already.

    Workers ask concurrently, so a check before asking is not enough: after asking, the trial
    counts only if fewer than n_trials counting trials (or queued ones, which will run) have a
    lower number. Trial numbers are given out in order by the storage, so of trials asked at once
    exactly the first free places run; a trial asked too late ends at once as FAIL marked
    `surplus` (Optuna cannot delete a trial) and the worker checks again."""
    from optuna.trial import TrialState

    while True:
        trials = study.get_trials(deepcopy=False)
        if sum(counts(t) for t in trials) >= n_trials:
            return None
        with warnings.catch_warnings():
            # Optuna warns that heartbeats are meant for study.optimize; heartbeat() below
            # records them for trials asked here.
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            trial = study.ask(space)
        ahead = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and (counts(t) or t.state == TrialState.WAITING)
        ]
        if len(ahead) < n_trials:
            return trial
        trial.set_user_attr(SURPLUS_ATTR, True)
        study.tell(trial, state=TrialState.FAIL)


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every `interval` seconds while it runs (RDB storages with
    heartbeats on; a no-op elsewhere). Optuna records heartbeats itself only inside
    study.optimize, which the sweeper does not use: it runs each trial as a Hydra job."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not interval or not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study, retry: bool) -> list[int]:
    """Fail as interrupted the running trials whose heartbeat is older than twice the interval
    (their worker died), queue their parameters again if `retry`; returns their numbers.

    Optuna's fail_stale_trials fails them first and offers a callback after, when a finished
    trial no longer takes the `interrupted` mark; hence the same steps here in the other order.
    Of workers that find the same trial at once, only the one whose update ends it queues it."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
    from optuna.trial import TrialState

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return []
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, True)
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        trial = storage.get_trial(trial_id)
        failed.append(trial.number)
        log.warning(
            "Trial %d lost its worker (no heartbeat for %d s): marked failed%s.",
            trial.number,
            2 * int(storage.get_heartbeat_interval() or 0),
            ", its parameters run again" if retry else "",
        )
        if retry:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return failed


def worker_command(config: DictConfig, index: int) -> list[str]:
    """The command of worker `index`: the sweep's own command line (its config directory and
    name, hydra and task overrides) with `hydra.sweeper.worker_index` set."""
    hydra_cfg = config.hydra
    command = [sys.executable, "-m", "lmforge", "-m"]
    for source in hydra_cfg.runtime.get("config_sources") or []:
        if source.get("provider") == "command-line" and source.get("schema") == "file":
            command += ["--config-dir", str(source.path)]
    name = hydra_cfg.job.get("config_name")
    if name and name != "train":
        command += ["--config-name", str(name)]
    overrides = [
        o
        for o in [*hydra_cfg.overrides.hydra, *hydra_cfg.overrides.task]
        if not o.startswith(("hydra.sweeper.worker_index=", "hydra.sweeper.workers="))
    ]
    return [*command, *overrides, f"hydra.sweeper.worker_index={index}"]


def worker_environment(
    index: int, workers: int, environ: Mapping[str, str], cores: int, gpus: int
) -> dict[str, str]:
    """The environment of local worker `index` of `workers`: its share of the machine. Its
    compute threads get cores // workers (OMP_NUM_THREADS, MKL_NUM_THREADS), where each worker
    would otherwise start a thread per core and the workers would wait on each other's threads;
    with several GPUs it sees its own (CUDA_VISIBLE_DEVICES: every workers-th GPU, or one GPU
    in turn when there are more workers than GPUs). What the user set is kept."""
    env = dict(environ)
    threads = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if not any(key in environ for key in threads):
        env.update(dict.fromkeys(threads, str(max(1, cores // workers))))
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in environ:
        if workers <= gpus:
            mine = [g for g in range(gpus) if g % workers == index]
        else:
            mine = [index % gpus]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, mine))
    return env


def run_local_workers(commands: Sequence[list[str]], sweep_dir: Path, cwd: str) -> list[int]:
    """Run the workers as processes on this machine, each logging to workers/<i>.log and on
    its share of the cores and GPUs (`worker_environment`); returns their exit codes. Ctrl-C
    stops them all (each marks its running trial interrupted)."""
    import torch

    from lmforge.data.datamodule import available_cores

    logs = sweep_dir / WORKERS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    cores, gpus = available_cores(), torch.cuda.device_count()
    for index, command in enumerate(commands):
        env = worker_environment(index, len(commands), os.environ, cores, gpus)
        with open(logs / f"{index}.log", "a", encoding="utf-8") as out:
            processes.append(
                subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
            )
        log.info(
            "Worker %d started (pid %d; %s compute threads%s), log: %s",
            index,
            processes[-1].pid,
            env.get("OMP_NUM_THREADS", "the user's"),
            f", GPUs {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else "",
            logs,
        )
    try:
        return [process.wait() for process in processes]
    except BaseException:
        for process in processes:
            if process.poll() is None:
                # Each worker ends its trial as interrupted, as on Ctrl-C.
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.kill()
        raise


class WorkerJobs:
    """The task of a launcher's worker jobs (e.g. SLURM jobs through submitit): job i runs
    worker i's command there. A worker that fails fails its job, so the launcher reports it."""

    def __init__(self, commands: Sequence[list[str]], cwd: str) -> None:
        self.commands = [list(c) for c in commands]
        self.cwd = cwd

    def __call__(self, cfg: DictConfig) -> int:
        from hydra.core.hydra_config import HydraConfig

        del cfg  # the job's config: the worker composes its trials' configs itself
        command = self.commands[int(HydraConfig.get().job.num)]
        code = subprocess.call(command, cwd=self.cwd)
        if code != 0:
            raise LmforgeError(f"Sweep worker exited with code {code}: {' '.join(command)}")
        return code


def check_launcher(launcher_cfg: DictConfig | None, storage_url: str, workers: int) -> str:
    """Where the launcher runs workers ('local' or 'launcher'); refuses SQLite across machines
    and launcher jobs of several tasks (a worker runs its trials one after another)."""
    target = str(launcher_cfg.get("_target_", "")) if launcher_cfg is not None else ""
    if launcher_cfg is None or not target or target.endswith("BasicLauncher"):
        return "local"
    several_machines = "Slurm" in target
    if several_machines and storage_url.startswith("sqlite"):
        raise LmforgeError(
            f"hydra.sweeper.workers={workers} with {target.rsplit('.', 1)[-1]}: the workers run "
            f"on several machines and the study's storage is SQLite ({storage_url}), whose "
            "file locks do not hold across machines (a shared file system corrupts it). Give "
            "a storage every worker reaches: hydra.sweeper.storage=postgresql://user:pw@host/db "
            "(or mysql://...), or Optuna's journal file on a shared file system: "
            "hydra.sweeper.storage=journal:/shared/path/study.journal."
        )
    tasks = 1
    for key in ("tasks_per_node", "nodes"):
        tasks *= int(OmegaConf.select(launcher_cfg, key, default=None) or 1)
    if tasks > 1:
        raise LmforgeError(
            f"hydra.sweeper.workers={workers}: hydra.launcher asks {tasks} tasks per job "
            "(nodes x tasks_per_node), but a worker job runs its trials one after another in "
            "one task. For trials that each span several SLURM tasks (trainer=ddp_slurm) use "
            "hydra.sweeper.n_jobs instead of workers, or set hydra.launcher.nodes=1 "
            "hydra.launcher.tasks_per_node=1."
        )
    return "launcher"
