"""Non-neural baselines for a text-classification split: majority class and TF-IDF + LR.

    python scripts/classification_baselines.py --data-dir src/lmforge/resources/debian_packages

The regularisation strength C of the logistic regression is chosen on the validation split,
never on the test split. Needs scikit-learn (in the `dev` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="holds train/validation/test.csv"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    args = parser.parse_args()
    splits = {s: pd.read_csv(args.data_dir / f"{s}.csv") for s in ("train", "validation", "test")}
    x = {s: df[args.text_column].astype(str) for s, df in splits.items()}
    y = {s: df[args.label_column].astype(str) for s, df in splits.items()}

    majority = y["train"].value_counts().index[0]
    majority_acc = accuracy_score(y["test"], [majority] * len(y["test"]))
    print(f"majority class ({majority}): test acc {majority_acc:.4f}")

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    train = vectorizer.fit_transform(x["train"])
    validation = vectorizer.transform(x["validation"])
    scores = {}
    for c in (0.1, 1.0, 10.0, 100.0):
        fitted = LogisticRegression(C=c, max_iter=3000).fit(train, y["train"])
        scores[c] = accuracy_score(y["validation"], fitted.predict(validation))
    best_c = max(scores, key=scores.get)
    best = (scores[best_c], best_c)
    model = LogisticRegression(C=best[1], max_iter=3000).fit(train, y["train"])
    predicted = model.predict(vectorizer.transform(x["test"]))
    print(
        f"TF-IDF (1-2 grams) + logistic regression (C={best[1]:g}, val acc {best[0]:.4f}): "
        f"test acc {accuracy_score(y['test'], predicted):.4f}, "
        f"macro F1 {f1_score(y['test'], predicted, average='macro'):.4f}"
    )


if __name__ == "__main__":
    main()
