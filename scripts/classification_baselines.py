"""Non-neural baselines for a text-classification split: majority class and TF-IDF + LR.

    python scripts/classification_baselines.py --data-dir src/lmforge/resources/debian_packages

The regularisation strength C of the logistic regression is chosen on the validation split,
never on the test split. The baselines live in `lmforge.evaluation.baselines` (training runs
put them in their before/after table); this prints them for a folder of CSV files. Needs
scikit-learn: pip install 'lmforge[baselines]'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lmforge.errors import LmforgeError
from lmforge.evaluation.baselines import fit_tfidf_logreg, majority_label, require_sklearn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="holds train/validation/test.csv"
    )
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    args = parser.parse_args()
    try:
        require_sklearn()
    except LmforgeError as err:
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    from sklearn.metrics import accuracy_score, f1_score

    splits = {s: pd.read_csv(args.data_dir / f"{s}.csv") for s in ("train", "validation", "test")}
    x = {s: df[args.text_column].astype(str).tolist() for s, df in splits.items()}
    y = {s: df[args.label_column].astype(str).tolist() for s, df in splits.items()}

    majority = majority_label(y["train"])
    majority_acc = accuracy_score(y["test"], [majority] * len(y["test"]))
    print(f"majority class ({majority}): test acc {majority_acc:.4f}")

    fit = fit_tfidf_logreg(x, y)
    predicted = fit.model.predict(x["test"])
    print(
        f"TF-IDF (1-2 grams) + logistic regression (C={fit.c:g}, val acc "
        f"{fit.validation_score:.4f}): test acc {accuracy_score(y['test'], predicted):.4f}, "
        f"macro F1 {f1_score(y['test'], predicted, average='macro'):.4f}"
    )


if __name__ == "__main__":
    main()
