"""Text classification: its metrics against hand-computed values, its head, and what its
datamodule makes of columns, labels, sentence pairs and multi-label rows."""

from __future__ import annotations

import pandas as pd
import torch
from torch.testing import assert_close

from lmforge.tasks.text_classification.module import TextClassificationModule
from tests.helpers import (
    classification_data,
    classification_data_error,
    make_rows,
    write_csv,
)


def module(tiny_model, labels, **kwargs) -> TextClassificationModule:
    return TextClassificationModule(pretrained=str(tiny_model), label_names=labels, **kwargs)


def one_hot_logits(predictions: list[int], n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predictions), n).float() * 5


def test_single_label_metrics_match_hand_computed_values(tiny_model):
    m = module(tiny_model, ["neg", "neu", "pos"])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = one_hot_logits([0, 1, 1, 1, 2, 0], 3)
    # split in two batches: metrics must accumulate across batches
    m.update_metrics("val", m.val_metrics, logits[:4], {"labels": labels[:4]})
    m.update_metrics("val", m.val_metrics, logits[4:], {"labels": labels[4:]})
    values = m.compute_metrics("val", m.val_metrics)
    # class neg: P=1/2 R=1/2 F1=.5; neu: P=2/3 R=1 F1=.8; pos: P=1 R=1/2 F1=2/3
    assert_close(values["acc"], torch.tensor(4 / 6))
    assert_close(values["f1_neg"], torch.tensor(0.5))
    assert_close(values["f1_neu"], torch.tensor(0.8))
    assert_close(values["f1_pos"], torch.tensor(2 / 3))
    assert_close(values["f1_macro"], torch.tensor((0.5 + 0.8 + 2 / 3) / 3))
    # computing resets: the test stage starts clean and val never shares its state
    m.update_metrics("val", m.val_metrics, one_hot_logits([2], 3), {"labels": torch.tensor([2])})
    assert_close(m.compute_metrics("val", m.val_metrics)["acc"], torch.tensor(1.0))
    assert m.val_metrics is not m.test_metrics


def test_multi_label_metrics_match_hand_computed_values(tiny_model):
    m = module(tiny_model, ["a", "b", "c"], multi_label=True, threshold=0.5)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[3.0, -3.0, -3.0], [-3.0, 3.0, 3.0]])  # predicts {a}, {b, c}
    m.update_metrics("test", m.test_metrics, logits, {"labels": labels})
    values = m.compute_metrics("test", m.test_metrics)
    # TP=2 FP=1 FN=1 -> micro F1 2/3; per label a=1, b=1, c=0; no row exactly right
    assert_close(values["acc"], torch.tensor(0.0))
    assert_close(values["f1_micro"], torch.tensor(2 / 3))
    assert_close(values["f1_macro"], torch.tensor(2 / 3))
    assert_close(values["f1_c"], torch.tensor(0.0))


def test_losses(tiny_model):
    single = module(tiny_model, ["x", "y"])
    batch = {
        "input_ids": torch.tensor([[101, 2000, 102]]),
        "attention_mask": torch.ones(1, 3, dtype=torch.long),
        "labels": torch.tensor([1]),
    }
    loss, logits = single.forward_loss(batch)
    assert_close(loss, torch.nn.functional.cross_entropy(logits, batch["labels"]))
    multi = module(tiny_model, ["x", "y"], multi_label=True)
    batch["labels"] = torch.tensor([[1.0, 0.0]])
    loss, logits = multi.forward_loss(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"])
    assert_close(loss, expected)


def test_head_config_carries_label_names(tiny_model):
    m = module(tiny_model, ["neg", "pos"], classifier_dropout=0.3)
    assert m.model.config.id2label == {0: "neg", 1: "pos"}
    assert m.model.config.classifier_dropout == 0.3
    assert m.model.training  # dropout is on for training


def test_column_mapping_and_string_labels(tmp_path, tiny_model):
    rows = [{"review": r["text"], "stars": r["label"], "extra": 1} for r in make_rows(30, 0)]
    path = write_csv(tmp_path / "reviews.csv", rows)
    dm = classification_data(
        tmp_path, tiny_model, train_file=str(path), text_column="review", label_column="stars"
    )
    assert dm.label_names == ["cooking", "music", "sports"]
    assert set(dm.splits["train"].column_names) == {
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "labels",
    }


def test_integer_labels_keep_their_values(tmp_path, tiny_model):
    rows = [{"text": r["text"], "label": [3, 7, 5][i % 3]} for i, r in enumerate(make_rows(30, 0))]
    path = write_csv(tmp_path / "ints_train.csv", rows)
    dm = classification_data(tmp_path, tiny_model, train_file=str(path))
    assert dm.label_names == ["3", "5", "7"]


def test_configured_label_names_set_the_id_order(tmp_path, tiny_model, tiny_data):
    names = ["sports", "music", "cooking"]
    dm = classification_data(
        tmp_path,
        tiny_model,
        train_file=str(tiny_data / "train.csv"),
        label_names=names,
        validation_file=str(tiny_data / "validation.csv"),
        test_file=str(tiny_data / "test.csv"),
    )
    assert dm.label_names == names
    first = pd.read_csv(tiny_data / "train.csv")
    labels = dm.splits["train"]["labels"]
    assert [names[i] for i in labels[:5]] == list(first["label"][:5])


def test_sentence_pairs_are_encoded_as_pairs(tmp_path, tiny_model):
    rows = [
        {"a": "a cat sat", "b": "a dog ran", "label": "no"},
        {"a": "the sun", "b": "the sun", "label": "yes"},
    ] * 10
    path = write_csv(tmp_path / "pairs.csv", rows)
    dm = classification_data(
        tmp_path,
        tiny_model,
        train_file=str(path),
        text_column="a",
        text_pair_column="b",
        validation_ratio=0.2,
        test_ratio=0.2,
    )
    example = dm.splits["train"][0]
    assert 1 in example["token_type_ids"]  # the second segment is marked


def test_multi_label_rows_from_a_separator(tmp_path, tiny_model):
    rows = [{"text": "t " * (i + 1), "label": ["a|b", "b", "c|a"][i % 3]} for i in range(30)]
    path = write_csv(tmp_path / "multi.csv", rows)
    dm = classification_data(tmp_path, tiny_model, train_file=str(path), multi_label=True)
    assert dm.label_names == ["a", "b", "c"]
    vectors = {tuple(v) for split in dm.splits.values() for v in split["labels"]}
    assert vectors <= {(1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 1.0)}


def test_unseen_test_label_is_refused(tmp_path, tiny_model):
    train = write_csv(tmp_path / "train.csv", make_rows(30, 0))
    write_csv(tmp_path / "test.csv", [{"text": "x y", "label": "politics"}])
    message = classification_data_error(
        tmp_path, tiny_model, train_file=str(train), test_file=str(tmp_path / "test.csv")
    )
    assert "test split" in message and "'politics'" in message


def test_single_class_is_refused(tmp_path, tiny_model):
    path = write_csv(tmp_path / "t.csv", [{"text": "a b", "label": "x"}] * 10)
    assert "single label" in classification_data_error(tmp_path, tiny_model, train_file=str(path))


def _few_shot(tmp_path, tiny_model, tiny_data, **kwargs):
    return classification_data(
        tmp_path,
        tiny_model,
        train_file=str(tiny_data / "train.csv"),
        validation_file=str(tiny_data / "validation.csv"),
        test_file=str(tiny_data / "test.csv"),
        **kwargs,
    )


def test_few_shot_draws_k_per_class_with_the_seed(tmp_path, tiny_model, tiny_data):
    from collections import Counter

    draws = {}
    for seed in (1, 2):
        dm = _few_shot(tmp_path, tiny_model, tiny_data, few_shot_k=4, seed=seed)
        labels = dm.splits["train"]["labels"]
        assert Counter(labels) == {0: 4, 1: 4, 2: 4}
        # Validation and test stay whole unless asked; the note says what each class got.
        assert len(dm.splits["validation"]) == 30 and len(dm.splits["test"]) == 30
        assert (
            f"train: few-shot draw of 4 per class (seed {seed}): cooking 4, music 4, sports 4"
            in dm.data_report["notes"]
        )
        # The baselines read the same rows as the model.
        raw = dm.raw_splits()["train"]
        assert raw["labels"] == labels and len(raw) == 12
        draws[seed] = dm.splits["train"]["input_ids"]
        again = _few_shot(tmp_path / "again", tiny_model, tiny_data, few_shot_k=4, seed=seed)
        assert again.splits["train"]["input_ids"] == draws[seed]
    assert draws[1] != draws[2]
    true_few_shot = _few_shot(
        tmp_path, tiny_model, tiny_data, few_shot_k=2, few_shot_validation=True
    )
    assert Counter(true_few_shot.splits["validation"]["labels"]) == {0: 2, 1: 2, 2: 2}


def test_few_shot_classes_short_of_k(tmp_path, tiny_model, tiny_data, caplog):
    # tiny_data's training file has 32 examples of each topic.
    message = classification_data_error(
        tmp_path,
        tiny_model,
        train_file=str(tiny_data / "train.csv"),
        validation_file=str(tiny_data / "validation.csv"),
        test_file=str(tiny_data / "test.csv"),
        few_shot_k=40,
    )
    assert "data.few_shot_k=40" in message and "'cooking' has 32" in message
    assert "data.few_shot_strict=false" in message
    dm = _few_shot(tmp_path, tiny_model, tiny_data, few_shot_k=40, few_shot_strict=False)
    assert len(dm.splits["train"]) == 96
    assert "fewer than 40 examples of 3 class(es)" in caplog.text
    multi = classification_data_error(
        tmp_path,
        tiny_model,
        train_file=str(tiny_data / "train.csv"),
        few_shot_k=4,
        multi_label=True,
    )
    assert "data.few_shot_k" in multi and "multi_label" in multi
