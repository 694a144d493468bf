"""One way to write numbers in Markdown tables, and which metrics improve downwards.

Shared by the run's comparison.md and `lmforge-report`'s report.md.
"""

from __future__ import annotations

import math
from typing import Any

# Run-level figures (metrics.json) that are better when lower, besides the families' metrics.
LOWER_IS_BETTER_WORDS = ("time", "seconds", "memory", "megabytes")


def lower_is_better(key: str) -> bool:
    """Whether a metric key (`test/perplexity`, `wall_time_seconds`) improves downwards: a
    task family's lower-is-better metric (losses, perplexity), or a time or a size."""
    from lmforge.tasks import FAMILIES

    name = key.rsplit("/", 1)[-1]
    downwards = {metric for family in FAMILIES.values() for metric in family.lower_is_better}
    return name in downwards or any(word in key for word in LOWER_IS_BETTER_WORDS)


def format_number(
    value: Any, signed: bool = False, percent: bool = False, missing: str = ""
) -> str:
    """A number as a table shows it: thousands separated, four decimals below 1000 (three
    significant digits below 0.001); `signed` always shows the sign (a change), `percent`
    one decimal and a % sign; `missing` stands for None."""
    if value is None:
        return missing
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    sign = "+" if signed else ""
    if isinstance(value, int):
        return f"{value:{sign},}"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if percent:
        return f"{value:{sign},.1f}%"
    if abs(value) >= 1000:
        return f"{value:{sign},.1f}"
    return f"{value:{sign}.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:{sign}.3g}"


def markdown_cell(text: Any) -> str:
    """A value as Markdown table text: numbers formatted, pipes escaped, one line."""
    shown = format_number(text) if isinstance(text, int | float) else str(text or "")
    return shown.replace("|", "\\|").replace("\n", " ")
