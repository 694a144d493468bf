"""Hyperparameter search with Optuna, as a Hydra sweeper that resumes where it stopped.

`lmforge-train -m hparams_search=<name>` runs trials of one Optuna study kept in a SQLite file in
the sweep directory. Started again with the same command, the sweeper reopens the study instead
of starting a new one:

- trials that finished (completed, or failed with an error) count towards `n_trials`, so only the
  remaining ones run;
- a trial that was running when the sweep was killed is marked failed (user attribute
  `interrupted`) and does not count; its parameters are queued again (`retry_interrupted`), so the
  resumed sweep samples what the uninterrupted one would have;
- each trial runs in `<sweep dir>/<trial number>`: trial numbers are never reused within a study,
  so no job directory is ever written twice.

Written here rather than taken from hydra-optuna-sweeper: that plugin pins optuna<3 (whose SQLite
storage fails under SQLAlchemy 2), reruns `n_trials` more trials on every restart and numbers its
jobs from 0 again, overwriting the earlier job directories. This one uses Optuna's ask-and-tell
interface of current releases and Hydra's own override grammar for the search space.

Pruning (`pruner`: median, asha, hyperband; none by default): every trial's run is told its
study, storage and trial number through the config (`trial.*`); its `TrialReporter` callback
reports the monitored validation metric after each validation and, when the pruner says so,
stops training there. The run still tests its best checkpoint and writes its full record
(metrics.json says `pruned` and where); the sweeper then ends the trial PRUNED.

Workers (`workers`: N > 1): the sweep starts N copies of its own command, each with
`worker_index` set (processes here, or jobs of the configured Hydra launcher, e.g. SLURM through
submitit); each asks the study for a trial, runs it, tells it and asks again, and exactly
`n_trials` trials run in all (lmforge.runtime.sweep_workers). Workers send heartbeats (RDB
storages): a trial whose worker died is failed as interrupted and retried by another worker.

One sweep command per study: at start-up, trials left RUNNING are taken as interrupted. More
workers may join a running study by hand with `hydra.sweeper.worker_index=<i>`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError
from lmforge.runtime import sweep_workers
from lmforge.runtime.sweep_workers import INTERRUPTED_ATTR, SURPLUS_ATTR

if TYPE_CHECKING:
    import optuna
    from hydra.core.utils import JobReturn

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
PRUNERS = ("none", "median", "asha", "hyperband")
# The user attribute a pruned run leaves on its trial: where it stopped.
PRUNED_ATTR = "pruned"


def build_pruner(name: str, warmup: int, startup_trials: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner called `name`: `median` prunes a trial whose value at a validation is
    worse than the median of earlier trials there (after `startup_trials` finished trials and
    `warmup` validations of its own); `asha` (successive halving) and `hyperband` compare
    trials at rungs of at least `warmup` validations; `none` never prunes."""
    import optuna

    if name not in PRUNERS:
        raise LmforgeError(f"hydra.sweeper.pruner={name!r}: expected one of {', '.join(PRUNERS)}.")
    if warmup < 0 or startup_trials < 0:
        raise LmforgeError(
            "hydra.sweeper.pruner_warmup and pruner_startup_trials must be 0 or more, got "
            f"{warmup} and {startup_trials}."
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(warmup, 1))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(warmup, 1))
    return optuna.pruners.NopPruner()


def distribution_for(override: Override) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one sweep override of Hydra's grammar.

    `choice(a,b)` / `a,b` -> categorical; `range(start,stop,step)` -> int or float with a step;
    `interval(low,high)` -> float, `int(interval(low,high))` -> int; `tag(log, interval(...))`
    samples on a log scale.
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    sweep = override.value()
    key = override.get_key_element()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise LmforgeError(f"Search space '{key}': the range {sweep} holds no value.")
        # A range's values are numbers: all ints, or floats.
        if all(isinstance(v, int) for v in values):
            return IntDistribution(
                cast(int, values[0]), cast(int, values[-1]), step=int(sweep.step)
            )
        return FloatDistribution(
            cast(float, values[0]), cast(float, values[-1]), step=float(sweep.step)
        )
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        # A parsed interval has both bounds.
        start, end = cast(float, sweep.start), cast(float, sweep.end)
        return FloatDistribution(float(start), float(end), log=log_scale)
    raise LmforgeError(
        f"Search space '{key}': {override.input_line!r} is not a sweep this sweeper understands "
        "(expected choice(...), a,b,c, range(...), interval(...), int(interval(...)) or "
        "tag(log, interval(...)))."
    )


def split_search_space(
    overrides: Sequence[Override],
) -> tuple[dict[str, optuna.distributions.BaseDistribution], list[str]]:
    """The search space (sweep overrides) and the fixed overrides every trial gets."""
    space: dict[str, Any] = {}
    fixed: list[str] = []
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution_for(override)
        else:
            fixed.append(f"{key}={override.get_value_element_as_str()}")
    return space, fixed


def quoted(text: str) -> str:
    """A text as a quoted value of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    """Hydra overrides that set a trial's sampled parameters."""
    return [
        f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
    ]


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that ran to their end (completed, pruned, or failed with an error of their own)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        t
        for t in study.trials
        if t.state in done
        and not t.user_attrs.get(INTERRUPTED_ATTR)
        and not t.user_attrs.get(SURPLUS_ATTR)
    ]


def mark_interrupted(study: optuna.Study, retry: bool) -> list[int]:
    """Fail the trials a killed sweep left RUNNING; queue their parameters again if `retry`."""
    from optuna.trial import TrialState

    storage = study._storage  # Optuna exposes trial-state changes on the storage only.
    marked = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        marked.append(trial.number)
        if retry:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return marked


class OptunaSweeper(Sweeper):
    """A Hydra sweeper over one persistent Optuna study (see the module docstring).

    Args:
        study_name: the study's name in `storage`; the same name resumes it.
        storage: an Optuna storage URL (default: SQLite in the sweep directory).
        direction: max/min (or maximize/minimize) of the value the task returns.
        n_trials: finished trials the study should hold; a restart runs only the missing ones.
        n_jobs: trials launched together (in parallel only with a parallel launcher).
        sampler: an Optuna sampler config (`_target_`), e.g. TPESampler with a seed.
        params: search space as Hydra sweep overrides (`key: interval(1e-5, 1e-3)`...).
        retry_interrupted: queue the parameters of trials a killed sweep left unfinished.
        pruner: none, median, asha or hyperband (`build_pruner`).
        pruner_warmup: validations before a trial may be pruned (the first rung).
        pruner_startup_trials: median: finished trials before any is pruned.
        workers: processes (or launcher jobs) that run trials of the study side by side.
        worker_index: set in a worker's own command (see sweep_workers.worker_command).
        heartbeat: seconds between a worker's heartbeats (RDB storages); 0: none.
    """

    def __init__(
        self,
        study_name: str,
        storage: str | None,
        direction: str,
        n_trials: int,
        n_jobs: int,
        sampler: Any,
        params: DictConfig | None,
        retry_interrupted: bool,
        pruner: str = "none",
        pruner_warmup: int = 1,
        pruner_startup_trials: int = 3,
        workers: int = 1,
        worker_index: int | None = None,
        heartbeat: int = 60,
    ) -> None:
        if str(direction) not in DIRECTIONS:
            raise LmforgeError(
                f"hydra.sweeper.direction={direction!r}: expected one of {sorted(DIRECTIONS)}."
            )
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs), ("workers", workers)):
            if not isinstance(value, int) or value < 1:
                raise LmforgeError(f"hydra.sweeper.{key}={value!r}: expected a whole number >= 1.")
        for key, option in (("worker_index", worker_index), ("heartbeat", heartbeat)):
            if option is not None and (not isinstance(option, int) or option < 0):
                raise LmforgeError(f"hydra.sweeper.{key}={option!r}: expected a whole number >= 0.")
        if workers > 1 and n_jobs > 1:
            raise LmforgeError(
                f"hydra.sweeper.workers={workers} and n_jobs={n_jobs}: choose one. Workers run "
                "one trial at a time each and take the next as soon as they are free; n_jobs "
                "launches trials in batches that wait for each other."
            )
        self.study_name = str(study_name)
        self.storage = storage
        self.direction = DIRECTIONS[str(direction)]
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler_config = sampler
        self.params = {str(k): str(v) for k, v in (params or {}).items()}
        self.retry_interrupted = retry_interrupted
        self.workers = workers
        self.worker_index = worker_index
        self.heartbeat = heartbeat
        self._failed_workers: list[str] = []
        self.pruner: dict[str, Any] = {
            "pruner": str(pruner),
            "pruner_warmup": int(pruner_warmup),
            "pruner_startup_trials": int(pruner_startup_trials),
        }
        self._pruner()  # refuses bad settings before any trial runs
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ----- the sweep ------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> optuna.Study:
        try:
            return self._sweep(arguments)
        except LmforgeError as err:
            # The user's to fix: the message, not a traceback through Hydra.
            log.error("%s", err)
            raise SystemExit(1) from err

    def _sweep(self, arguments: list[str]) -> optuna.Study:
        import optuna

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        worker = self.worker_index is not None
        if not worker:
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        search = [f"{key}={value}" for key, value in self.params.items()]
        space, fixed = split_search_space(parser.parse_overrides([*search, *arguments]))
        if not space:
            raise LmforgeError(
                "The Optuna sweeper got no search space: set hydra.sweeper.params (an "
                "hparams_search config does) or give sweep overrides such as "
                "optimizer.lr='interval(1e-5,1e-3)'."
            )
        where = "local"
        if self.workers > 1 and not worker:
            where = sweep_workers.check_launcher(
                self.config.hydra.get("launcher"), self._storage_url(sweep_dir), self.workers
            )
        study = self._open_study(optuna, sweep_dir, space, fixed)
        if worker:
            self._work(study, space, fixed, sweep_dir)
            return study
        retried = mark_interrupted(study, self.retry_interrupted)
        if retried:
            log.warning(
                "Trial(s) %s were running when the sweep stopped: marked failed (their "
                "directories are kept)%s.",
                ", ".join(map(str, retried)),
                "; their parameters run again" if self.retry_interrupted else "",
            )
        remaining = self.n_trials - len(finished_trials(study))
        log.info(
            "Study '%s' (%s): %d of %d trials finished, %d to run; job dirs in %s",
            self.study_name,
            self._storage_url(sweep_dir),
            self.n_trials - max(remaining, 0),
            self.n_trials,
            max(remaining, 0),
            sweep_dir,
        )
        if self.workers > 1:
            if remaining > 0:
                self._run_workers(where, fixed, sweep_dir)
            self._write_results(study, sweep_dir)
            self._check_workers_finished(study, sweep_dir)
            return study
        while remaining > 0:
            batch = [study.ask(space) for _ in range(min(self.n_jobs, remaining))]
            self._run_batch(study, batch, fixed, sweep_dir)
            remaining -= len(batch)
        self._write_results(study, sweep_dir)
        return study

    def _work(
        self, study: optuna.Study, space: dict[str, Any], fixed: list[str], sweep_dir: Path
    ) -> None:
        """A worker's loop: take a trial while the study needs one, run it, tell it."""
        ran = 0
        while True:
            sweep_workers.fail_stale(study, self.retry_interrupted)
            trial = sweep_workers.take_trial(study, space, self.n_trials)
            if trial is None:
                break
            log.info("Worker %s runs trial %d: %s", self.worker_index, trial.number, trial.params)
            with sweep_workers.heartbeat(study, trial, self.heartbeat):
                self._run_batch(study, [trial], fixed, sweep_dir)
            ran += 1
        log.info(
            "Worker %s: the study holds %d trials; this worker ran %d.",
            self.worker_index,
            self.n_trials,
            ran,
        )

    def _run_workers(self, where: str, fixed: list[str], sweep_dir: Path) -> None:
        """Start the workers and wait for them all; a worker that fails is logged with its log
        file and the others go on."""
        assert self.config is not None
        commands = [
            sweep_workers.worker_command(self.config, index) for index in range(self.workers)
        ]
        cwd = str(self.config.hydra.runtime.cwd)
        self._failed_workers = []
        if where == "local":
            codes = sweep_workers.run_local_workers(commands, sweep_dir, cwd)
            self._failed_workers = [
                f"worker {i} exited with code {code} (log: "
                f"{sweep_dir / sweep_workers.WORKERS_DIR / f'{i}.log'})"
                for i, code in enumerate(codes)
                if code != 0
            ]
            return
        from hydra.core.utils import JobStatus

        # Each worker is one job of the configured launcher, in workers/<i>; the job runs the
        # worker's command there (the launcher's own task is a trial, so it is swapped here).
        # A job's config is composed like a trial's (its fixed overrides), in its own dir.
        jobs = [
            [*fixed, f"hydra.sweep.subdir={sweep_workers.WORKERS_DIR}/{i}"]
            for i in range(len(commands))
        ]
        task = self.launcher.task_function
        try:
            self.launcher.task_function = sweep_workers.WorkerJobs(commands, cwd)
            results = list(self.launcher.launch(jobs, initial_job_idx=0))
        finally:
            self.launcher.task_function = task
        for index, result in enumerate(results):
            if result.status != JobStatus.COMPLETED:
                self._failed_workers.append(f"worker {index}: {result._return_value}")

    def _check_workers_finished(self, study: optuna.Study, sweep_dir: Path) -> None:
        failed = self._failed_workers
        missing = self.n_trials - len(finished_trials(study))
        if failed:
            log.error("Sweep workers failed: %s", "; ".join(failed))
        if missing > 0:
            raise LmforgeError(
                f"Study '{self.study_name}': {self.n_trials - missing} of {self.n_trials} trials "
                f"finished{' (' + '; '.join(failed) + ')' if failed else ''}. The study is "
                "consistent: run the same command again to run the missing trials (a trial "
                f"left running by a stopped worker runs again). Results so far: {sweep_dir}."
            )

    def _storage_url(self, sweep_dir: Path) -> str:
        return self.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"

    def _open_study(
        self, optuna: Any, sweep_dir: Path, space: dict[str, Any], fixed: list[str]
    ) -> optuna.Study:
        # Hydra instantiates the sweeper's config recursively: the sampler arrives built.
        sampler = self.sampler_config
        options: dict[str, Any] = {}
        if self.worker_index is not None:
            # Workers with one seed would sample the same trials side by side: worker i samples
            # with seed + i (a sampler built without a seed config draws a new random seed).
            config = OmegaConf.select(self.config, "hydra.sweeper.sampler") if self.config else None
            if isinstance(config, DictConfig) and config.get("seed") is not None:
                sampler = config
                options["seed"] = int(config.seed) + self.worker_index
            elif hasattr(sampler, "reseed_rng"):
                sampler.reseed_rng()
        if isinstance(sampler, DictConfig):
            from hydra.utils import instantiate

            sampler = instantiate(sampler, **options)
        several = self.workers > 1 or self.worker_index is not None
        study = optuna.create_study(
            study_name=self.study_name,
            storage=sweep_workers.open_storage(
                self._storage_url(sweep_dir),
                heartbeat=self.heartbeat if several else 0,
            ),
            sampler=sampler,
            pruner=self._pruner(),
            direction=self.direction,
            load_if_exists=True,
        )
        # A study resumed with another search space or other fixed settings would mix trials of
        # different experiments under one best value.
        signature = {
            "search_space": {k: repr(v) for k, v in space.items()},
            "fixed_overrides": sorted(fixed),
            "direction": self.direction,
        }
        recorded = {k: study.user_attrs.get(k) for k in signature}
        if study.trials and any(v is not None for v in recorded.values()):
            changed = [k for k, v in signature.items() if recorded[k] != v]
            if changed:
                details = "; ".join(
                    f"{k}: was {recorded[k]!r}, now {signature[k]!r}" for k in changed
                )
                raise LmforgeError(
                    f"Study '{self.study_name}' in {self._storage_url(sweep_dir)} was started "
                    f"with other settings ({details}). Resume it with the same command (only "
                    "n_trials may change), or start a new study: "
                    "hydra.sweeper.study_name=<new name>."
                )
        for key, value in signature.items():
            study.set_user_attr(key, value)
        return study

    def _run_batch(
        self,
        study: optuna.Study,
        batch: list[optuna.Trial],
        fixed: list[str],
        sweep_dir: Path,
    ) -> None:
        from optuna.trial import TrialState

        numbers = [trial.number for trial in batch]
        self._check_job_dirs_are_new(sweep_dir, numbers)
        jobs = [
            [*fixed, *trial_overrides(trial.params), *self._trial_settings(trial, sweep_dir)]
            for trial in batch
        ]
        # Job numbers are trial numbers, which a study never reuses: dirs stay unique on resume.
        consecutive = numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        try:
            if consecutive:
                results = list(self.launcher.launch(jobs, initial_job_idx=numbers[0]))
            else:
                results = [
                    self.launcher.launch([job], initial_job_idx=n)[0]
                    for job, n in zip(jobs, numbers, strict=True)
                ]
        except BaseException:
            # Killed or stopped by the user: these trials did not end on their own.
            for trial in batch:
                trial.set_user_attr("interrupted", True)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                if self.retry_interrupted:
                    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        for trial, result in zip(batch, results, strict=True):
            self._tell(study, trial, result)

    def _pruner(self) -> optuna.pruners.BasePruner:
        settings = self.pruner
        return build_pruner(
            settings["pruner"], settings["pruner_warmup"], settings["pruner_startup_trials"]
        )

    def _trial_settings(self, trial: optuna.Trial, sweep_dir: Path) -> list[str]:
        """The overrides that tell a trial's run its study and trial (`trial.*`), so it can
        report to it and be pruned, in whatever process or machine it runs."""
        if self.pruner["pruner"] == "none":
            return []
        settings = {
            "study_name": self.study_name,
            "storage": self._storage_url(sweep_dir),
            "number": trial.number,
            **self.pruner,
        }
        # Quoted: storage URLs and study names hold characters Hydra's grammar would parse.
        return [
            f"trial.{key}={value}"
            if isinstance(value, int)
            else f"trial.{key}={quoted(str(value))}"
            for key, value in settings.items()
        ]

    def _check_job_dirs_are_new(self, sweep_dir: Path, numbers: list[int]) -> None:
        assert self.config is not None
        sweep = cast(dict, OmegaConf.to_container(self.config.hydra.sweep, resolve=False))
        subdir = sweep.get("subdir")
        if subdir != "${hydra.job.num}":
            return
        taken = [sweep_dir / str(n) for n in numbers if (sweep_dir / str(n)).exists()]
        if taken:
            raise LmforgeError(
                f"{taken[0]} already exists but study '{self.study_name}' has no trial "
                f"{taken[0].name} that ran there: the study storage was replaced while job "
                "directories stayed. lmforge never overwrites a run: give the sweep a new "
                "directory (hydra.sweep.dir=...) or restore the storage."
            )

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> None:
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        # The run's own directory (the process's working directory is the launch directory).
        job_dir = OmegaConf.select(
            getattr(result, "hydra_cfg", None) or OmegaConf.create(), "hydra.runtime.output_dir"
        ) or (getattr(result, "working_dir", None) or "")
        trial.set_user_attr("job_dir", str(job_dir))
        if result.status != JobStatus.COMPLETED:
            error = result._return_value  # the job's exception; reading return_value re-raises
            trial.set_user_attr("error", str(error))
            log.warning("Trial %d failed: %s", trial.number, error)
            study.tell(trial, state=TrialState.FAIL)
            return
        value = result.return_value
        pruned = study._storage.get_trial(trial._trial_id).user_attrs.get(PRUNED_ATTR)
        if pruned:
            # Optuna keeps the last reported value as a pruned trial's value.
            study.tell(trial, state=TrialState.PRUNED)
            log.info(
                "Trial %d pruned at validation %d (epoch %d): %s",
                trial.number,
                pruned["validation"],
                pruned["epoch"],
                trial.params,
            )
            return
        if value is None or not math.isfinite(float(value)):
            log.warning(
                "Trial %d returned no usable value (%r): marked failed. The run's "
                "optimized_metric must be logged and finite.",
                trial.number,
                value,
            )
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, float(value))
        log.info("Trial %d: %s = %.6g  %s", trial.number, "value", float(value), trial.params)

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        summary: dict[str, Any] = {
            "study_name": self.study_name,
            "storage": self._storage_url(sweep_dir),
            "direction": self.direction,
            "n_trials": self.n_trials,
            "completed": len(completed),
            "failed": sum(t.state == TrialState.FAIL for t in study.trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
            "pruner": self.pruner["pruner"],
            "interrupted": sum(bool(t.user_attrs.get("interrupted")) for t in study.trials),
        }
        if completed:
            best = study.best_trial
            summary.update(
                best_trial=best.number,
                best_value=best.value,
                best_params=dict(best.params),
                best_job_dir=best.user_attrs.get("job_dir"),
            )
            log.info("Best trial %d: %.6g %s", best.number, best.value, best.params)
        else:
            log.warning("No trial of study '%s' completed.", self.study_name)
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / RESULTS_FILE)
        study.trials_dataframe().to_csv(sweep_dir / TRIALS_FILE, index=False)


class _FailureRecorder:
    """Wraps a Hydra launcher: failed jobs are recorded and handed back as finished."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher
        self.failures: list[tuple[int, Any]] = []

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from hydra.core.utils import JobStatus

        results = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for number, result in enumerate(results, start=initial_job_idx):
            if result.status == JobStatus.FAILED:
                self.failures.append((number, result._return_value))
                result.status = JobStatus.COMPLETED
                result._return_value = None
        return results


def run_all_then_report(sweeper: Any, arguments: list[str]) -> Any:
    """Run every job of a grid sweep even when some fail, then exit 1 with one line per failed
    job (Hydra's basic sweeper stops at the first failed batch with a traceback)."""
    recorder = _FailureRecorder(sweeper.launcher)
    sweeper.launcher = recorder
    try:
        returns = sweeper.run_grid(arguments)
    finally:
        sweeper.launcher = recorder.launcher
    if recorder.failures:
        lines = "; ".join(f"job {n}: {error}" for n, error in recorder.failures)
        total = sum(len(batch) for batch in returns)
        log.error(
            "%d of %d jobs failed (their directories and logs are kept in %s): %s",
            len(recorder.failures),
            total,
            sweeper.config.hydra.sweep.dir,
            lines,
        )
        raise SystemExit(1)
    return returns
