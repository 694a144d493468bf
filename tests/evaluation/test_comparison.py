"""The before/after comparison: the table, the baselines, flipped examples, comparison.md."""

from __future__ import annotations

import csv
import json
import pickle
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lmforge.config.validation import validate_training_config
from lmforge.errors import LmforgeError
from lmforge.evaluation import baselines as baselines_module
from lmforge.evaluation.baselines import C_GRID, fit_tfidf_logreg, majority_label, run_baselines
from lmforge.evaluation.comparison import (
    _short_paths,
    comparison_rows,
    flipped_examples,
    predict_labels,
    render_comparison,
    run_test_with_predictions,
    start_label,
    verdict,
)
from lmforge.tasks.text_classification.data import TextClassificationDataModule
from lmforge.tasks.text_classification.module import TextClassificationModule
from lmforge.tasks.token_classification.data import TokenClassificationDataModule
from lmforge.tasks.token_classification.module import TokenClassificationModule
from lmforge.train import train
from tests.helpers import REPO, TOPICS

SCRIPT = REPO / "scripts" / "classification_baselines.py"


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ----- the table from known numbers ---------------------------------------------------------
def test_rows_hold_change_and_relative_change_with_the_right_sign():
    before = {"val/acc": 0.4, "test/acc": 0.5, "test/loss": 2.0, "test/perplexity": 100.0}
    after = {"test/acc": 0.75, "test/loss": 0.5, "test/perplexity": 120.0, "val/acc": 0.4}
    rows = comparison_rows(before, after, {"majority": {"test/acc": 0.25}})
    assert list(rows) == ["test/acc", "test/loss", "test/perplexity", "val/acc"]
    acc = rows["test/acc"]
    assert acc["change"] == pytest.approx(0.25) and acc["change_percent"] == pytest.approx(50.0)
    assert acc["improved"] is True and acc["majority"] == 0.25
    loss = rows["test/loss"]  # lower is better: a fall is a gain, shown negative
    assert loss["higher_is_better"] is False and loss["improved"] is True
    assert loss["change"] == pytest.approx(-1.5) and loss["change_percent"] == pytest.approx(-75)
    perplexity = rows["test/perplexity"]  # a rise in perplexity is a loss
    assert perplexity["change_percent"] == pytest.approx(20.0) and perplexity["improved"] is False
    assert rows["val/acc"]["change"] == 0 and rows["val/acc"]["improved"] is False
    assert rows["test/loss"]["majority"] is None


def test_without_a_before_measurement_the_table_has_no_before_column():
    rows = comparison_rows(None, {"test/acc": 0.9}, {})
    assert rows == {"test/acc": {"higher_is_better": True, "after": 0.9}}
    text = render_comparison(
        {
            "before": None,
            "before_note": None,
            "after": "final weights",
            "rows": rows,
            "baselines": {},
            "task": "text_classification",
        }
    )
    assert "| metric | after: final weights |" in text and "before:" not in text


def test_the_verdict_names_the_winner_and_the_differences():
    before = {"test/acc": 0.5, "test/loss": 2.0}
    baselines = {"majority": {"test/acc": 0.25, "test/loss": 1.1}, "tfidf": {"test/acc": 0.8}}
    rows = comparison_rows(before, {"test/acc": 0.75, "test/loss": 1.0}, baselines)
    # A validation key names the test metric; the best baseline is the highest accuracy.
    assert verdict(rows, ["majority", "tfidf"], "val/acc") == (
        "Verdict on test/acc: 0.7500 after, against the start 0.5000 (+0.2500) and the best "
        "baseline `tfidf` 0.8000 (-0.0500): the best baseline `tfidf` is better, 0.0500 higher."
    )
    # Lower is better for the loss: the lowest baseline is the best, and both are beaten.
    assert verdict(rows, ["majority", "tfidf"], "val/loss") == (
        "Verdict on test/loss: 1.0000 after, against the start 2.0000 (-1.0000) and the best "
        "baseline `majority` 1.1000 (-0.1000): it beats the start and the best "
        "baseline `majority`."
    )
    alone = comparison_rows(None, {"test/acc": 0.9}, {})
    assert verdict(alone, [], "val/acc") == (
        "Verdict on test/acc: 0.9000 after; no start or baseline was measured to compare it with."
    )
    assert verdict(alone, [], "val/f1_macro") is None


def test_start_label_says_what_the_model_started_from():
    fresh = {"from": "pretrained m", "newly_initialised": ["classifier.bias", "classifier.weight"]}
    assert start_label(fresh) == "pretrained m, fresh classifier"
    assert start_label({"from": "checkpoint a/best.ckpt", "newly_initialised": []}) == (
        "checkpoint a/best.ckpt"
    )
    long = "pretrained /home/someone/models/families/minilm/model, fresh classifier"
    assert _short_paths(long) == "pretrained …/families/minilm/model, fresh classifier"


# ----- flipped examples ---------------------------------------------------------------------
def test_flipped_examples_in_both_directions():
    names = ["neg", "pos", "mixed"]
    gold = [1, 0, 1, 2, 0, 1]
    before = [0, 0, 0, 1, 1, 1]  # right: rows 1, 5
    after = [1, 1, 1, 2, 1, 1]  # right: rows 0, 2, 3, 5
    flipped = flipped_examples([f"t{i}" for i in range(6)], gold, before, after, names, limit=2)
    assert flipped["counts"] == {
        "wrong_to_right": 3,
        "right_to_wrong": 1,
        "both_right": 1,
        "both_wrong": 1,
    }
    assert flipped["examples"]["wrong_to_right"] == [
        {"row": 0, "text": "t0", "gold": "pos", "before": "neg", "after": "pos"},
        {"row": 2, "text": "t2", "gold": "pos", "before": "neg", "after": "pos"},
    ]
    assert flipped["examples"]["right_to_wrong"] == [
        {"row": 1, "text": "t1", "gold": "neg", "before": "neg", "after": "pos"}
    ]
    multi = flipped_examples(["a"], [[0, 2]], [[0]], [[0, 2]], names, limit=5)
    assert multi["examples"]["wrong_to_right"][0]["after"] == "neg|mixed"


# ----- baselines on tiny data -----------------------------------------------------------------
def test_majority_label_takes_the_most_frequent_then_the_first_seen():
    assert majority_label(["b", "a", "b"]) == "b"
    assert majority_label([2, 0, 0, 2, 1]) == 2


def test_tfidf_logreg_on_separable_text_picks_the_smallest_c_and_predicts_right():
    words = {"x": "apple pear plum", "y": "bolt nut screw"}

    def split(n: int) -> tuple[list[str], list[str]]:
        texts, labels = [], []
        for i in range(n):
            label = "xy"[i % 2]
            texts.append(" ".join(words[label].split()[: 1 + i % 3]))
            labels.append(label)
        return texts, labels

    parts = {"train": split(12), "validation": split(4), "test": split(6)}
    fit = fit_tfidf_logreg({k: v[0] for k, v in parts.items()}, {k: v[1] for k, v in parts.items()})
    assert fit.c == C_GRID[0] and fit.validation_score == 1.0  # all C are right: the first wins
    assert list(fit.model.predict(["plum pear", "nut"])) == ["x", "y"]


@pytest.fixture(scope="module")
def classification(tmp_path_factory, tiny_model, tiny_data):
    dm = TextClassificationDataModule(
        tokenizer=str(tiny_model),
        train_file=str(tiny_data / "train.csv"),
        validation_file=str(tiny_data / "validation.csv"),
        test_file=str(tiny_data / "test.csv"),
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm, TextClassificationModule(pretrained=str(tiny_model), label_names=dm.label_names)


def test_classification_baselines_use_the_task_metric_keys(classification):
    dm, module = classification
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    results = run_baselines(["majority", "tfidf_logreg", "frozen_probe"], module, dm)
    expected = {
        f"{stage}/{name}"
        for stage in ("val", "test")
        for name in ("acc", "f1_macro", "f1_cooking", "f1_music", "f1_sports")
    }
    for name in ("majority", "tfidf_logreg", "frozen_probe"):
        assert set(results[name]["metrics"]) == expected, name
    # 30 test rows, 10 per topic; training ties at 32 each, so the first row's label wins.
    majority = results["majority"]["metrics"]
    assert results["majority"]["details"] == {"label": "sports"}
    assert majority["test/acc"] == pytest.approx(1 / 3)
    assert majority["test/f1_sports"] == pytest.approx(0.5)  # precision 1/3, recall 1
    assert majority["test/f1_macro"] == pytest.approx(0.5 / 3)
    assert results["tfidf_logreg"]["metrics"]["test/acc"] > 0.9  # the words give the topic away
    assert results["frozen_probe"]["details"]["feature_size"] == 32
    # The probe reads the model without changing it, its mode or the global random state,
    # and leaves no hook that would stop a spawned DDP fit from pickling it.
    assert module.training
    pickle.dumps(module.model)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in module.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_the_test_pass_gives_the_same_predictions_as_a_prediction_pass(classification):
    import lightning.pytorch as pl

    dm, module = classification
    dm.eval_batch_size = 8  # 30 rows: 4 batches, sorted by length, so not in row order
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False)
    separate = predict_labels(module, dm, "test")
    metrics, predicted = run_test_with_predictions(pl.Trainer(**options), module, dm)
    assert predicted == separate
    assert sum(
        p == g for p, g in zip(predicted, dm.gold_labels("test"), strict=True)
    ) / 30 == pytest.approx(metrics["test/acc"])
    # A pass over part of the split cannot stand in for the prediction pass.
    limited = pl.Trainer(**options, limit_test_batches=2)
    assert run_test_with_predictions(limited, module, dm)[1] is None
    assert module.recorded_test_predictions is None


def test_raw_splits_match_the_tokenized_splits_row_for_row(tmp_path, tiny_model, tiny_data):
    dm = TextClassificationDataModule(
        tokenizer=str(tiny_model),
        train_file=str(tiny_data / "train.csv"),  # validation and test are carved from it
        cache_dir=str(tmp_path),
        max_test_samples=7,
    )
    dm.prepare_data()
    dm.setup("fit")
    raw = dm.raw_splits()
    for split, dataset in dm.splits.items():
        assert list(raw[split]["labels"]) == list(dataset["labels"]), split
        texts = list(raw[split]["text"])
        encoded = dm.tokenizer(texts, truncation=True, max_length=dm.max_length)
        assert encoded["input_ids"] == list(dataset["input_ids"]), split
    assert len(raw["test"]) == 7


def test_ner_probe_scores_entities_like_the_task(tmp_path, tiny_model, tiny_ner):
    dm = TokenClassificationDataModule(
        tokenizer=str(tiny_model),
        train_file=str(tiny_ner / "train.conll"),
        validation_file=str(tiny_ner / "validation.conll"),
        test_file=str(tiny_ner / "test.conll"),
        cache_dir=str(tmp_path),
        max_length=32,
    )
    dm.prepare_data()
    dm.setup("fit")
    module = TokenClassificationModule(pretrained=str(tiny_model), label_names=dm.label_names)
    results = run_baselines(["majority", "tfidf_logreg", "frozen_probe"], module, dm)
    assert "token_classification" in results["majority"]["skipped"]
    assert "token_classification" in results["tfidf_logreg"]["skipped"]
    probe = results["frozen_probe"]
    names = ("precision", "recall", "f1", "f1_LANG", "f1_OS", "token_acc")
    assert set(probe["metrics"]) == {f"{s}/{n}" for s in ("val", "test") for n in names}
    assert all(0 <= v <= 1 for v in probe["metrics"].values())
    assert probe["details"]["chosen_by"] == "val/f1"
    words = sum(len(row) for row in dm.splits["train"]["labels"])  # upper bound
    assert 0 < probe["details"]["train_rows"] < words


def test_language_models_have_no_baselines_here_and_missing_sklearn_is_explained(
    monkeypatch, classification
):
    from lmforge.tasks import FAMILIES

    lm = SimpleNamespace(task_name="causal_lm", family=FAMILIES["causal_lm"])
    results = run_baselines(["majority", "frozen_probe"], lm, None)
    assert all("'before'" in r["skipped"] for r in results.values())
    dm, module = classification
    monkeypatch.setattr(baselines_module, "sklearn_available", lambda: False)
    results = run_baselines(["majority", "tfidf_logreg", "frozen_probe"], module, dm)
    assert "metrics" in results["majority"]
    for name in ("tfidf_logreg", "frozen_probe"):
        assert "pip install 'lmforge[baselines]'" in results[name]["skipped"]
    with pytest.raises(LmforgeError, match="lmforge\\[baselines\\]"):
        fit_tfidf_logreg({"train": ["a"]}, {"train": [0]})


def test_the_script_prints_the_baselines(monkeypatch, capsys, tiny_data):
    monkeypatch.setattr(sys, "argv", ["classification_baselines.py", "--data-dir", str(tiny_data)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "majority class (sports): test acc 0.3333"
    assert lines[1].startswith("TF-IDF (1-2 grams) + logistic regression (C=")


# ----- config --------------------------------------------------------------------------------
def test_compare_settings_are_checked(make_cfg):
    with pytest.raises(LmforgeError, match=r"compare\.baselines: unknown svm"):
        validate_training_config(make_cfg("compare.baselines=[majority,svm]"))
    with pytest.raises(LmforgeError, match=r"compare\.max_flipped must be a whole number"):
        validate_training_config(make_cfg("compare.max_flipped=-1"))


# ----- end to end -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compared_run(tiny_full_run):
    return tiny_full_run[0]


def test_a_run_writes_the_comparison(compared_run):
    metrics = read_json(compared_run / "metrics.json")
    comparison = metrics["comparison"]
    rows = comparison["rows"]
    before = metrics["before_training"]
    for stage, key in (("test", "test/acc"), ("validation", "val/acc")):
        assert rows[key]["after"] == pytest.approx(metrics[stage][key])
        assert rows[key]["before"] == pytest.approx(before[stage][key])
    assert rows["test/acc"]["majority"] == pytest.approx(1 / 3)
    assert set(comparison["baselines"]) == {"majority", "tfidf_logreg", "frozen_probe"}
    assert comparison["before"].startswith("pretrained ")
    assert comparison["before"].endswith(", fresh classifier")
    # The flipped counts agree with the accuracies before and after.
    counts = comparison["flipped"]["counts"]
    assert sum(counts.values()) == 30
    right_after = counts["both_right"] + counts["wrong_to_right"]
    right_before = counts["both_right"] + counts["right_to_wrong"]
    assert right_after == round(30 * metrics["test"]["test/acc"])
    assert right_before == round(30 * before["test"]["test/acc"])
    for key, examples in comparison["flipped"]["examples"].items():
        assert len(examples) == min(3, counts[key])
    # Per-example predictions stay in before_training.json, out of metrics.json.
    assert len(read_json(compared_run / "before_training.json")["predictions"]["test"]) == 30
    assert "predictions" not in before

    text = (compared_run / "comparison.md").read_text()
    # The verdict on the optimized metric opens the page, with the run's own figures.
    optimized = metrics["optimized_metric"].split("/")[-1]
    assert comparison["verdict"].startswith(f"Verdict on test/{optimized}: ")
    assert text.splitlines()[2] == f"**{comparison['verdict']}**"
    assert "the best baseline `" in comparison["verdict"]
    assert "| before: pretrained " in text and ", fresh classifier | after: checkpoint " in text
    assert "| tfidf_logreg | frozen_probe |" in text
    assert "| test/loss (lower is better) |" in text
    if counts["wrong_to_right"] + counts["right_to_wrong"]:
        assert "## Test examples whose prediction flipped" in text


def test_a_run_writes_its_test_predictions_and_confusion_matrix(compared_run, tiny_data):
    metrics = read_json(compared_run / "metrics.json")
    lines = (compared_run / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    with open(tiny_data / "test.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in records] == [r["text"] for r in rows]
    assert [r["label"] for r in records] == [r["label"] for r in rows]
    assert all(r["correct"] == (r["label"] == r["predicted"]) for r in records)
    correct = sum(r["correct"] for r in records)
    assert correct / len(records) == pytest.approx(metrics["test"]["test/acc"])

    confusion = metrics["confusion_matrix"]
    names = confusion["labels"]
    assert sorted(names) == sorted(TOPICS)
    for i, gold in enumerate(names):
        for j, predicted in enumerate(names):
            expected = sum(r["label"] == gold and r["predicted"] == predicted for r in records)
            assert confusion["matrix"][i][j] == expected


def test_init_from_labels_the_before_column_as_that_checkpoint(compared_run, make_cfg, tmp_path):
    first = compared_run / "checkpoints" / "best.ckpt"
    train(make_cfg(f"model.init_from={first}", "train=false", "compare.baselines=[]"))
    metrics = read_json(tmp_path / "run" / "metrics.json")
    comparison = metrics["comparison"]
    assert comparison["before"] == f"checkpoint {first}"
    text = (tmp_path / "run" / "comparison.md").read_text()
    assert f"untouched starting model (checkpoint {first})" in text
    assert "| before: checkpoint …/run/checkpoints/best.ckpt |" in text  # the header, short
    assert "real before/after comparison" in comparison["before_note"]
    # Nothing trained: after equals before, and no prediction flipped.
    assert comparison["rows"]["test/acc"]["change"] == pytest.approx(0, abs=1e-6)
    flips = comparison["flipped"]["counts"]
    assert flips["wrong_to_right"] == flips["right_to_wrong"] == 0


def test_without_evaluate_before_there_is_no_before_column(make_cfg, tmp_path):
    train(make_cfg("evaluate_before=false", "train=false", "compare.baselines=[majority]"))
    comparison = read_json(tmp_path / "run" / "metrics.json")["comparison"]
    assert comparison["before"] is None and "flipped" not in comparison
    assert "before" not in comparison["rows"]["test/acc"]
    assert not (tmp_path / "run" / "before_training.json").exists()
    assert "before:" not in (tmp_path / "run" / "comparison.md").read_text()
