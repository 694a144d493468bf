"""Baselines of the before/after comparison: what fine-tuning has to beat to mean something.

- `majority`: the most frequent training label for every example (text classification).
- `tfidf_logreg`: TF-IDF over word 1-2 grams + logistic regression (text classification).
- `frozen_probe`: logistic regression on features of the untouched starting backbone, read in
  one no-grad pass: the mean-pooled last hidden state of each text (text classification), the
  hidden state of each labelled subword, i.e. each word's first subword (NER).

A baseline that only one family uses lives in that family's folder and its spec names it
(`TaskFamily.own_baselines`: summarization's `lead`, QA's `word_overlap`, ...); this module runs
it like the shared ones and gives it `chosen_on_validation`.

Every logistic regression picks its C on the validation split, never on test. The scores come
from the task module's own metric objects, so keys and numbers match its `val/...` and
`test/...` metrics. Language modelling has none here: its untouched pretrained model (the
'before' column) is the baseline. scikit-learn is the optional extra `lmforge[baselines]`.

This module imports no torch or scikit-learn at the top, so the config check can read
`known_baselines()` before any heavy import.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.splits import EVALUATED, Stage
from lmforge.errors import LmforgeError
from lmforge.evaluation.forward import forward_split

if TYPE_CHECKING:
    import numpy as np
    import torch

    from lmforge.data.datamodule import TextDataModule
    from lmforge.tasks.base import TaskModule

log = logging.getLogger(__name__)

# The baselines several families share: name (as in `compare.baselines`) -> what it is, for
# logs and comparison.md.
BASELINES: dict[str, str] = {
    "majority": "majority class: the most frequent training label, for every example",
    "tfidf_logreg": "TF-IDF (word 1-2 grams) + logistic regression, C chosen on validation",
    "frozen_probe": (
        "logistic regression on the frozen starting backbone's last hidden state, C chosen on "
        "validation"
    ),
}
# Of those, the ones that fit a logistic regression.
NEEDS_SKLEARN = ("tfidf_logreg", "frozen_probe")
# Regularisation strengths tried for every logistic regression.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
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


def known_baselines() -> dict[str, str]:
    """Every baseline lmforge has, shared or a family's own: name -> what it is."""
    from lmforge.tasks import FAMILIES

    own = {
        name: baseline.description
        for family in FAMILIES.values()
        for name, baseline in family.own_baselines.items()
    }
    return {**BASELINES, **own}


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
    from lmforge.tasks.spec import load

    known = known_baselines()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in known:
            raise LmforgeError(
                f"compare.baselines: unknown baseline {name!r}; expected some of "
                f"{', '.join(known)}."
            )
        reason = _skip_reason(name, module)
        if reason:
            log.info("Baseline %s skipped: %s.", name, reason)
            results[name] = {"description": known[name], "skipped": reason}
            continue
        own = module.family.own_baselines.get(name)
        runner: Runner = load(own.runner) if own else _RUNNERS[name]
        started = time.perf_counter()
        metrics, details = runner(module, datamodule, device)
        seconds = round(time.perf_counter() - started, 2)
        shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test/")}
        log.info("Baseline %s (%.1f s): %s", name, seconds, shown)
        description = known[name]
        if getattr(datamodule, "streaming", False):
            # A streamed corpus is not read whole before training: the baseline fits the head.
            rows = len(datamodule.splits["train"])
            description += f" (fitted on the first {rows} rows of the streamed training split)"
        results[name] = {
            "description": description,
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
    if name in NEEDS_SKLEARN and not sklearn_available():
        return SKLEARN_MISSING
    return None


def _majority(module: TaskModule, datamodule: TextDataModule, device: Any) -> tuple[dict, dict]:
    import torch

    label = majority_label(datamodule.splits["train"]["labels"])
    metrics = {}
    for split, stage in EVALUATED.items():
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
    for split, stage in EVALUATED.items():
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
        for split in ("train", *EVALUATED)
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
    for split, stage in EVALUATED.items():
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


def chosen_on_validation(
    primary: str,
    scores: Callable[[str, int], dict[str, float]],
    choices: Sequence[int],
    name: str,
) -> tuple[dict, dict]:
    """A rule's scores on validation and test (`scores(split, setting)`), with its setting
    (`name`) chosen among `choices` by the family's `primary` metric on validation."""
    tried = {k: scores("validation", k)[primary] for k in choices}
    best = max(tried, key=lambda k: tried[k])
    metrics = {
        f"{stage}/{metric}": value
        for split, stage in EVALUATED.items()
        for metric, value in scores(split, best).items()
    }
    details = {name: best, f"validation_{primary}_by_{name}": tried} if len(choices) > 1 else {}
    return metrics, details


# A baseline: (module, datamodule, device) -> (metrics keyed as the task logs them, details).
Runner = Callable[["TaskModule", "TextDataModule", Any], tuple[dict, dict]]
_RUNNERS: dict[str, Runner] = {
    "majority": _majority,
    "tfidf_logreg": _tfidf_logreg,
    "frozen_probe": _frozen_probe,
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
    module: TaskModule, stage: Stage, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """Score (label scores, gold labels) batches with a fresh set of the task's own metrics;
    keys `<stage>/<name>` as the task logs them."""
    metrics = module.configure_metrics("test")
    for scores, gold in batches:
        module.update_metrics(stage, metrics, scores, {"labels": gold})
    return {f"{stage}/{k}": float(v) for k, v in module.compute_metrics(stage, metrics).items()}
