"""The before/after comparison of a run: every task metric of the untouched start and of the
best checkpoint, their change, the baselines beside them, and (classification) the test
examples whose prediction flipped. Returned for metrics.json and written as comparison.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lmforge.evaluation.forward import forward_split
from lmforge.reporting.formatting import format_number, lower_is_better, markdown_cell
from lmforge.runtime.rundir import PREDICTIONS_FILE, write_new

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch

    from lmforge.data.datamodule import TextDataModule
    from lmforge.tasks.base import TaskModule

log = logging.getLogger(__name__)

COMPARISON_FILE = "comparison.md"
# Longest text shown for a flipped example in comparison.md (metrics.json keeps it whole).
SHOWN_TEXT = 160
# A value the table has no number for.
MISSING = "—"


# ----- the start -------------------------------------------------------------------------------
def describe_start(start: dict[str, Any]) -> dict[str, Any]:
    """What the model started from (`TaskModule.start`) and what beating it means."""
    fresh = start.get("fresh") or bool(start.get("newly_initialised"))
    note = (
        "Parts of the starting model are randomly initialised, so it scores near chance and "
        "beating it proves little; compare with real baselines."
        if fresh
        else "The starting model is fully pretrained: this is a real before/after comparison."
    )
    return {"start": dict(start), "note": note}


def start_label(start: dict[str, Any]) -> str:
    """A column label for the start: `pretrained X, fresh classifier`, `checkpoint Y`, ..."""
    label = str(start.get("from") or "the starting model")
    fresh = sorted({name.split(".")[0] for name in start.get("newly_initialised") or []})
    return label + (f", fresh {' + '.join(fresh)}" if fresh else "")


def before_summary(before: dict[str, Any] | None) -> dict[str, Any] | None:
    """The before-training record without its per-example predictions (for metrics.json)."""
    return None if before is None else {k: v for k, v in before.items() if k != "predictions"}


# ----- per-example predictions ------------------------------------------------------------------
def predict_labels(
    module: TaskModule,
    datamodule: TextDataModule,
    split: str = "test",
    device: torch.device | str | None = None,
) -> list[Any] | None:
    """The module's predicted label id per example of `split`, in row order (multi-label: the
    list of predicted ids); None for tasks without one label per example. The one function
    behind both the 'before' and the 'after' predictions."""
    if not module.labels_per_example:
        return None

    def predict(batch: dict) -> list[Any]:
        # A family with one label per example gives a list for every batch.
        return cast("list[Any]", module.predicted_labels(module.forward_loss(batch)[1]))

    return [p for batch in forward_split(module, datamodule, split, predict, device) for p in batch]


def run_test_with_predictions(
    trainer: pl.Trainer, module: TaskModule, datamodule: TextDataModule, **options: Any
) -> tuple[dict[str, float], list[Any] | None]:
    """`trainer.test` (options: e.g. `ckpt_path`), and the predicted label per test row taken
    from that same pass: the metrics and the predictions need one forward over test, not two.

    The predictions are None for tasks without one label per row, or when the pass did not
    cover every row exactly once (`limit_test_batches`, several processes): callers then use
    `predict_labels`.
    """
    module.recorded_test_predictions = {}
    try:
        results = trainer.test(module, datamodule=datamodule, verbose=False, **options)
        recorded = module.recorded_test_predictions
    finally:
        module.recorded_test_predictions = None
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.world_size > 1 or any(labels is None for labels in recorded.values()):
        return metrics, None
    batches = list(cast("Iterable[list[int]]", datamodule.test_dataloader().batch_sampler))
    if len(recorded) != len(batches):
        return metrics, None
    predicted: list[Any] = [None] * len(datamodule.splits["test"])
    for index, rows in enumerate(batches):
        # No batch's labels are None here (checked above).
        for row, label in zip(rows, cast("list[Any]", recorded[index]), strict=True):
            predicted[row] = label
    return metrics, predicted


def _label_name(label: Any, label_names: list[str]) -> str:
    """A label id's name; a multi-label list of ids as names joined by '|'."""
    if isinstance(label, list):
        return "|".join(label_names[i] for i in label)
    return label_names[label]


def flipped_examples(
    texts: list[str],
    gold: list[Any],
    before: list[Any],
    after: list[Any],
    label_names: list[str],
    limit: int,
) -> dict[str, Any]:
    """Counts of examples by (right before?, right after?) and the first `limit` examples of
    each flip direction: text, gold label, before and after prediction."""

    def name(label: Any) -> str:
        return _label_name(label, label_names)

    groups: dict[str, list[dict[str, Any]]] = {
        "wrong_to_right": [],
        "right_to_wrong": [],
        "both_right": [],
        "both_wrong": [],
    }
    for row, (text, g, b, a) in enumerate(zip(texts, gold, before, after, strict=True)):
        right_before, right_after = b == g, a == g
        key = (
            ("both_right" if right_after else "right_to_wrong")
            if right_before
            else ("wrong_to_right" if right_after else "both_wrong")
        )
        groups[key].append(
            {"row": row, "text": text, "gold": name(g), "before": name(b), "after": name(a)}
        )
    return {
        "counts": {key: len(rows) for key, rows in groups.items()},
        "examples": {key: groups[key][:limit] for key in ("wrong_to_right", "right_to_wrong")},
    }


# ----- the table ----------------------------------------------------------------------------
def comparison_rows(
    before: dict[str, float] | None,
    after: dict[str, float],
    baselines: dict[str, dict[str, float]],
) -> dict[str, dict[str, Any]]:
    """One row per metric key (test rows first, then validation): before, after, change
    (after - before), change in percent of |before|, whether it improved (lower is better for
    losses and perplexity), and each baseline's value. A missing value is None."""
    keys: list[str] = []
    for source in (after, before or {}, *baselines.values()):
        keys += [k for k in source if k not in keys]
    keys.sort(key=lambda k: not k.startswith("test/"))  # stable: test first, then the rest
    rows = {}
    for key in keys:
        higher = not lower_is_better(key)
        row: dict[str, Any] = {"higher_is_better": higher}
        old, new = (before or {}).get(key), after.get(key)
        if before is not None:
            change = None if old is None or new is None else new - old
            row.update(
                before=old,
                after=new,
                change=change,
                change_percent=(
                    # `old is None` implies `change is None`; the test only narrows the type.
                    None if change is None or old is None or old == 0 else 100 * change / abs(old)
                ),
                improved=None if change is None else (change > 0 if higher else change < 0),
            )
        else:
            row["after"] = new
        for name, values in baselines.items():
            row[name] = values.get(key)
        rows[key] = row
    return rows


def verdict(
    rows: dict[str, dict[str, Any]], baselines: list[str], optimized_metric: str
) -> str | None:
    """One line on the run's optimized metric on test (its validation key when test lacks
    it): the evaluated weights against the start and the best baseline, with the differences,
    and which of them wins. None when the metric was not measured."""
    name = optimized_metric.split("/", 1)[-1]
    key = next((k for k in (f"test/{name}", optimized_metric) if k in rows), None)
    if key is None or rows[key].get("after") is None:
        return None
    row = rows[key]
    after, higher = float(row["after"]), bool(row["higher_is_better"])
    rivals = [("the start", row["before"])] if row.get("before") is not None else []
    scored = [(b, row[b]) for b in baselines if row.get(b) is not None]
    if scored:
        best, value = (max if higher else min)(scored, key=lambda item: item[1])
        rivals.append((f"the best baseline `{best}`", value))
    text = f"Verdict on {key}: {format_number(after)} after"
    if not rivals:
        return text + "; no start or baseline was measured to compare it with."
    text += ", against " + " and ".join(
        f"{label} {format_number(value)} ({format_number(after - value, signed=True)})"
        for label, value in rivals
    )
    ahead = [
        (label, value) for label, value in rivals if (value > after if higher else value < after)
    ]
    if not ahead:
        tied = [label for label, value in rivals if value == after]
        won = [label for label, _ in rivals if label not in tied]
        return (
            text
            + (f": it beats {' and '.join(won)}." if won else ": no change.")
            + (f" It ties with {' and '.join(tied)}." if tied and won else "")
        )
    label, value = (max if higher else min)(ahead, key=lambda item: item[1])
    direction = "higher" if higher else "lower"
    return text + f": {label} is better, {format_number(abs(after - value))} {direction}."


def build_comparison(
    module: TaskModule,
    datamodule: TextDataModule,
    before: dict[str, Any] | None,
    after: dict[str, dict[str, float]],
    baselines: dict[str, dict[str, Any]],
    checkpoint: str | None,
    max_flipped: int,
    predictions: SplitPredictions | None = None,
    optimized_metric: str = "",
) -> dict[str, Any]:
    """The comparison record (metrics.json: comparison) of a finished run.

    Args:
        module: the task module holding the evaluated ('after') weights.
        before: the before-training record (None when `evaluate_before=false`).
        after: `{"validation": {...}, "test": {...}}` metrics of the evaluated weights.
        baselines: `lmforge.evaluation.baselines.run_baselines`' result.
        checkpoint: the checkpoint the 'after' figures come from (None: the final weights).
        max_flipped: flipped test examples listed per direction (0: none).
        predictions: the evaluated weights' test predictions (`predict_test_split`).
        optimized_metric: the run's `optimized_metric`, which the verdict line is about.
    """
    before_metrics = None
    if before is not None:
        before_metrics = {**before.get("validation", {}), **before.get("test", {})}
    after_metrics = {**after.get("validation", {}), **after.get("test", {})}
    scored = {name: b["metrics"] for name, b in baselines.items() if "metrics" in b}
    rows = comparison_rows(before_metrics, after_metrics, scored)
    comparison: dict[str, Any] = {
        "before": None if before is None else start_label(before["start"]),
        "before_note": None if before is None else before["note"],
        "after": f"checkpoint {checkpoint}" if checkpoint else "final weights",
        "rows": rows,
        "verdict": verdict(rows, list(scored), optimized_metric),
        "baselines": baselines,
        "task": module.task_name,
        "baseline_note": module.family.baseline_note,
    }
    previous = (before or {}).get("predictions", {}).get("test")
    if max_flipped and previous is not None and predictions is not None:
        comparison["flipped"] = flipped_examples(
            predictions.texts,
            predictions.gold,
            previous,
            predictions.predicted,
            module.label_names,
            max_flipped,
        )
    return comparison


# ----- the evaluated weights' test predictions ------------------------------------------------
@dataclass
class SplitPredictions:
    """Gold and predicted label ids per test row (multi-label: lists of ids), with the texts."""

    texts: list[str]
    gold: list[Any]
    predicted: list[Any]
    label_names: list[str]

    def records(self) -> list[dict[str, Any]]:
        """One row per test example with label names: test_predictions.jsonl."""
        return [
            {
                "text": text,
                "label": _label_name(g, self.label_names),
                "predicted": _label_name(p, self.label_names),
                "correct": g == p,
            }
            for text, g, p in zip(self.texts, self.gold, self.predicted, strict=True)
        ]

    def confusion_matrix(self) -> dict[str, Any] | None:
        """Counts with gold labels as rows and predictions as columns (single-label only)."""
        if any(isinstance(g, list) for g in self.gold):
            return None
        size = len(self.label_names)
        matrix = [[0] * size for _ in range(size)]
        for g, p in zip(self.gold, self.predicted, strict=True):
            matrix[g][p] += 1
        return {"split": "test", "labels": list(self.label_names), "matrix": matrix}


def predict_test_split(
    module: TaskModule,
    datamodule: TextDataModule,
    device: torch.device | str | None = None,
    predicted: list[Any] | None = None,
) -> SplitPredictions | None:
    """The module's predictions on the test split (None for tasks without one label per row);
    `predicted`: labels already taken in the test pass (`run_test_with_predictions`)."""
    if predicted is None:
        predicted = predict_labels(module, datamodule, "test", device)
    if predicted is None:
        return None
    # Families with one label per row have texts and define `gold_labels` on their datamodule.
    texts = cast("list[str]", datamodule.row_texts(datamodule.raw_splits()["test"]))
    labelled: Any = datamodule
    gold = labelled.gold_labels("test")
    return SplitPredictions(texts, gold, predicted, list(module.label_names))


def write_test_predictions(run_dir: Path, predictions: SplitPredictions) -> Path:
    """test_predictions.jsonl: text, gold label, predicted label and whether they agree."""
    path = run_dir / PREDICTIONS_FILE
    write_new(
        path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in predictions.records())
    )
    return path


def write_test_records(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    """test_predictions.jsonl from a family's own records (e.g. source, reference, generated)."""
    path = run_dir / PREDICTIONS_FILE
    write_new(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


# ----- comparison.md ----------------------------------------------------------------------------
def _short_paths(text: str) -> str:
    """Long paths cut to their last three parts, for column headers (the intro has them whole)."""
    words = text.split(" ")
    for i, word in enumerate(words):
        parts = word.rstrip(",").split("/")
        if len(parts) > 4 and len(word) > 40:
            words[i] = "…/" + "/".join(parts[-3:]) + ("," if word.endswith(",") else "")
    return " ".join(words)


def render_comparison(comparison: dict[str, Any]) -> str:
    """comparison.md: the table, what 'before' and the baselines are, the flipped examples."""
    has_before = comparison["before"] is not None
    scored = [n for n, b in comparison["baselines"].items() if "metrics" in b]
    header = ["metric"]
    if has_before:
        header += [
            f"before: {_short_paths(comparison['before'])}",
            f"after: {_short_paths(comparison['after'])}",
            "change",
            "change %",
        ]
    else:
        header += [f"after: {_short_paths(comparison['after'])}"]
    header += scored
    lines = [
        "# Before and after fine-tuning",
        "",
        *([f"**{comparison['verdict']}**", ""] if comparison.get("verdict") else []),
        _intro(comparison),
        "",
        "| " + " | ".join(markdown_cell(h) for h in header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
    ]
    for key, row in comparison["rows"].items():
        cells = [key + ("" if row["higher_is_better"] else " (lower is better)")]
        if has_before:
            cells += [
                format_number(row["before"], missing=MISSING),
                format_number(row["after"], missing=MISSING),
                format_number(row["change"], signed=True, missing=MISSING),
                format_number(row["change_percent"], signed=True, percent=True, missing=MISSING),
            ]
        else:
            cells.append(format_number(row["after"], missing=MISSING))
        cells += [format_number(row[name], missing=MISSING) for name in scored]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_baseline_lines(comparison["baselines"])]
    if "flipped" in comparison:
        lines += ["", *_flipped_lines(comparison["flipped"])]
    if comparison.get("examples"):
        lines += ["", *_example_lines(comparison["examples"])]
    return "\n".join(lines) + "\n"


# Test examples shown per end (best, worst) for families whose records carry a score.
SHOWN_EXAMPLES = 3


def scored_examples(records: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The best and worst test records by their per-example `score` (None without scores)."""
    scored = [r for r in records if isinstance(r.get("score"), (int, float))]
    if not scored:
        return None
    ranked = sorted(scored, key=lambda r: r["score"])
    count = min(SHOWN_EXAMPLES, len(ranked))
    return {"metric": metric, "best": ranked[::-1][:count], "worst": ranked[:count]}


def _example_lines(examples: dict[str, Any]) -> list[str]:
    lines = [f"## Best and worst test examples (per-example {examples['metric']})"]
    for end in ("best", "worst"):
        lines += ["", f"{end.capitalize()}:", ""]
        for record in examples[end]:
            fields = ", ".join(
                f"{k}: {markdown_cell(_clip(str(v)))}" for k, v in record.items() if k != "score"
            )
            lines.append(f"- {format_number(record['score'])}: {fields}")
    return lines


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _intro(comparison: dict[str, Any]) -> str:
    parts = []
    if comparison["before"] is not None:
        parts.append(
            f"**Before** is the untouched starting model ({comparison['before']}), evaluated "
            f"before training. {comparison['before_note']}"
        )
    else:
        parts.append("The starting model was not evaluated (`evaluate_before=false`).")
    parts.append(f"**After** is the {comparison['after']}.")
    if comparison.get("baseline_note"):
        parts.append(comparison["baseline_note"])
    parts.append(
        "Validation rows favour 'after' and the logistic-regression baselines alike (the best "
        "checkpoint and C were chosen on validation); test rows are the fair comparison."
    )
    return " ".join(parts)


def _baseline_lines(baselines: dict[str, dict[str, Any]]) -> list[str]:
    if not baselines:
        return ["No baselines were run (`compare.baselines=[]`)."]
    lines = ["Baselines, on the same splits:", ""]
    for name, record in baselines.items():
        if "skipped" in record:
            reason = str(record["skipped"]).rstrip(".")
            lines.append(f"- `{name}` ({record['description']}): skipped, {reason}.")
            continue
        details = "".join(f"{k} {v}, " for k, v in record["details"].items())
        lines.append(f"- `{name}`: {record['description']} ({details}{record['seconds']} s).")
    return lines


def _flipped_lines(flipped: dict[str, Any]) -> list[str]:
    counts = flipped["counts"]
    total = sum(counts.values())
    lines = [
        "## Test examples whose prediction flipped",
        "",
        f"Of {total} test examples, {counts['wrong_to_right']} went from wrong to right and "
        f"{counts['right_to_wrong']} from right to wrong ({counts['both_right']} right and "
        f"{counts['both_wrong']} wrong both times).",
    ]
    titles = {
        "wrong_to_right": "Wrong before, right after",
        "right_to_wrong": "Right before, wrong after",
    }
    for key, title in titles.items():
        examples = flipped["examples"][key]
        if not examples:
            continue
        shown = (
            f"first {len(examples)} of {counts[key]}"
            if len(examples) < counts[key]
            else f"all {counts[key]}"
        )
        lines += [
            "",
            f"### {title} ({shown})",
            "",
            "| row | text | gold | before | after |",
            "| ---: | --- | --- | --- | --- |",
        ]
        for example in examples:
            text = example["text"]
            text = text if len(text) <= SHOWN_TEXT else text[: SHOWN_TEXT - 1] + "…"
            cells = [
                str(example["row"]),
                text,
                example["gold"],
                example["before"],
                example["after"],
            ]
            lines.append("| " + " | ".join(markdown_cell(c) for c in cells) + " |")
    return lines


def write_comparison(run_dir: Path, comparison: dict[str, Any]) -> Path:
    """Write comparison.md into the run directory (never over an existing one)."""
    path = Path(run_dir) / COMPARISON_FILE
    write_new(path, render_comparison(comparison))
    return path
