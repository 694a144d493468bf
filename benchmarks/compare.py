"""Compare lmforge with a plain PyTorch loop and the Hugging Face Trainer on the same job.

    python benchmarks/compare.py --shape long short --seeds 1 2 3 \\
        --contenders raw trainer lmforge lmforge-bf16 raw-bf16 --epochs 1

Every contender fine-tunes the embedded MiniLM on the same prepared CSVs (see shapes.py) with
the same batch size, AdamW settings, linear warmup and decay, max_length, epochs, seed,
gradient clipping and thread count, each in its own process. The tables (per run, per
contender, ratios, goals) are printed and written to benchmarks/results/<time>/summary.md and
summary.json; the runs' own files stay beside them. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from contenders import (
    CONTENDERS,
    Settings,
    child_env,
    lmforge_command,
    lmforge_phases,
    read_json,
    run_contender,
    run_process,
    time_cfg_job,
    warmup_steps,
)
from run_spec import RunSpec
from shapes import SHAPES, prepare_shape
from summary import aggregate, goals, render

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", nargs="+", choices=SHAPES, default=["long"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=list(CONTENDERS),
        default=["raw", "trainer", "lmforge", "lmforge-fp32", "lmforge-bf16", "raw-bf16"],
    )
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--gradient-clip", type=float, default=1.0)
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch intra-op threads (and OMP/MKL/RAYON_NUM_THREADS) of every contender; "
        "0 leaves each at its default (default: the CPUs this process may use)",
    )
    parser.add_argument("--limit-train", type=int, help="first N training examples only")
    parser.add_argument("--limit-validation", type=int, help="first N validation examples")
    parser.add_argument("--limit-test", type=int, help="first N test examples")
    parser.add_argument(
        "--raw-fused-adamw",
        action="store_true",
        help="the raw loop uses fused AdamW too (as lmforge and the Trainer do by default); "
        "off: torch.optim.AdamW as a user writes it",
    )
    parser.add_argument(
        "--lmforge-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra override for every lmforge run (repeatable), e.g. logger=none",
    )
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=3,
        help="extra lmforge runs stopped after one step, to time start-up on a tokenization "
        "cache hit (0: skip)",
    )
    parser.add_argument("--cfg-job-runs", type=int, default=3, help="0: skip")
    parser.add_argument(
        "--keep-cache",
        action="store_true",
        help="keep the tokenization caches of earlier benchmarks (default: start cold, so the "
        "first lmforge run of each seed tokenizes)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        max_length=args.max_length,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        gradient_clip=args.gradient_clip,
        epochs=args.epochs,
        threads=args.threads or None,
        fused_raw_adamw=args.raw_fused_adamw,
        cache_dir=args.out / "cache",
        lmforge_overrides=list(args.lmforge_override),
    )


def make_spec(
    contender: str,
    seed: int,
    data: dict[str, Any],
    settings: Settings,
    work_dir: Path,
) -> RunSpec:
    from lmforge.config.resources import embedded_model_path

    _, bf16 = CONTENDERS[contender]
    name = f"{data['shape']}-{contender}-seed{seed}"
    return RunSpec(
        contender=contender,
        train_file=data["files"]["train"],
        validation_file=data["files"]["validation"],
        test_file=data["files"]["test"],
        model_path=embedded_model_path(),
        max_length=settings.max_length,
        batch_size=settings.batch_size,
        eval_batch_size=settings.eval_batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_ratio=settings.warmup_ratio,
        warmup_steps=warmup_steps(settings, data["stats"]["train"]["rows"]),
        gradient_clip=settings.gradient_clip,
        epochs=settings.epochs,
        seed=seed,
        threads=settings.threads,
        bf16=bool(bf16),
        # Grouping by length only matters when lengths vary; the long shape has none.
        group_by_length=data["shape"] == "short",
        fused_adamw=settings.fused_raw_adamw,
        run_dir=str(work_dir / name),
        result_file=str(work_dir / f"{name}.result.json"),
        probe_file=str(work_dir / f"{name}.probe.json"),
    )


def measure_startup(
    data: dict[str, Any], seed: int, settings: Settings, work_dir: Path, runs: int
) -> list[dict[str, Any]]:
    """lmforge with the contender's settings, stopped after its first optimizer step
    (`trainer.max_steps=1`, no test): start-up only. The first run warms the cache if no
    earlier run did."""
    results = []
    for index in range(runs):
        spec = make_spec("lmforge", seed, data, settings, work_dir)
        name = f"startup-{index + 1}"
        spec.run_dir = str(work_dir / name)
        spec.probe_file = str(work_dir / f"{name}.probe.json")
        quick = replace(
            settings,
            lmforge_overrides=[*settings.lmforge_overrides, "+trainer.max_steps=1", "test=false"],
        )
        process = run_process(
            lmforge_command(spec, quick), child_env(settings), work_dir / f"{name}.out"
        )
        probe = read_json(Path(spec.probe_file)) or {}
        first = probe.get("first_step")
        phases, hit = lmforge_phases(Path(spec.run_dir) / "train.log", process["started"], probe)
        results.append(
            {
                "ok": process["exit_code"] == 0 and first is not None,
                "exit_code": process["exit_code"],
                "first_step_seconds": first - process["started"] if first else None,
                "phases": phases,
                "cache_hit": hit,
                "total_seconds": process["wall_seconds"],
            }
        )
        print(
            f"  start-up run {index + 1}: "
            f"{results[-1]['first_step_seconds'] or float('nan'):.2f} s to the first step "
            f"(cache {'hit' if hit else 'miss'})",
            flush=True,
        )
    return results


def machine_text(threads: int | None) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {threads or 'default'} threads per contender; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "transformers", "lightning", "datasets", "tokenizers", "lmforge")
    return {name: version(name) for name in names}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out: Path = args.out.resolve()
    work_dir = out / stamp
    work_dir.mkdir(parents=True, exist_ok=True)
    if not args.keep_cache:
        shutil.rmtree(settings.cache_dir, ignore_errors=True)
    limits = {
        "train": args.limit_train,
        "validation": args.limit_validation,
        "test": args.limit_test,
    }
    load_start = os.getloadavg()
    print(f"Results go to {work_dir}", flush=True)

    runs: list[dict[str, Any]] = []
    datasets = {}
    for shape in args.shape:
        data = prepare_shape(shape, args.max_length, out / "data", limits)
        datasets[shape] = data
        print(f"Data {shape}: {json.dumps(data['stats'])}", flush=True)
        # Seeds outside, contenders inside: a slow spell of the machine hits every contender;
        # the order rotates with each seed, so no contender always runs first or after another.
        for index, seed in enumerate(args.seeds):
            shift = index % len(args.contenders)
            for contender in args.contenders[shift:] + args.contenders[:shift]:
                spec = make_spec(contender, seed, data, settings, work_dir)
                print(f"  {shape} {contender} seed {seed} ...", end=" ", flush=True)
                record = {"shape": shape, **run_contender(spec, settings)}
                runs.append(record)
                if record["exit_code"] == 0:
                    print(
                        f"{record.get('samples_per_second') or float('nan'):.1f} samples/s, "
                        f"acc {record.get('test_accuracy') or float('nan'):.4f}, "
                        f"{record['total_seconds']:.0f} s",
                        flush=True,
                    )
                else:
                    print(f"FAILED (exit {record['exit_code']}), see {record['output']}")
                    print(record.get("error", ""), flush=True)

    startup = []
    if args.startup_runs:
        print("lmforge start-up on a tokenization cache hit:", flush=True)
        first_shape = args.shape[0]
        startup = measure_startup(
            datasets[first_shape], args.seeds[0], settings, work_dir, args.startup_runs
        )
    cfg_job = time_cfg_job(child_env(settings), args.cfg_job_runs) if args.cfg_job_runs else []

    table = aggregate(runs)
    goal_rows = goals(table, cfg_job, startup)
    settings_text = (
        f"max_length {settings.max_length}, batch {settings.batch_size} (eval "
        f"{settings.eval_batch_size}), AdamW lr {settings.lr} weight decay "
        f"{settings.weight_decay} (none on biases/LayerNorm), linear schedule with warmup "
        f"ratio {settings.warmup_ratio}, gradient clip {settings.gradient_clip}, "
        f"{settings.epochs} epoch(s), seeds {args.seeds}, raw AdamW "
        f"{'fused' if settings.fused_raw_adamw else 'torch default (not fused)'}"
        + "".join(
            f"; {shape} data: {d['stats']['train']['rows']} train / "
            f"{d['stats']['test']['rows']} test rows, train tokens median "
            f"{d['stats']['train']['tokens_median']}"
            for shape, d in datasets.items()
        )
    )
    meta = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "settings_text": settings_text,
        "machine": machine_text(settings.threads),
        "load_start": " ".join(f"{v:.2f}" for v in load_start),
        "load_end": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    report = render(meta, runs, table, goal_rows, cfg_job, startup)
    print()
    print(report)
    (work_dir / "summary.md").write_text(report)
    summary = {
        "meta": meta,
        "versions": _versions(),
        "settings": {**asdict(settings), "cache_dir": str(settings.cache_dir)},
        "data": datasets,
        "runs": runs,
        "per_contender": [
            {"shape": shape, "contender": contender, **values}
            for (shape, contender), values in sorted(table.items())
        ],
        "goals": goal_rows,
        "cfg_job_seconds": cfg_job,
        "startup": startup,
        "startup_median_hit_seconds": statistics.median(
            [s["first_step_seconds"] for s in startup if s["ok"] and s["cache_hit"]]
        )
        if any(s["ok"] and s["cache_hit"] for s in startup)
        else None,
    }
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"Written: {work_dir / 'summary.md'} and summary.json")
    return 1 if any(r["exit_code"] != 0 for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
