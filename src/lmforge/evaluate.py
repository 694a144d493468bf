"""Evaluation: test a saved checkpoint on its run's test split or on a given file.

The results go to a new run directory of their own, never into the training run's files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning.pytorch as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from lmforge.checkpoints import load_task_module, run_dir_of
from lmforge.errors import LmforgeError
from lmforge.precision import settle_precision
from lmforge.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    TOKENIZER_DIR,
    check_checkpoint_run,
    record_config,
    write_json,
)

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test `cfg.ckpt_path`; write and return the test metrics."""
    if not cfg.ckpt_path:
        raise LmforgeError(
            "ckpt_path must name a checkpoint: ckpt_path=<run dir>/checkpoints/best.ckpt"
        )
    module = load_task_module(cfg.ckpt_path)
    source = run_dir_of(cfg.ckpt_path)
    if not (source / CONFIG_FILE).is_file():
        raise LmforgeError(
            f"ckpt_path={cfg.ckpt_path!r}: its run directory {source} holds no {CONFIG_FILE}; "
            "lmforge-eval needs the run directory a checkpoint was saved in."
        )
    check_checkpoint_run(cfg.ckpt_path, module.task_name, source)
    if cfg.test_file:
        _check_test_file(str(cfg.test_file), module.task_name, source)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_config(run_dir, cfg)

    data_cfg = OmegaConf.load(source / CONFIG_FILE).data
    data_cfg.tokenizer = str(source / TOKENIZER_DIR)
    data_cfg.cache_dir = f"{cfg.paths.cache_dir}/tokenized"
    if hasattr(module, "label_names"):
        data_cfg.label_names = list(module.label_names)
    if cfg.test_file:
        data_cfg.test_file = str(cfg.test_file)
    data_cfg.max_test_samples = cfg.max_test_samples
    if cfg.batch_size:
        data_cfg.eval_batch_size = cfg.batch_size
    datamodule = instantiate(data_cfg)
    try:
        datamodule.prepare_data()
        datamodule.setup("test")
    except LmforgeError as err:
        if not cfg.test_file:
            raise
        # The data settings are the run's, not the user's: say where they come from.
        raise LmforgeError(
            f"test_file={str(cfg.test_file)!r} does not fit the checkpoint's "
            f"{module.task_name} run (its data settings come from {source / CONFIG_FILE}): {err}"
        ) from err

    settle_precision(cfg.trainer)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items()}
    write_json(
        run_dir,
        METRICS_FILE,
        {
            "task": module.task_name,
            "checkpoint": str(Path(cfg.ckpt_path).resolve()),
            "test_file": data_cfg.test_file,
            "examples": len(datamodule.splits["test"]),
            "test": metrics,
        },
    )
    log.info("Test metrics: %s", json.dumps(metrics))
    return metrics


def _check_test_file(test_file: str, task: str, source: Path) -> None:
    """A test file in a format the checkpoint's task does not read is data of another task
    (CoNLL for a classifier): say so before anything is read or written."""
    reader = get_class(OmegaConf.load(source / CONFIG_FILE).data._target_)
    suffix = Path(test_file).suffix.lower()
    supported = getattr(reader, "supported_suffixes", None)
    if supported is not None and suffix not in supported:
        raise LmforgeError(
            f"test_file={test_file!r} is a {suffix or 'suffix-less'} file, which the checkpoint's "
            f"task ({task}, read by {reader.__name__}) does not read; expected one of "
            f"{', '.join(supported)}, with the run's columns. Is it data of "
            "another task?"
        )
