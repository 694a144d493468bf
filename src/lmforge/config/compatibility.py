"""Known breaks between the libraries lmforge builds on, refused before a run starts.

A fresh install takes the newest releases `pyproject.toml` allows, and two of them can stop
working together while each works alone. Where such a pair breaks one fine-tuning method and
the method cannot be made to work on our side, that method is refused up front, naming both
installed versions and what to install, instead of failing mid-run or (worse) training without
effect. Torch-free: the config checks run this before torch is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from lmforge.errors import LmforgeError
from lmforge.runtime.packages import installed_versions


@dataclass(frozen=True)
class KnownBreak:
    """A fine-tuning method that fails when every listed package is in its range."""

    strategy: str  # the finetune option it breaks (finetune=<strategy>)
    ranges: Mapping[str, str]  # distribution -> the versions (a PEP 440 specifier) that break
    symptom: str  # what goes wrong, in one sentence
    remedy: str  # what to install instead


KNOWN_BREAKS: tuple[KnownBreak, ...] = (
    KnownBreak(
        strategy="prefix_tuning",
        ranges={"transformers": ">=5.24.0.dev0", "peft": "<=0.21.2"},
        symptom=(
            "transformers 5.24 renamed the models' `past_key_values` argument to `cache`, and this "
            "peft still passes the prefix under the old name: classification models are refused "
            '("Model does not support past key values") and causal LMs drop the prefix while '
            "generating, so predictions would ignore what was trained"
        ),
        remedy=(
            "pip install 'transformers<5.24' (the versions in the project's constraints.txt "
            "work), or a peft release newer than 0.21.2 once it passes the prefix as `cache`"
        ),
    ),
)


def _in_range(version: str | None, specifier: str) -> bool:
    if version is None:
        return False
    try:
        # Local labels (2.13.0+cpu) and pre-releases count as the release they belong to.
        return SpecifierSet(specifier).contains(Version(version).public, prereleases=True)
    except InvalidVersion:
        return False


def strategy_problem(strategy: str, versions: Mapping[str, str | None] | None = None) -> str | None:
    """Why `finetune=<strategy>` cannot work with these package versions (default: the
    installed ones), as one paragraph; None when nothing known stands in its way."""
    for known in KNOWN_BREAKS:
        if known.strategy != strategy:
            continue
        found = dict(versions) if versions is not None else installed_versions(list(known.ranges))
        if all(_in_range(found.get(name), spec) for name, spec in known.ranges.items()):
            pair = " with ".join(f"{name} {found[name]}" for name in known.ranges)
            return (
                f"finetune={strategy} does not work with the installed {pair}: "
                f"{known.symptom}. Install a working pair: {known.remedy}; or choose another "
                "method (finetune=lora, ia3 or prompt_tuning)."
            )
    return None


def check_strategy_supported(strategy: str) -> None:
    """Raise LmforgeError when the installed packages are known to break `strategy`."""
    if problem := strategy_problem(strategy):
        raise LmforgeError(problem)
