"""The run directory: what a run records there, and the rules that protect it.

A run directory is self-contained: the resolved config, the label map, the tokenizer, the
checkpoints and `metrics.json`, so evaluation and prediction need nothing else. Files that a
run has written are never overwritten by another run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LABELS_FILE = "labels.json"
BEFORE_FILE = "before_training.json"
PREDICTIONS_FILE = "test_predictions.jsonl"
TOKENIZER_DIR = "tokenizer"
# Beside an exported model: the task, the run's settings and how the export was made.
EXPORT_SETTINGS_FILE = "lmforge.json"
LAST_CHECKPOINT = "checkpoints/last.ckpt"


def write_new(path: Path, text: str) -> None:
    """Write a file that must not exist yet (never overwrite a run's record)."""
    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError as err:
        raise LmforgeError(
            f"{path} already exists; lmforge never overwrites a run's files. Start a new run "
            "(a new directory is chosen for you) or resume this one with resume=<run dir>."
        ) from err


def record_config(run_dir: Path, cfg: DictConfig) -> None:
    """Save the resolved config (what resume and evaluation rebuild the run from)."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        write_new(path, OmegaConf.to_yaml(cfg, resolve=True))


def write_json(run_dir: Path, name: str, payload: Any) -> Path:
    path = run_dir / name
    write_new(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    return path


def check_run_dir_is_free(path: Path, key: str) -> None:
    """Refuse a directory that holds another run's record: a new run never writes into it.

    A run's own Hydra record (`.hydra/`) may already be there: Hydra writes it before the run
    starts. Resuming a run goes through `resume=<dir>` instead.
    """
    if (path / METRICS_FILE).is_file():
        found = f"a finished run ({METRICS_FILE} is written)"
    elif (path / CONFIG_FILE).is_file():
        found = f"another run ({CONFIG_FILE}; continue it with resume={path})"
    else:
        return
    raise LmforgeError(
        f"{key}={str(path)!r} already holds {found}; lmforge never overwrites a run's files. "
        "Leave the directory out (each run gets a new one under outputs/<task>/runs/) or name a "
        "new or empty folder."
    )


def check_resumable(resume: str) -> tuple[Path, Path]:
    """The run directory and last checkpoint of `resume=<dir>`, if that run can continue."""
    run_dir = Path(str(resume)).expanduser().resolve()
    if not run_dir.is_dir():
        raise LmforgeError(
            f"resume={resume!r}: no such run directory (expected outputs/<task>/runs/<time>)."
        )
    if not (run_dir / CONFIG_FILE).is_file():
        raise LmforgeError(
            f"resume={resume!r}: {run_dir} holds no {CONFIG_FILE}, so it is not an lmforge "
            "run directory (expected outputs/<task>/runs/<time>)."
        )
    if (run_dir / METRICS_FILE).is_file():
        raise LmforgeError(
            f"resume={resume!r}: that run finished ({METRICS_FILE} is written); there is "
            "nothing to resume. Start a new run, or evaluate it with "
            f"lmforge-eval ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}."
        )
    checkpoint = run_dir / LAST_CHECKPOINT
    if not checkpoint.is_file():
        raise LmforgeError(
            f"resume={resume!r}: the run saved no checkpoint yet ({checkpoint} is missing), "
            "so it cannot be resumed; start it again."
        )
    return run_dir, checkpoint


def prepare_resume(cfg: DictConfig, extra_overrides: list[str]) -> tuple[DictConfig, str]:
    """Check that `cfg.resume` names an interrupted run; return its config and last checkpoint."""
    run_dir, checkpoint = check_resumable(str(cfg.resume))
    if extra_overrides:
        raise LmforgeError(
            f"resume={cfg.resume!r} continues the run with its saved config, but other "
            f"overrides were given too: {' '.join(extra_overrides)}. Resume without them, or "
            "start a new run with them."
        )
    saved = cast(DictConfig, OmegaConf.load(run_dir / CONFIG_FILE))  # a saved run config: a mapping
    saved.resume = str(run_dir)
    log.info("Resuming %s from %s", run_dir, checkpoint)
    return saved, str(checkpoint)


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Whether `path` is the folder a DeepSpeed run saves as its checkpoint (read as one file
    through `lmforge.runtime.checkpoints.consolidated`)."""
    return path.is_dir() and (path / "latest").is_file() and (path / "checkpoint").is_dir()
