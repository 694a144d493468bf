"""Translation metrics: sacreBLEU and chrF (`sacrebleu`); ROUGE, which causal LMs' generated
answers share, is in `lmforge.evaluation.answers`.

Corpus scores are computed over a whole split, so the generated and reference texts of the
split are gathered first (`lmforge.evaluation.answers.GeneratedTexts`) and scored once at the
end of the epoch. Nothing is fetched at run time: `evaluate.load` would download metric code,
so the package is called directly.
"""

from __future__ import annotations

from typing import Any


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
