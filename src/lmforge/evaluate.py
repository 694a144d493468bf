"""Evaluation: test a saved checkpoint on its run's test split or on a given file.

The results go to a new run directory of their own, never into the training run's files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lmforge.config.schema import EvalSchema, check_command_settings
from lmforge.errors import LmforgeError
from lmforge.runtime.record import EvalMetrics, write_run_metrics
from lmforge.runtime.rundir import CONFIG_FILE, record_config
from lmforge.tasks.runs import TrainedRun, load_run

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test `cfg.ckpt_path`; write and return the test metrics."""
    check_command_settings(cfg, EvalSchema)
    run = load_run(str(cfg.ckpt_path), "lmforge-eval")
    module = run.module
    if cfg.test_file:
        _check_test_file(str(cfg.test_file), run)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_config(run_dir, cfg)

    try:
        datamodule = test_datamodule(
            run, str(cfg.paths.cache_dir), cfg.test_file, cfg.max_test_samples, cfg.batch_size
        )
    except LmforgeError as err:
        if not cfg.test_file:
            raise
        # The data settings are the run's, not the user's: say where they come from.
        raise LmforgeError(
            f"test_file={str(cfg.test_file)!r} does not fit the checkpoint's "
            f"{module.task_name} run (its data settings come from {run.run_dir / CONFIG_FILE}): "
            f"{err}"
        ) from err

    if cfg.trainer.get("precision") == "auto":
        # The precision the run was tested with (config.yaml records what auto resolved to),
        # so the same checkpoint gives the same numbers; trainer.precision=<value> on the
        # command line evaluates in another.
        run_precision = OmegaConf.select(run.config, "trainer.precision", default=None)
        with open_dict(cfg):
            cfg.trainer.precision = (
                run_precision if run_precision not in (None, "auto") else "32-true"
            )
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    write_run_metrics(
        run_dir,
        EvalMetrics(
            task=module.task_name,
            checkpoint=str(Path(cfg.ckpt_path).resolve()),
            test_file=str(cfg.test_file) if cfg.test_file else run.data_config().get("test_file"),
            examples=len(datamodule.splits["test"]),
            test=metrics,
        ),
    )
    log.info("Test metrics: %s", json.dumps(metrics))
    return metrics


def test_datamodule(
    run: TrainedRun,
    cache_dir: str,
    test_file: str | None = None,
    max_test_samples: int | None = None,
    batch_size: int | None = None,
) -> Any:
    """The run's data, set up for testing: its test split (or `test_file`) encoded as the run
    encoded it (the model's own label names and the like)."""
    data_cfg = run.data_config()
    data_cfg.cache_dir = f"{cache_dir}/tokenized"
    for key, value in run.module.data_settings().items():
        data_cfg[key] = value
    if test_file:
        data_cfg.test_file = str(test_file)
    data_cfg.max_test_samples = max_test_samples
    if batch_size:
        data_cfg.eval_batch_size = batch_size
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def _check_test_file(test_file: str, run: TrainedRun) -> None:
    """A test file in a format the checkpoint's task does not read is data of another task
    (CoNLL for a classifier): say so before anything is read or written."""
    reader = get_class(run.config.data._target_)
    suffix = Path(test_file).suffix.lower()
    supported = getattr(reader, "supported_suffixes", None)
    if supported is not None and suffix not in supported:
        raise LmforgeError(
            f"test_file={test_file!r} is a {suffix or 'suffix-less'} file, which the checkpoint's "
            f"task ({run.module.task_name}, read by {reader.__name__}) does not read; expected "
            f"one of {', '.join(supported)}, with the run's columns. Is it data of another task?"
        )
