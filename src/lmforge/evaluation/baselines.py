"""Baselines of the before/after comparison: what fine-tuning has to beat to mean something.

- `majority`: the most frequent training label for every example (text classification).
- `tfidf_logreg`: TF-IDF over word 1-2 grams + logistic regression (text classification).
- `frozen_probe`: logistic regression on features of the untouched starting backbone, read in
  one no-grad pass: the mean-pooled last hidden state of each text (text classification), the
  hidden state of each labelled subword, i.e. each word's first subword (NER).
- `lead`: the first k sentences of the source as the output (summarization's classic
  baseline), k of 1-3 chosen on validation; `copy_source`: the source as the output
  (translation). Both are scored by the module's own text metrics.
- `word_overlap`: the answer span with the question's words nearest around it in the context
  (a sliding-window word-overlap baseline of extractive QA, weighted by distance), its length
  chosen on validation; `no_answer`: "no answer" to every question (for data with
  unanswerable questions). Both are scored by the module's own exact match and F1.

Every logistic regression picks its C on the validation split, never on test. The scores come
from the task module's own metric objects, so keys and numbers match its `val/...` and
`test/...` metrics. Language modelling has none here: its untouched pretrained model (the
'before' column) is the baseline. scikit-learn is the optional extra `lmforge[baselines]`.

This module imports no torch or scikit-learn at the top, so the config check can read
`BASELINES` before any heavy import.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from lmforge.data.labels import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.evaluation.forward import forward_split

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lmforge.data.datamodule import TextDataModule
    from lmforge.tasks.base import TaskModule

log = logging.getLogger(__name__)

# Name (as in `compare.baselines`) -> what it is, for logs and comparison.md.
BASELINES: dict[str, str] = {
    "majority": "majority class: the most frequent training label, for every example",
    "tfidf_logreg": "TF-IDF (word 1-2 grams) + logistic regression, C chosen on validation",
    "frozen_probe": (
        "logistic regression on the frozen starting backbone's last hidden state, C chosen on "
        "validation"
    ),
    "lead": "the first k sentences of the source as the output, k (1-3) chosen on validation",
    "copy_source": "the source text itself as the output",
    "word_overlap": (
        "the context span with the question's words nearest around it (within 10 words, each "
        "weighted by 1/distance), span length (words) chosen on validation"
    ),
    "no_answer": "no answer to every question",
}
# Baselines of generated text: plain string rules, scored by the module's own text metrics.
TEXT_BASELINES = ("lead", "copy_source")
# Baselines of extracted answers: string rules over question and context, scored by the module.
ANSWER_BASELINES = ("word_overlap", "no_answer")
# Answer lengths (words) the word-overlap baseline tries, and the words it looks at on each side.
OVERLAP_WIDTHS = (1, 2, 3, 4, 6, 8)
OVERLAP_WINDOW = 10
# Words too common to say which part of a context a question is about.
QUESTION_STOPWORDS = frozenset(
    {
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "by",
        "with",
        "from",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "does",
        "do",
        "did",
        "can",
        "could",
        "would",
        "should",
        "will",
        "there",
        "their",
        "they",
        "he",
        "she",
        "his",
        "her",
        "as",
        "into",
        "than",
    }
)
# The numbers of leading sentences the lead baseline tries.
LEAD_SENTENCES = (1, 2, 3)
# Regularisation strengths tried for every logistic regression.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
# Evaluated splits and their metric-key prefixes (as the task modules log them).
STAGES = {"validation": "val", "test": "test"}
SKLEARN_MISSING = (
    "needs scikit-learn, which is not installed: pip install 'lmforge[baselines]' (or set "
    "compare.baselines=[majority])"
)

T = TypeVar("T")


def sklearn_available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def require_sklearn() -> None:
    """Fail with an install hint when scikit-learn is missing."""
    if not sklearn_available():
        raise LmforgeError(f"This baseline {SKLEARN_MISSING}.")


# ----- the baselines on plain data (also used by scripts/classification_baselines.py) ----------
@dataclass
class LogRegFit:
    """A fitted classifier (`predict`, `predict_proba`, `classes_`) and how its C was chosen."""

    model: Any
    c: float
    validation_score: float


def majority_label(train_labels: Sequence[Any]) -> Any:
    """The most frequent training label (on a tie, the one that comes first in the data)."""
    return Counter(train_labels).most_common(1)[0][0]


def fit_logreg(
    train_x: Any,
    train_y: Sequence[Any] | np.ndarray,
    val_x: Any,
    val_y: Sequence[Any] | np.ndarray,
    scale: bool = False,
    val_score: Callable[[Any], float] | None = None,
) -> LogRegFit:
    """Logistic regression with C from `C_GRID` chosen on validation (ties: the smaller C).

    `scale` standardises dense features first (hidden states); `val_score(model)` replaces
    validation accuracy as the criterion.
    """
    require_sklearn()
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def accuracy(model: Any) -> float:
        return float(np.mean(model.predict(val_x) == np.asarray(val_y)))

    best: LogRegFit | None = None
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=3000)
        if scale:
            model = make_pipeline(StandardScaler(), model)
        model.fit(train_x, train_y)
        score = (val_score or accuracy)(model)
        if best is None or score > best.validation_score:
            best = LogRegFit(model, c, score)
    assert best is not None  # C_GRID is not empty
    return best


def fit_tfidf_logreg(
    texts: Mapping[str, Sequence[str]], labels: Mapping[str, Sequence[Any]]
) -> LogRegFit:
    """TF-IDF (sublinear tf, word 1-2 grams) fitted on `texts['train']`, then logistic
    regression with C chosen on `texts['validation']`. The fitted model takes raw texts."""
    require_sklearn()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    train = vectorizer.fit_transform(texts["train"])
    validation = vectorizer.transform(texts["validation"])
    fit = fit_logreg(train, labels["train"], validation, labels["validation"])
    return LogRegFit(make_pipeline(vectorizer, fit.model), fit.c, fit.validation_score)


# ----- running them for a task module -----------------------------------------------------------
def run_baselines(
    names: Sequence[str],
    module: TaskModule,
    datamodule: TextDataModule,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each named baseline that fits the module's task on validation and test.

    Call it before training: the frozen probe reads the module's backbone as it starts.
    Returns, per name, `description`, `metrics` (keys as the task's, e.g. `test/acc`),
    `details` and `seconds`; or `description` and `skipped` (the reason, also logged).
    """
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in BASELINES:
            raise LmforgeError(
                f"compare.baselines: unknown baseline {name!r}; expected some of "
                f"{', '.join(BASELINES)}."
            )
        reason = _skip_reason(name, module)
        if reason:
            log.info("Baseline %s skipped: %s.", name, reason)
            results[name] = {"description": BASELINES[name], "skipped": reason}
            continue
        started = time.perf_counter()
        metrics, details = _RUNNERS[name](module, datamodule, device)
        seconds = round(time.perf_counter() - started, 2)
        shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")}
        log.info("Baseline %s (%.1f s): %s", name, seconds, shown)
        results[name] = {
            "description": BASELINES[name],
            "metrics": metrics,
            "details": details,
            "seconds": seconds,
        }
    return results


def _skip_reason(name: str, module: TaskModule) -> str | None:
    family = module.family
    if not family.baselines:
        return f"no baseline of this kind for {family.name}: {family.baseline_note}"
    if name not in family.baselines:
        return f"does not apply to {family.name} (it takes {', '.join(family.baselines)})"
    if problem := module.baseline_problem(name):
        return problem
    if name not in ("majority", *TEXT_BASELINES, *ANSWER_BASELINES) and not sklearn_available():
        return SKLEARN_MISSING
    return None


def _majority(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    import torch

    label = majority_label(datamodule.splits["train"]["labels"])
    metrics = {}
    for split, stage in STAGES.items():
        gold = torch.tensor(list(datamodule.splits[split]["labels"]))
        scores = torch.zeros(len(gold), len(module.label_names))  # (examples, labels)
        scores[:, label] = 1.0
        metrics.update(task_scores(module, stage, [(scores, gold)]))
    return metrics, {"label": module.label_names[label]}


def _tfidf_logreg(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    import torch

    raw = datamodule.raw_splits()
    texts = {split: datamodule.row_texts(dataset) for split, dataset in raw.items()}
    labels = {split: list(dataset["labels"]) for split, dataset in raw.items()}
    # The families with this baseline have texts for every row.
    fit = fit_tfidf_logreg(cast("dict[str, list[str]]", texts), labels)
    metrics = {}
    for split, stage in STAGES.items():
        scores = label_scores(fit.model, texts[split], len(module.label_names))
        metrics.update(task_scores(module, stage, [(scores, torch.tensor(labels[split]))]))
    details = {"C": fit.c, "validation_accuracy": round(fit.validation_score, 4)}
    return metrics, details


def _frozen_probe(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    import torch

    backbone = _untouched_model(module)
    per_word = module.family.label_unit == "token"
    step = _word_features if per_word else _pooled_features
    # Per split: per batch (features, gold labels); features of labelled positions only.
    read = {
        split: forward_split(module, datamodule, split, lambda b: step(backbone, b), device)
        for split in ("train", *STAGES)
    }

    def flat(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.cat([f for f, _ in read[split]])  # (examples or words, hidden)
        gold = torch.cat([_labelled(g, per_word) for _, g in read[split]])
        return features, gold

    def scored(model: Any, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(label scores, gold) per batch, scores in the shape of the task's logits."""
        batches = []
        for features, gold in read[split]:
            scores = label_scores(model, features.numpy(), len(module.label_names))
            if per_word:
                keep = gold != IGNORE_INDEX
                full = torch.zeros(*gold.shape, scores.shape[-1])  # (batch, seq, tags)
                full[keep] = scores
                scores = full
            batches.append((scores, gold))
        return batches

    chosen_by = f"val/{module.family.primary_metric}"

    def validation_score(model: Any) -> float:
        """The family's own primary metric on validation (entity F1 for tagging)."""
        return task_scores(module, "val", scored(model, "validation"))[chosen_by]

    (train_x, train_y), (val_x, val_y) = flat("train"), flat("validation")
    fit = fit_logreg(
        train_x.numpy(),
        train_y.numpy(),
        val_x.numpy(),
        val_y.numpy(),
        scale=True,
        val_score=validation_score,
    )
    metrics = {}
    for split, stage in STAGES.items():
        metrics.update(task_scores(module, stage, scored(fit.model, split)))
    details = {
        "features": (
            "last hidden state at each labelled subword (a word's first subword)"
            if per_word
            else "last hidden state, mean over the attention mask"
        ),
        "feature_size": int(train_x.shape[1]),
        "train_rows": int(train_x.shape[0]),
        "C": fit.c,
        "chosen_by": chosen_by,
        "validation_score": round(fit.validation_score, 4),
    }
    return metrics, details


def lead_sentences(text: str, count: int) -> str:
    """The first `count` sentences of a text (a sentence ends at . ! or ? and a space)."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:count])


def _text_baseline(
    module: TaskModule,
    datamodule: TextDataModule,
    output: Callable[[str, int], str],
    choices: Sequence[int] = (1,),
) -> tuple[dict, dict]:
    """Score `output(source, k)` against the targets with the module's text metrics; k is
    chosen on validation by the family's primary metric where `output` uses it."""
    texts: Any = datamodule
    splits = {split: texts.texts(split) for split in STAGES}

    def scores(split: str, k: int) -> dict[str, float]:
        pairs = list(splits[split].values())
        predictions = [output(source, k) for source, _ in pairs]
        scorer: Any = module  # a family with text baselines scores text (`text_scores`)
        return dict(scorer.text_scores(predictions, [target for _, target in pairs]))

    return _chosen_on_validation(module, scores, choices, "k")


def _chosen_on_validation(
    module: TaskModule,
    scores: Callable[[str, int], dict[str, float]],
    choices: Sequence[int],
    name: str,
) -> tuple[dict, dict]:
    """A rule's scores on validation and test, with its setting (`name`) chosen among
    `choices` by the family's primary metric on validation."""
    primary = module.family.primary_metric
    tried = {k: scores("validation", k)[primary] for k in choices}
    best = max(tried, key=lambda k: tried[k])
    metrics = {
        f"{stage}/{metric}": value
        for split, stage in STAGES.items()
        for metric, value in scores(split, best).items()
    }
    details = {name: best, f"validation_{primary}_by_{name}": tried} if len(choices) > 1 else {}
    return metrics, details


def _lead(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _text_baseline(module, datamodule, lead_sentences, LEAD_SENTENCES)


def _copy_source(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _text_baseline(module, datamodule, lambda source, k: source)


def _word(token: str) -> str:
    return re.sub(r"\W+", "", token.lower())


def word_overlap_answer(question: str, context: str, width: int) -> str:
    """The span of `width` context words nearest to the question's words: each question word
    (content words only) found within `OVERLAP_WINDOW` words on either side adds 1 / its
    distance in words (its nearest occurrence). A span holds no question word and neither
    starts nor ends with a common word; the earliest span wins a tie; outer punctuation is
    trimmed."""
    asked = {_word(t) for t in question.split()} - QUESTION_STOPWORDS - {""}
    tokens = [(m.start(), m.end(), _word(m.group())) for m in re.finditer(r"\S+", context)]
    best, best_score = None, -1.0
    for i in range(max(len(tokens) - width + 1, 0)):
        span = tokens[i : i + width]
        words = [word for _, _, word in span]
        if any(w in asked for w in words) or not words[0] or not words[-1]:
            continue
        if words[0] in QUESTION_STOPWORDS or words[-1] in QUESTION_STOPWORDS:
            continue
        nearest: dict[str, float] = {}
        last = i + width - 1
        for p in range(max(i - OVERLAP_WINDOW, 0), min(last + OVERLAP_WINDOW + 1, len(tokens))):
            word = tokens[p][2]
            if word in asked and not i <= p <= last:
                weight = 1 / (i - p if p < i else p - last)
                nearest[word] = max(nearest.get(word, 0.0), weight)
        score = sum(nearest.values())
        if score > best_score:
            best, best_score = (span[0][0], span[-1][1]), score
    if best is None:
        return ""
    return context[best[0] : best[1]].strip(".,;:!?()[]\"'")


def _answer_baseline(
    module: TaskModule,
    datamodule: TextDataModule,
    answer: Callable[[str, str, int], str],
    choices: Sequence[int] = (1,),
) -> tuple[dict, dict]:
    """Score `answer(question, context, k)` with the module's exact match and F1; k chosen on
    validation by the family's primary metric where `answer` uses it."""
    source: Any = datamodule  # a family with answer baselines reads questions (`examples`)
    scorer: Any = module  # ... and scores answers (`answer_scores`)
    examples = {split: source.examples(split) for split in STAGES}

    def scores(split: str, k: int) -> dict[str, float]:
        answers = {
            row: answer(e["question"], e["context"], k) for row, e in examples[split].items()
        }
        return dict(scorer.answer_scores(answers, examples[split]))

    return _chosen_on_validation(module, scores, choices, "words")


def _word_overlap(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _answer_baseline(module, datamodule, word_overlap_answer, OVERLAP_WIDTHS)


def _no_answer(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    return _answer_baseline(module, datamodule, lambda question, context, k: "")


_RUNNERS = {
    "majority": _majority,
    "tfidf_logreg": _tfidf_logreg,
    "frozen_probe": _frozen_probe,
    "lead": _lead,
    "copy_source": _copy_source,
    "word_overlap": _word_overlap,
    "no_answer": _no_answer,
}


def _labelled(gold: torch.Tensor, per_word: bool) -> torch.Tensor:
    return gold[gold != IGNORE_INDEX] if per_word else gold


def _untouched_model(module: TaskModule) -> Any:
    """The backbone without the task head (BERT: `model.bert`), under any PEFT wrapper (fresh
    adapters are not the start)."""
    model: Any = module.model  # possibly a PEFT wrapper
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model.base_model


def _last_hidden_state(backbone: Any, batch: dict) -> torch.Tensor:
    """(batch, seq, hidden). Read from the backbone's own output: asking the task model for
    `output_hidden_states` would leave transformers' capturing hooks on it, which a spawned
    DDP fit cannot pickle."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return backbone(**inputs).last_hidden_state


def _pooled_features(backbone: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the last hidden state over the attention mask, and the gold labels."""
    hidden = _last_hidden_state(backbone, batch)  # (batch, seq, hidden)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (batch, hidden)
    return pooled.float().cpu(), batch["labels"].cpu()


def _word_features(backbone: Any, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden state at every labelled position, and the (batch, seq) gold tags."""
    hidden = _last_hidden_state(backbone, batch)  # (batch, seq, hidden)
    labels = batch["labels"]  # (batch, seq), -100 where no tag is scored
    return hidden[labels != IGNORE_INDEX].float().cpu(), labels.cpu()


def label_scores(model: Any, x: Any, num_labels: int) -> torch.Tensor:
    """Class probabilities of a fitted classifier over all `num_labels` label ids (a label
    that training never had gets 0): (rows, num_labels)."""
    import numpy as np
    import torch

    scores = np.zeros((len(x), num_labels), dtype=np.float32)
    if not len(x):  # a batch without labelled words
        return torch.from_numpy(scores)
    probabilities = model.predict_proba(x)  # (rows, classes seen in training)
    scores[:, np.asarray(model.classes_, dtype=int)] = probabilities
    return torch.from_numpy(scores)


def task_scores(
    module: TaskModule, stage: str, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Score (label scores, gold labels) batches with a fresh set of the task's own metrics;
    keys `<stage>/<name>` as the task logs them."""
    metrics = module.configure_metrics("test")
    for scores, gold in batches:
        module.update_metrics(metrics, scores, {"labels": gold})
    return {f"{stage}/{k}": float(v) for k, v in module.compute_metrics(metrics).items()}
