"""Generated-text metrics: ROUGE (the `rouge-score` package) and sacreBLEU / chrF (`sacrebleu`).

Both are computed over a whole split, so the generated and reference texts of the split are
gathered first (`lmforge.evaluation.answers.GeneratedTexts`) and scored once at the end of the
epoch. Nothing is fetched at run time: `evaluate.load` would download metric code, so the
packages are called directly.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# A sentence ends at . ! or ? followed by space; rougeLsum compares sentence by sentence (the
# rouge-score package splits on newlines, so sentences are put on lines here, without nltk).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# What rouge-score's default tokenizer keeps: lowercase ASCII letters and digits.
_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def sentences_on_lines(text: str) -> str:
    """The text with one sentence per line (existing line breaks kept)."""
    return "\n".join(
        part.strip() for line in text.splitlines() for part in _SENTENCE_END.split(line)
    ).strip()


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    # rouge-score logs "Using default tokenizer." through absl at INFO for every scorer.
    logging.getLogger("absl").setLevel(logging.WARNING)
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F-measure of ROUGE-1/2/L/Lsum over the pairs, with Porter stemming, in [0, 1]."""
    if not predictions:
        return {name: 0.0 for name in ROUGE_TYPES}
    scorer = _rouge_scorer()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(sentences_on_lines(reference), sentences_on_lines(prediction))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}


def unscorable_by_rouge(references: list[str]) -> int:
    """How many non-empty references ROUGE's tokenizer reduces to nothing (non-Latin text)."""
    return sum(1 for r in references if r.strip() and not _ROUGE_TOKEN.search(r.lower()))


def bleu_scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus sacreBLEU and chrF (0-100, sacrebleu's defaults) and their signatures."""
    from sacrebleu import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(predictions, [references])
    chrf_score = chrf.corpus_score(predictions, [references])
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "signatures": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }


def sentence_chrf(prediction: str, reference: str) -> float:
    """chrF (0-100) of one output against its reference."""
    from sacrebleu import CHRF

    return float(CHRF().sentence_score(prediction, [reference]).score)
