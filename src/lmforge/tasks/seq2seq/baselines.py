"""Baselines of generated text, scored by the module's own text metrics:

- `lead`: the first k sentences of the source (summarization's classic baseline), k of 1-3
  chosen on validation;
- `copy_source`: the source itself (translation: how much survives untranslated).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from lmforge.data.datamodule import TextDataModule
from lmforge.data.splits import EVALUATED
from lmforge.errors import LmforgeError
from lmforge.evaluation.baselines import chosen_on_validation
from lmforge.tasks.base import TaskModule
from lmforge.tasks.seq2seq.data import Seq2SeqDataModule
from lmforge.tasks.seq2seq.module import Seq2SeqModule

# The numbers of leading sentences the lead baseline tries.
LEAD_SENTENCES = (1, 2, 3)


def lead_sentences(text: str, count: int) -> str:
    """The first `count` sentences of a text (a sentence ends at . ! or ? and a space)."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:count])


def lead(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _scored(module, datamodule, lead_sentences, LEAD_SENTENCES)


def copy_source(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _scored(module, datamodule, lambda source, k: source)


def _scored(
    module: TaskModule,
    datamodule: TextDataModule,
    output: Callable[[str, int], str],
    choices: Sequence[int] = (1,),
) -> tuple[dict, dict]:
    """Score `output(source, k)` against the targets with the module's text metrics; k is
    chosen on validation by the family's primary metric where `output` uses it."""
    if not isinstance(module, Seq2SeqModule) or not isinstance(datamodule, Seq2SeqDataModule):
        raise LmforgeError(
            f"The text baselines score a Seq2SeqModule on a Seq2SeqDataModule, not a "
            f"{type(module).__name__} on a {type(datamodule).__name__}."
        )
    splits = {split: datamodule.texts(split) for split in EVALUATED}

    def scores(split: str, k: int) -> dict[str, float]:
        pairs = list(splits[split].values())
        predictions = [output(source, k) for source, _ in pairs]
        return module.text_scores(predictions, [target for _, target in pairs])

    return chosen_on_validation(module.family.primary_metric, scores, choices, "k")
