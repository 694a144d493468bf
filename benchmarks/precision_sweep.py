"""Which precision is fastest, and safe, at every batch shape: the sweep behind the default.

    python benchmarks/precision_sweep.py            # the whole sweep (about 2.5 h on 2 quiet cores)
    python benchmarks/precision_sweep.py --batch-sizes 16 --repeats 1 --accuracy-seeds 1 \\
        --families                                  # a quick look (about 10 min)

Three parts, one table each, printed and written to benchmarks/results/sweep-<time>/:

1. Speed: lmforge on the `long` and `short` shapes (see shapes.py) at every batch size, one
   run per precision variant, repeated with the variants in a rotated order each time (a slow
   spell of the machine then hits every variant): training samples/s (median and range over
   the repeats), peak RSS, the ratio to plain float32. At the goal batch sizes also lmforge's
   defaults and the Hugging Face Trainer's (plain float32, and bf16=True).
2. Accuracy: the same variants on the full data at one batch size, over seeds: test accuracy,
   mean and standard deviation.
3. Other families: NER (entity F1) and causal LM (perplexity) on the shipped experiments, over
   seeds, plain float32 against lmforge's default.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from compare import RESULTS_DIR, make_spec, settings_from
from contenders import child_env, precision_overrides, read_json, run_contender, run_process
from shapes import SHAPES, prepare_shape

# Sweep variants: (contender, extra lmforge overrides). `default` is what a user gets.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "fp32": ("lmforge-fp32", ["float32_matmul_precision=highest"]),
    "medium": ("lmforge-fp32", ["float32_matmul_precision=medium"]),
    # The earlier default on CPUs with bfloat16 instructions: medium and padding to 8.
    "medium-pad8": (
        "lmforge-fp32",
        ["float32_matmul_precision=medium", "data.pad_to_multiple_of=8"],
    ),
    "bf16-mixed": ("lmforge-bf16", []),
    "default": ("lmforge", []),
    "trainer": ("trainer", []),
    "trainer-bf16": ("trainer-bf16", []),
}
# The other families: experiment, the metric read from metrics.json, and extra overrides.
FAMILIES: dict[str, tuple[str, str, list[str]]] = {
    "ner": ("debian_ner_minilm", "test/f1", ["trainer.max_epochs=3"]),
    "causal_lm": ("debian_lm_gpt2_scratch", "test/perplexity", ["trainer.max_epochs=1"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", nargs="+", choices=SHAPES, default=["long", "short"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 16, 32, 64])
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["fp32", "medium", "medium-pad8", "bf16-mixed"],
    )
    parser.add_argument("--goal-batch-sizes", nargs="*", type=int, default=[16, 32])
    parser.add_argument(
        "--goal-variants",
        nargs="*",
        choices=list(VARIANTS),
        default=["default", "trainer", "trainer-bf16"],
        help="run at the goal batch sizes only, besides --variants",
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--limit-train", type=int, default=512, help="speed part only")
    parser.add_argument("--limit-validation", type=int, default=64, help="speed part only")
    parser.add_argument("--limit-test", type=int, default=64, help="speed part only")
    parser.add_argument("--accuracy-batch-size", type=int, default=32)
    parser.add_argument("--accuracy-seeds", nargs="*", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--accuracy-variants",
        nargs="+",
        choices=list(VARIANTS),
        default=["fp32", "medium", "bf16-mixed"],
    )
    parser.add_argument("--families", nargs="*", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--family-variants", nargs="+", default=["fp32", "default"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def compare_args(args: argparse.Namespace, batch_size: int) -> argparse.Namespace:
    """The shared settings of compare.py, at this batch size."""
    from compare import parse_args as compare_parse

    shared = compare_parse([])
    shared.batch_size = batch_size
    shared.max_length = args.max_length
    shared.epochs = args.epochs
    shared.threads = args.threads
    shared.out = args.out
    return shared


def run_variant(
    variant: str, shape_data: dict, batch_size: int, seed: int, args, work_dir: Path, tag: str
) -> dict[str, Any]:
    contender, extra = VARIANTS[variant]
    settings = settings_from(compare_args(args, batch_size))
    settings = replace(settings, lmforge_overrides=list(extra))
    spec = make_spec(contender, seed, shape_data, settings, work_dir)
    name = f"{tag}-{shape_data['shape']}-b{batch_size}-{variant}-seed{seed}"
    spec.run_dir = str(work_dir / name)
    spec.result_file = str(work_dir / f"{name}.result.json")
    spec.probe_file = str(work_dir / f"{name}.probe.json")
    record = run_contender(spec, settings)
    record.update(
        {"variant": variant, "shape": shape_data["shape"], "batch_size": batch_size, "tag": tag}
    )
    ok = record["exit_code"] == 0
    print(
        f"  {tag} {shape_data['shape']:5} batch {batch_size:3} {variant:12} seed {seed}: "
        + (
            f"{record.get('samples_per_second') or float('nan'):6.1f} samples/s, "
            f"RSS {record['peak_rss_mib']:.0f} MiB, acc {record.get('test_accuracy') or 0:.4f}"
            + (f" ({record['precision']})" if record.get("precision") else "")
            if ok
            else f"FAILED, see {record['output']}"
        ),
        flush=True,
    )
    return record


def speed_part(args, work_dir: Path) -> list[dict[str, Any]]:
    limits = {
        "train": args.limit_train,
        "validation": args.limit_validation,
        "test": args.limit_test,
    }
    data = {s: prepare_shape(s, args.max_length, args.out / "data", limits) for s in args.shape}
    runs = []
    for repeat in range(args.repeats):
        for shape in args.shape:
            for batch in args.batch_sizes:
                variants = list(args.variants)
                if batch in args.goal_batch_sizes:
                    variants += [v for v in args.goal_variants if v not in variants]
                # Rotated per repeat, so no variant always runs first or last.
                shift = repeat % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    runs.append(
                        run_variant(variant, data[shape], batch, 1, args, work_dir, f"r{repeat}")
                    )
    return runs


def accuracy_part(args, work_dir: Path) -> list[dict[str, Any]]:
    limits = {"train": None, "validation": None, "test": None}
    data = {s: prepare_shape(s, args.max_length, args.out / "data", limits) for s in args.shape}
    runs = []
    for seed in args.accuracy_seeds:
        for shape in args.shape:
            for variant in args.accuracy_variants:
                runs.append(
                    run_variant(
                        variant, data[shape], args.accuracy_batch_size, seed, args, work_dir, "acc"
                    )
                )
    return runs


def family_part(args, work_dir: Path) -> list[dict[str, Any]]:
    settings = settings_from(compare_args(args, 16))
    runs = []
    for seed in args.accuracy_seeds:
        for family in args.families:
            experiment, metric, extra = FAMILIES[family]
            for variant in args.family_variants:
                contender, variant_extra = VARIANTS[variant]
                run_dir = work_dir / f"family-{family}-{variant}-seed{seed}"
                command = [
                    "lmforge-train",
                    f"experiment={experiment}",
                    f"seed={seed}",
                    *extra,
                    *precision_overrides(contender),
                    *variant_extra,
                    "evaluate_before=false",
                    "compare.baselines=[]",
                    f"paths.cache_dir={settings.cache_dir / 'lmforge'}",
                    f"hydra.run.dir={run_dir}",
                ]
                process = run_process(
                    command, child_env(settings), work_dir / f"{run_dir.name}.out"
                )
                metrics = read_json(run_dir / "metrics.json") or {}
                record = {
                    "family": family,
                    "variant": variant,
                    "seed": seed,
                    "exit_code": process["exit_code"],
                    "peak_rss_mib": process["peak_rss_mib"],
                    "metric": metric,
                    "value": (metrics.get("test") or {}).get(metric),
                    "samples_per_second": metrics.get("train_samples_per_second"),
                    "precision": metrics.get("precision"),
                }
                print(
                    f"  {family:9} {variant:8} seed {seed}: {metric} {record['value']}, "
                    f"{record['samples_per_second'] or float('nan'):.1f} samples/s "
                    f"({record['precision']})",
                    flush=True,
                )
                runs.append(record)
    return runs


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _mean_sd(values: list[float], digits: int = 4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{sd}"


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def speed_table(runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if r["exit_code"] == 0]
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    rows = []
    for shape in dict.fromkeys(r["shape"] for r in ok):
        for batch in sorted({r["batch_size"] for r in ok if r["shape"] == shape}):
            cell = {}
            for variant in variants:
                mine = [
                    r
                    for r in ok
                    if (r["shape"], r["batch_size"], r["variant"]) == (shape, batch, variant)
                ]
                if mine:
                    cell[variant] = mine
            base = statistics.median([r["samples_per_second"] for r in cell.get("fp32", [])] or [0])
            row = [shape, str(batch)]
            for variant in variants:
                mine = cell.get(variant)
                if not mine:
                    row.append("")
                    continue
                speeds = [r["samples_per_second"] for r in mine]
                rss = max(r["peak_rss_mib"] for r in mine)
                ratio = f", {statistics.median(speeds) / base:.2f}x" if base else ""
                row.append(f"{_spread(speeds)}{ratio}; {rss:.0f} MiB")
            rows.append(row)
    header = ["shape", "batch", *variants]
    return (
        "Training samples/s, median (range) over the repeats, the ratio to fp32, peak RSS:\n\n"
        + _md(header, rows)
    )


def goal_table(runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if r["exit_code"] == 0]

    def median(shape: str, batch: int, variant: str) -> float | None:
        speeds = [
            r["samples_per_second"]
            for r in ok
            if (r["shape"], r["batch_size"], r["variant"]) == (shape, batch, variant)
        ]
        return statistics.median(speeds) if speeds else None

    rows = []
    pairs = (
        ("default", "trainer", ">= 1.1x"),
        ("default", "fp32", ">= 1.0x"),
        ("fp32", "trainer", ">= 1.0x"),
        ("bf16-mixed", "trainer-bf16", ">= 1.0x"),
    )
    for shape in dict.fromkeys(r["shape"] for r in ok):
        for batch in sorted({r["batch_size"] for r in ok if r["shape"] == shape}):
            for top, bottom, target in pairs:
                a, b = median(shape, batch, top), median(shape, batch, bottom)
                if a and b:
                    need = float(target.split()[1].rstrip("x"))
                    verdict = "PASS" if a / b >= need else "FAIL"
                    rows.append(
                        [shape, str(batch), f"{top} / {bottom}", f"{a / b:.2f}x", target, verdict]
                    )
    return "Goals (medians over the repeats):\n\n" + _md(
        ["shape", "batch", "ratio", "value", "target", "verdict"], rows
    )


def accuracy_table(runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if r["exit_code"] == 0]
    rows = []
    for shape in dict.fromkeys(r["shape"] for r in ok):
        for variant in dict.fromkeys(r["variant"] for r in ok):
            mine = [r for r in ok if (r["shape"], r["variant"]) == (shape, variant)]
            if mine:
                rows.append(
                    [
                        shape,
                        variant,
                        str(len(mine)),
                        _mean_sd([r["test_accuracy"] for r in mine]),
                        _mean_sd([r["samples_per_second"] for r in mine], 1),
                    ]
                )
    return "Test accuracy over seeds (full data):\n\n" + _md(
        ["shape", "variant", "seeds", "test acc", "samples/s"], rows
    )


def family_table(runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if r["exit_code"] == 0]
    rows = []
    for family in dict.fromkeys(r["family"] for r in ok):
        for variant in dict.fromkeys(r["variant"] for r in ok):
            mine = [r for r in ok if (r["family"], r["variant"]) == (family, variant)]
            if mine:
                rows.append(
                    [
                        family,
                        variant,
                        mine[0]["precision"] or "-",
                        str(len(mine)),
                        f"{mine[0]['metric']} {_mean_sd([r['value'] for r in mine])}",
                        _mean_sd([r["samples_per_second"] for r in mine], 1),
                        f"{max(r['peak_rss_mib'] for r in mine):.0f}",
                    ]
                )
    return "Other task families over seeds:\n\n" + _md(
        ["family", "variant", "precision", "seeds", "test metric", "samples/s", "peak RSS MiB"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = (args.out / f"sweep-{time.strftime('%Y-%m-%d_%H-%M-%S')}").resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    print(f"Results go to {work_dir}", flush=True)
    torch_flags = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; print(torch.__version__, torch.cpu._is_avx512_bf16_supported())",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    parts = [
        "# Precision sweep",
        "",
        f"`{shlex.join([sys.executable, *sys.argv])}`; torch, CPU has AVX512-BF16: {torch_flags}; "
        f"{args.threads} threads; load average at the start {os.getloadavg()[0]:.2f}.",
    ]
    speed = speed_part(args, work_dir) if args.repeats else []
    if speed:
        parts += ["", speed_table(speed), "", goal_table(speed)]
    accuracy = accuracy_part(args, work_dir) if args.accuracy_seeds else []
    if accuracy:
        parts += ["", accuracy_table(accuracy)]
    families = family_part(args, work_dir) if args.families and args.accuracy_seeds else []
    if families:
        parts += ["", family_table(families)]
    parts += ["", f"Load average at the end: {os.getloadavg()[0]:.2f}."]
    report = "\n".join(parts) + "\n"
    print("\n" + report)
    (work_dir / "summary.md").write_text(report)
    (work_dir / "summary.json").write_text(
        json.dumps({"speed": speed, "accuracy": accuracy, "families": families}, indent=2) + "\n"
    )
    failed = [r for r in speed + accuracy + families if r["exit_code"] != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
