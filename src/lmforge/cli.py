"""Console entry points: Hydra wrappers around `train` and `evaluate`.

This module imports no torch, transformers or lightning, so `--help` and `--cfg job` answer
fast; the heavy modules load only when a run starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lmforge.config.resources import config_dir, multirun_hydra
from lmforge.config.validation import validate_training_config
from lmforge.errors import LmforgeError, RunInterrupted

log = logging.getLogger("lmforge")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print an LmforgeError as one paragraph and exit 1 (full trace with HYDRA_FULL_ERROR=1).

    Inside a multirun job the error is logged (console and the job's log file) and raised on,
    so the sweeper records that job as failed and decides what follows. A run stopped by
    SIGTERM/Ctrl-C says how to resume it and exits with 128 + the signal number; in a sweep it
    stops the whole sweep (the sweeper marks the job interrupted).
    """
    try:
        yield
    except RunInterrupted as err:
        log.warning("lmforge: %s", err)
        raise SystemExit(err.exit_code) from err
    except KeyboardInterrupt:
        log.warning("lmforge: stopped by Ctrl-C.")
        raise SystemExit(128 + signal.SIGINT) from None
    except Exception as err:
        # Hydra wraps an error raised while instantiating a config node (a datamodule refusing
        # its settings) in its own exception: the user's error is the one inside.
        user_error = _user_error_in(err)
        if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if multirun_hydra() is not None:
            log.error("lmforge: error: %s", user_error)
            raise
        print(f"lmforge: error: {user_error}", file=sys.stderr)
        sys.exit(1)


def _user_error_in(err: BaseException) -> LmforgeError | None:
    """The LmforgeError `err` is or was raised from, if any."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, LmforgeError):
            return seen
        seen = seen.__cause__
    return None


def _route_library_logs() -> None:
    """Send Lightning's messages through Hydra's handlers only (console and run log file).

    Lightning adds a console handler of its own, which printed every line twice.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        library_log = logging.getLogger(name)
        for handler in list(library_log.handlers):
            if type(handler) is logging.StreamHandler:
                library_log.removeHandler(handler)
        library_log.propagate = True


def _task_overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_training(cfg: DictConfig) -> float | None:
    """The body of `lmforge-train`: resume handling, validation, then `train`."""
    with user_errors():
        ckpt_path = None
        if cfg.resume:
            from lmforge.config.upgrade import upgrade_config
            from lmforge.runtime.rundir import prepare_resume

            others = [o for o in _task_overrides() if not o.startswith(("resume=", "hydra."))]
            cfg, ckpt_path = prepare_resume(cfg, others)
            cfg = upgrade_config(cfg)
        validate_training_config(cfg)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from lmforge.train import train

        _route_library_logs()
        return train(cfg, ckpt_path=ckpt_path)


def run_evaluation(cfg: DictConfig) -> None:
    """The body of `lmforge-eval`."""
    with user_errors():
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from lmforge.evaluate import evaluate

        _route_library_logs()
        evaluate(cfg)


def run_prediction(cfg: DictConfig) -> None:
    """The body of `lmforge-predict`."""
    with user_errors():
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from lmforge.predict import predict

        _route_library_logs()
        predict(cfg)


def run_server(cfg: DictConfig) -> None:
    """The body of `lmforge-serve`."""
    with user_errors():
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from lmforge.serve.server import serve

        _route_library_logs()
        serve(cfg)


def run_export(cfg: DictConfig) -> None:
    """The body of `lmforge-export`."""
    with user_errors():
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from lmforge.export import export

        _route_library_logs()
        export(cfg)


def check_arguments(config_name: str) -> None:
    """Refuse unknown keys and options, and run directories that must not be written, before
    Hydra composes the config and creates a run directory (see lmforge.config.command_line)."""
    from lmforge.config.command_line import check_command_line

    with user_errors():
        check_command_line(config_name, sys.argv[1:])


def train_main() -> None:
    """`lmforge-train`: see conf/train.yaml."""
    check_arguments("train")
    hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")(
        run_training
    )()


def eval_main() -> None:
    """`lmforge-eval`: see conf/eval.yaml."""
    check_arguments("eval")
    hydra.main(config_path=str(config_dir()), config_name="eval", version_base="1.3")(
        run_evaluation
    )()


def predict_main() -> None:
    """`lmforge-predict`: see conf/predict.yaml."""
    check_arguments("predict")
    hydra.main(config_path=str(config_dir()), config_name="predict", version_base="1.3")(
        run_prediction
    )()


def serve_main() -> None:
    """`lmforge-serve`: see conf/serve.yaml."""
    check_arguments("serve")
    hydra.main(config_path=str(config_dir()), config_name="serve", version_base="1.3")(run_server)()


def export_main() -> None:
    """`lmforge-export`: see conf/export.yaml."""
    check_arguments("export")
    hydra.main(config_path=str(config_dir()), config_name="export", version_base="1.3")(
        run_export
    )()


def report_main(argv: list[str] | None = None) -> None:
    """`lmforge-report <run-or-sweep-dir> [--out DIR] [--metric KEY] [--mode max|min]`."""
    parser = argparse.ArgumentParser(
        prog="lmforge-report",
        description=(
            "Summarise finished runs: report.csv, report.md and plots (learning curves, the "
            "optimized metric against each swept hyperparameter, the best run's confusion "
            "matrix). Works on one run directory, a multirun or an Optuna sweep directory."
        ),
    )
    parser.add_argument("dir", help="a run directory or a directory of runs (multirun, sweep)")
    parser.add_argument("--out", help="where the report goes (default: <dir>/report)")
    parser.add_argument(
        "--metric",
        help="metric that sorts the runs, e.g. val/f1_macro or test/acc "
        "(default: the runs' optimized_metric)",
    )
    parser.add_argument(
        "--mode",
        choices=["max", "min"],
        help="whether higher or lower is better (default: the runs' optimized_mode)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from lmforge.reporting.report import build_report

    with user_errors():
        report = build_report(args.dir, args.out, args.metric, args.mode)
    for path in report.files:
        print(path)
