"""Tables of a benchmark: per run, per contender (mean and spread over seeds), the ratios
against the goals, and lmforge's start-up; rendered as Markdown (printed and written)."""

from __future__ import annotations

import statistics
from typing import Any

PHASES = ("imports", "data", "model", "setup", "first_step")


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (shape, contender): means and spreads over the successful seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["shape"], run["contender"]), []).append(run)
    table = {}
    for key, members in groups.items():
        ok = [r for r in members if r["exit_code"] == 0]
        speed = mean_sd([r.get("samples_per_second") for r in ok])
        accuracy = mean_sd([r.get("test_accuracy") for r in ok])
        table[key] = {
            "runs": len(members),
            "failed": len(members) - len(ok),
            "samples_per_second": speed[0],
            "samples_per_second_sd": speed[1],
            "test_accuracy": accuracy[0],
            "test_accuracy_sd": accuracy[1],
            "first_step_seconds": mean_sd([r.get("first_step_seconds") for r in ok])[0],
            "total_seconds": mean_sd([r.get("total_seconds") for r in ok])[0],
            "peak_rss_mib": max((r["peak_rss_mib"] for r in ok), default=None),
        }
    return table


def _ratio(table, shape: str, top: str, bottom: str) -> float | None:
    a, b = table.get((shape, top)), table.get((shape, bottom))
    if not a or not b or not a["samples_per_second"] or not b["samples_per_second"]:
        return None
    return a["samples_per_second"] / b["samples_per_second"]


def goals(
    table: dict[tuple[str, str], dict[str, Any]],
    cfg_job_seconds: list[float],
    startup: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Each goal with its measured value and verdict (None: not measured in this benchmark)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, passed: bool | None, note: str = ""):
        rows.append(
            {"goal": name, "value": value, "target": target, "passed": passed, "note": note}
        )

    shapes = sorted({shape for shape, _ in table})
    for shape in shapes:
        need = 1.0 if shape == "long" else 1.3
        r = _ratio(table, shape, "lmforge", "raw")
        add(f"{shape}: lmforge / raw samples/s", r, f">= {need}x", None if r is None else r >= need)
        r = _ratio(table, shape, "lmforge", "trainer")
        add(f"{shape}: lmforge / Trainer samples/s", r, ">= 1.1x", None if r is None else r >= 1.1)
        for mine, theirs in (("lmforge-fp32", "trainer"), ("lmforge-bf16", "trainer-bf16")):
            r = _ratio(table, shape, mine, theirs)
            add(
                f"{shape}: {mine} / {theirs} samples/s (matched arithmetic)",
                r,
                ">= 1.0x",
                None if r is None else r >= 1.0,
            )
        r = _ratio(table, shape, "lmforge-bf16", "raw")
        add(
            f"{shape}: lmforge-bf16 / raw (fp32) samples/s",
            r,
            ">= 1.8x",
            None if r is None else r >= 1.8,
        )
        mine = table.get((shape, "lmforge"))
        others = [table.get((shape, c)) for c in ("raw", "trainer")]
        others = [o for o in others if o and o["test_accuracy"] is not None]
        if mine and mine["test_accuracy"] is not None and others:
            best = max(others, key=lambda o: o["test_accuracy"])
            spread = best["test_accuracy_sd"] or 0.0
            gap = mine["test_accuracy"] - best["test_accuracy"]
            note = "" if best["test_accuracy_sd"] is not None else "one seed: no spread"
            add(
                f"{shape}: lmforge accuracy - best of raw/Trainer",
                gap,
                f">= -{spread:.4f} (the better one's seed sd)",
                gap >= -spread,
                note,
            )
        else:
            add(f"{shape}: lmforge accuracy - best of raw/Trainer", None, ">= -sd", None)
    best_cfg = min(cfg_job_seconds) if cfg_job_seconds else None
    add(
        "lmforge-train --cfg job, best of runs (s)",
        best_cfg,
        "< 1 s",
        None if best_cfg is None else best_cfg < 1.0,
    )
    hits = [s["first_step_seconds"] for s in startup if s.get("cache_hit") and s.get("ok")]
    median_hit = statistics.median(hits) if hits else None
    add(
        "lmforge start-up to the first step, cache hit, median (s)",
        median_hit,
        "< 10 s",
        None if median_hit is None else median_hit < 10.0,
        f"{len(hits)} run(s) with a cache hit" if startup else "not measured",
    )
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, sd: float | None, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _phases_text(phases: dict[str, float | None] | None) -> str:
    if not phases:
        return "-"
    return " + ".join(_fmt(phases.get(name)) for name in PHASES)


def render(
    meta: dict[str, Any],
    runs: list[dict[str, Any]],
    table: dict[tuple[str, str], dict[str, Any]],
    goal_rows: list[dict[str, Any]],
    cfg_job_seconds: list[float],
    startup: list[dict[str, Any]],
) -> str:
    """The whole report as Markdown."""
    parts = [
        "# lmforge vs a plain PyTorch loop vs the Hugging Face Trainer",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Settings: {meta['settings_text']}",
        "",
        f"Machine: {meta['machine']}; load average at start {meta['load_start']}, "
        f"at end {meta['load_end']}.",
        "",
        "## Runs",
        "",
        "samples/s: training examples / seconds from each epoch's start to its last step "
        "(validation excluded). to 1st step: process start to the end of the first optimizer "
        "step, split as imports + data + model + setup (to the first training forward) + the "
        "first step itself. RSS: the process's peak.",
        "",
    ]
    run_rows = []
    for r in runs:
        note = []
        if r.get("tokenization_cache_hit") is not None:
            note.append("cache hit" if r["tokenization_cache_hit"] else "cache miss")
        if r["exit_code"] != 0:
            note.append(f"FAILED (exit {r['exit_code']})")
        run_rows.append(
            [
                r["shape"],
                r["contender"],
                str(r["seed"]),
                _fmt(r.get("samples_per_second")),
                _fmt(r.get("train_seconds")),
                _fmt(r.get("first_step_seconds")),
                _phases_text(r.get("phases")),
                _fmt(r.get("total_seconds")),
                _fmt(r.get("peak_rss_mib"), 0),
                _fmt(r.get("test_accuracy"), 4),
                _fmt(r.get("load_average_before"), 2),
                ", ".join(note),
            ]
        )
    parts.append(
        _md(
            [
                "shape",
                "contender",
                "seed",
                "samples/s",
                "train s",
                "to 1st step s",
                "imports + data + model + setup + 1st step s",
                "total s",
                "peak RSS MiB",
                "test acc",
                "load avg",
                "note",
            ],
            run_rows,
        )
    )
    parts += ["", "## Per contender (mean ± sd over seeds)", ""]
    agg_rows = [
        [
            shape,
            contender,
            f"{v['runs'] - v['failed']}/{v['runs']}",
            _pm(v["samples_per_second"], v["samples_per_second_sd"], 1),
            _fmt(v["first_step_seconds"]),
            _fmt(v["total_seconds"]),
            _fmt(v["peak_rss_mib"], 0),
            _pm(v["test_accuracy"], v["test_accuracy_sd"], 4),
        ]
        for (shape, contender), v in sorted(table.items())
    ]
    parts.append(
        _md(
            [
                "shape",
                "contender",
                "ok runs",
                "samples/s",
                "to 1st step s",
                "total s",
                "peak RSS MiB",
                "test acc",
            ],
            agg_rows,
        )
    )
    ratio_rows = []
    for shape in sorted({s for s, _ in table}):
        for top, bottom in (
            ("lmforge", "raw"),
            ("lmforge", "trainer"),
            ("lmforge-fp32", "trainer"),
            ("lmforge-bf16", "trainer-bf16"),
            ("lmforge-bf16", "raw"),
            ("lmforge-bf16", "raw-bf16"),
            ("raw-bf16", "raw"),
            ("trainer", "raw"),
        ):
            r = _ratio(table, shape, top, bottom)
            if r is not None:
                ratio_rows.append([shape, f"{top} / {bottom}", f"{r:.2f}x"])
    if ratio_rows:
        parts += ["", "## Samples/s ratios (means over seeds)", ""]
        parts.append(_md(["shape", "ratio", "value"], ratio_rows))
    if startup:
        parts += [
            "",
            "## lmforge start-up (to the end of the first optimizer step)",
            "",
            "The lmforge contender's settings with `+trainer.max_steps=1 test=false`; phases from "
            "its log timestamps.",
            "",
        ]
        parts.append(
            _md(
                [
                    "run",
                    "tokenization cache",
                    "to 1st step s",
                    "imports + data + model + setup + 1st step s",
                ],
                [
                    [
                        str(i + 1),
                        "hit" if s.get("cache_hit") else "miss",
                        _fmt(s.get("first_step_seconds"), 2),
                        _phases_text(s.get("phases")),
                    ]
                    for i, s in enumerate(startup)
                ],
            )
        )
    if cfg_job_seconds:
        parts += [
            "",
            "`lmforge-train --cfg job`: " + ", ".join(f"{s:.2f} s" for s in cfg_job_seconds),
        ]
    parts += ["", "## Goals", ""]
    verdict = {True: "PASS", False: "FAIL", None: "not measured"}
    parts.append(
        _md(
            ["goal", "measured", "target", "verdict", "note"],
            [
                [
                    g["goal"],
                    _fmt(g["value"], 3 if "accuracy" in g["goal"] else 2),
                    g["target"],
                    verdict[g["passed"]],
                    g["note"],
                ]
                for g in goal_rows
            ],
        )
    )
    return "\n".join(parts) + "\n"
