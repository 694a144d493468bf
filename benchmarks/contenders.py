"""Start one contender run in its own process and read back its figures.

Every contender runs as a child process of compare.py, so each pays its own imports and its
peak memory is its own (`os.wait4` returns the child's `ru_maxrss`). Times are measured from
the moment the parent starts the process:

- first optimizer step: the probe (benchmarks/probe.py) in every contender;
- start-up phases: the raw loop and the Trainer script mark them themselves; for lmforge they
  come from the timestamps of its log (`<run dir>/train.log`), see `lmforge_phases`;
- training throughput: training examples / the seconds from each epoch's start to its last
  batch's end (validation excluded), lmforge's own `train_samples_per_second` definition,
  measured the same way in the other two.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from run_spec import RunSpec

BENCH_DIR = Path(__file__).resolve().parent

# name -> (family, bf16): bf16 autocast or not; None: the framework's own default precision
# (lmforge's trainer.precision=auto; plain float32 is the default of the other two).
CONTENDERS: dict[str, tuple[str, bool | None]] = {
    "raw": ("raw", False),
    "raw-bf16": ("raw", True),
    "trainer": ("trainer", False),
    "trainer-bf16": ("trainer", True),
    "lmforge": ("lmforge", None),
    "lmforge-fp32": ("lmforge", False),
    "lmforge-bf16": ("lmforge", True),
}

LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[(\w+)\] - (.*)$")


@dataclass
class Settings:
    """The hyperparameters and environment every contender shares."""

    max_length: int
    batch_size: int
    eval_batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    gradient_clip: float
    epochs: int
    threads: int | None
    fused_raw_adamw: bool
    cache_dir: Path
    lmforge_overrides: list[str]


def child_env(settings: Settings) -> dict[str, str]:
    """The same thread counts, offline mode and caches for every contender."""
    env = dict(os.environ)
    if settings.threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            env[name] = str(settings.threads)
    # lmforge sets this itself; the others get the same, so tokenization runs alike.
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_CACHE"] = str(settings.cache_dir / "hf-datasets")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def warmup_steps(settings: Settings, train_rows: int) -> int:
    """Warmup steps as lmforge computes them: round(ratio * optimizer steps of the run)."""
    steps = settings.epochs * math.ceil(train_rows / settings.batch_size)
    return round(settings.warmup_ratio * steps)


def lmforge_command(spec: RunSpec, settings: Settings) -> list[str]:
    """`lmforge-train` with the shared settings as overrides, run through the step probe.

    Early stopping is off and the best-checkpoint callback is dropped, so the test split is
    scored on the final weights like the other contenders (the epoch-end `last.ckpt` stays:
    part of a normal run, outside the throughput window). No before-training evaluation or
    baselines: the others do neither.
    """
    overrides = [
        f"data.train_file={spec.train_file}",
        f"data.validation_file={spec.validation_file}",
        f"data.test_file={spec.test_file}",
        f"data.max_length={spec.max_length}",
        f"data.batch_size={spec.batch_size}",
        f"data.eval_batch_size={spec.eval_batch_size}",
        f"data.group_by_length={str(spec.group_by_length).lower()}",
        f"optimizer.lr={spec.lr}",
        f"optimizer.weight_decay={spec.weight_decay}",
        f"scheduler.warmup_ratio={spec.warmup_ratio}",
        f"trainer.gradient_clip_val={spec.gradient_clip}",
        f"trainer.max_epochs={spec.epochs}",
        *precision_overrides(spec.contender),
        f"seed={spec.seed}",
        "compare.baselines=[]",
        "evaluate_before=false",
        "~callbacks.early_stopping",
        "~callbacks.model_checkpoint",
        f"paths.cache_dir={settings.cache_dir / 'lmforge'}",
        f"hydra.run.dir={spec.run_dir}",
        *settings.lmforge_overrides,
    ]
    probe = [sys.executable, str(BENCH_DIR / "probe.py"), spec.probe_file, "--"]
    return [*probe, "lmforge-train", *overrides]


def precision_overrides(contender: str) -> list[str]:
    """`lmforge` runs with lmforge's default precision; `-fp32` and `-bf16` set it."""
    _, bf16 = CONTENDERS[contender]
    if bf16 is None:
        return []
    return [f"trainer.precision={'bf16-mixed' if bf16 else '32-true'}"]


def command(spec: RunSpec, settings: Settings, spec_path: Path) -> list[str]:
    family, _ = CONTENDERS[spec.contender]
    if family == "lmforge":
        return lmforge_command(spec, settings)
    script = "raw_loop.py" if family == "raw" else "hf_trainer.py"
    return [sys.executable, str(BENCH_DIR / script), str(spec_path)]


def run_process(argv: list[str], env: dict[str, str], log_path: Path) -> dict[str, Any]:
    """Run `argv` to its end; its start time, wall seconds, exit code and peak RSS (MiB)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        started = time.time()
        clock = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - clock
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "started": started,
        "wall_seconds": wall,
        "exit_code": process.returncode,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def run_contender(spec: RunSpec, settings: Settings) -> dict[str, Any]:
    """Run one contender with `spec`; one flat record of its figures (see compare.py)."""
    run_dir = Path(spec.run_dir)
    # Not the run directory itself: lmforge refuses a hydra.run.dir that holds files.
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir.parent / f"{run_dir.name}.spec.json"
    spec.write(spec_path)
    load_before = os.getloadavg()[0]
    process = run_process(
        command(spec, settings, spec_path),
        child_env(settings),
        run_dir.parent / f"{run_dir.name}.out",
    )
    record: dict[str, Any] = {
        "contender": spec.contender,
        "seed": spec.seed,
        "exit_code": process["exit_code"],
        "total_seconds": process["wall_seconds"],
        "peak_rss_mib": process["peak_rss_mib"],
        "load_average_before": load_before,
        "output": str(run_dir.parent / f"{run_dir.name}.out"),
    }
    probe = read_json(Path(spec.probe_file)) or {}
    first_step = probe.get("first_step")
    record["first_step_seconds"] = first_step - process["started"] if first_step else None
    record["optimizer_steps_seen"] = probe.get("steps")
    if process["exit_code"] != 0:
        record["error"] = _last_lines(Path(record["output"]))
        return record
    family, _ = CONTENDERS[spec.contender]
    if family == "lmforge":
        record.update(_lmforge_figures(run_dir, process["started"], probe))
    else:
        record.update(_script_figures(spec, process["started"], probe))
    return record


def _script_figures(spec: RunSpec, started: float, probe: dict[str, Any]) -> dict[str, Any]:
    result = read_json(Path(spec.result_file)) or {}
    marks = result.get("marks", {})
    order = ("imports_done", "data_ready", "model_ready")
    phases = _phases(started, [marks.get(name) for name in order], probe)
    samples, seconds = result.get("train_samples"), result.get("train_seconds")
    return {
        "samples_per_second": samples / seconds if samples and seconds else None,
        "train_samples": samples,
        "train_seconds": seconds,
        "test_accuracy": result.get("test_accuracy"),
        "phases": phases,
        "torch_threads": result.get("torch_threads"),
        "optimizer_steps": result.get("optimizer_steps"),
        "extra": {
            k: v
            for k, v in result.items()
            if k
            not in {
                "marks",
                "train_samples",
                "train_seconds",
                "test_accuracy",
                "torch_threads",
                "optimizer_steps",
            }
        },
    }


def _lmforge_figures(run_dir: Path, started: float, probe: dict[str, Any]) -> dict[str, Any]:
    metrics = read_json(run_dir / "metrics.json") or {}
    reproducibility = read_json(run_dir / "reproducibility.json") or {}
    phases, cache_hit = lmforge_phases(run_dir / "train.log", started, probe)
    speed = metrics.get("train_samples_per_second")
    epochs = metrics.get("epochs_completed") or 0
    samples = epochs * (metrics.get("data") or {}).get("train", 0)
    return {
        "samples_per_second": speed,
        "train_samples": samples,
        "train_seconds": samples / speed if speed else None,
        "test_accuracy": (metrics.get("test") or {}).get("test/acc"),
        "precision": metrics.get("precision"),
        "phases": phases,
        "tokenization_cache_hit": cache_hit,
        "torch_threads": (reproducibility.get("platform") or {}).get("torch_threads"),
        "optimizer_steps": metrics.get("global_step"),
        "extra": {
            "lmforge_wall_time_seconds": metrics.get("wall_time_seconds"),
            "lmforge_peak_rss_mib": (metrics.get("peak_memory") or {}).get("rss_megabytes"),
        },
    }


def lmforge_phases(
    log_path: Path, started: float, probe: dict[str, Any]
) -> tuple[dict[str, float | None], bool | None]:
    """lmforge's start-up, split by its log's timestamps (millisecond resolution):

    - imports: process start -> the first log line (Python, Hydra composing and checking the
      config, importing torch/Lightning/transformers, loading the tokenizer);
    - data: -> the last data-check line before the model is built (reading, tokenizing or
      loading the cached tokens, the data checks);
    - model: -> the "Parameters: ..." line (loading the pretrained model, the task head);
    - setup: -> the first forward pass in training mode (the trainer, the run's records,
      Lightning's fit set-up and sanity validation, the first batch), from the probe;
    - first_step: -> the end of the first optimizer step (forward, backward, step).

    Also whether tokenization hit the cache, read from the first "Tokenized data" line
    (metrics.json's `tokenization_cache_hit` is re-read during fit and says true either way).
    """
    lines = _log_lines(log_path)
    if not lines:
        return _phases(started, [None, None, None], probe), None
    first = lines[0][0]
    model_at = next((t for t, _, m in lines if m.startswith("Parameters:")), None)
    data_at = None
    for stamp, name, _ in lines:
        if model_at is not None and stamp > model_at:
            break
        if name.startswith("lmforge.data"):
            data_at = stamp
    cache_hit = next(
        ("cache hit" in m for _, n, m in lines if m.startswith("Tokenized data")), None
    )
    return _phases(started, [first, data_at, model_at], probe), cache_hit


def _phases(
    started: float, marks: list[float | None], probe: dict[str, Any]
) -> dict[str, float | None]:
    names = ("imports", "data", "model", "setup", "first_step")
    points = [started, *marks, probe.get("first_forward"), probe.get("first_step")]
    return {
        name: (points[i + 1] - points[i]) if points[i] and points[i + 1] else None
        for i, name in enumerate(names)
    }


def _log_lines(path: Path) -> list[tuple[float, str, str]]:
    if not path.is_file():
        return []
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        match = LOG_LINE.match(text)
        if match:
            # Hydra's log format: local time with milliseconds after a comma.
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            lines.append((stamp, match[2], match[4]))
    return lines


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_lines(path: Path, count: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-count:])
    except OSError:
        return ""


def time_cfg_job(env: dict[str, str], runs: int) -> list[float]:
    """Wall seconds of `lmforge-train --cfg job` (composing and printing the config), `runs`
    times: the start-up a config mistake costs."""
    seconds = []
    for _ in range(runs):
        clock = time.perf_counter()
        subprocess.run(["lmforge-train", "--cfg", "job"], env=env, check=True, capture_output=True)
        seconds.append(time.perf_counter() - clock)
    return seconds
