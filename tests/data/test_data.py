"""The datamodule: sources, column mapping, labels, split carving, caching, batching."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import torch

from lmforge.config.resources import sibling_split
from lmforge.data.sampler import SeededBatchSampler
from tests.helpers import classification_data, classification_data_error, make_rows, write_csv


def test_missing_splits_are_carved_stratified_and_seeded(tmp_path, tiny_model):
    path = write_csv(tmp_path / "only.csv", make_rows(90, 0))
    dm = classification_data(
        tmp_path, tiny_model, train_file=str(path), validation_ratio=0.2, test_ratio=0.2
    )
    assert dm.meta["carved_splits"] == ["test", "validation"]
    assert len(dm.splits["test"]) == 18 and len(dm.splits["validation"]) == 18
    assert sum(len(s) for s in dm.splits.values()) == 90
    # stratified: each of the 3 balanced labels gets a third of the test split
    assert Counter(dm.splits["test"]["labels"]) == {0: 6, 1: 6, 2: 6}
    again = classification_data(
        tmp_path / "second", tiny_model, train_file=str(path), validation_ratio=0.2, test_ratio=0.2
    )
    assert again.splits["test"]["input_ids"] == dm.splits["test"]["input_ids"]


def test_sibling_split_files(tmp_path):
    train = write_csv(tmp_path / "reviews_train.csv", make_rows(3, 0))
    assert sibling_split(str(train), "validation") is None
    dev = write_csv(tmp_path / "reviews_dev.csv", make_rows(3, 0))
    test = write_csv(tmp_path / "reviews_test.csv", make_rows(3, 0))
    assert sibling_split(str(train), "validation") == str(dev)
    assert sibling_split(str(train), "test") == str(test)
    assert sibling_split(str(tmp_path / "data.csv"), "test") is None


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".parquet", ".tsv"])
def test_other_file_formats(tmp_path, tiny_model, suffix):
    frame = pd.DataFrame(make_rows(30, 0))
    path = tmp_path / f"data{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    dm = classification_data(tmp_path, tiny_model, train_file=str(path))
    assert dm.label_names == ["cooking", "music", "sports"]


def test_truncation_is_counted(tmp_path, tiny_model):
    rows = [{"text": "word " * (200 if i % 2 else 3), "label": "ab"[i % 2]} for i in range(20)]
    path = write_csv(tmp_path / "long.csv", rows)
    dm = classification_data(
        tmp_path, tiny_model, train_file=str(path), validation_ratio=0.2, test_ratio=0.2
    )
    total = sum(s["truncated"] for s in dm.meta["stats"].values())
    assert total == 10
    assert max(dm.lengths["train"]) == 32


def test_caps_limit_each_split(tmp_path, tiny_model, tiny_data):
    dm = classification_data(
        tmp_path,
        tiny_model,
        train_file=str(tiny_data / "train.csv"),
        validation_file=str(tiny_data / "validation.csv"),
        test_file=str(tiny_data / "test.csv"),
        max_train_samples=10,
        max_eval_samples=5,
        max_test_samples=7,
    )
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 10, "validation": 5, "test": 7}


def test_tokenization_cache_hit_and_miss(tmp_path, tiny_model):
    path = write_csv(tmp_path / "train.csv", make_rows(30, 0))
    first = classification_data(tmp_path, tiny_model, train_file=str(path))
    assert first.cache_hit is False
    second = classification_data(tmp_path, tiny_model, train_file=str(path))
    assert second.cache_hit is True
    assert (
        classification_data(tmp_path, tiny_model, train_file=str(path), max_length=16).cache_hit
        is False
    )
    write_csv(path, make_rows(30, 1))  # same name, new content
    assert classification_data(tmp_path, tiny_model, train_file=str(path)).cache_hit is False
    assert len(list((tmp_path / "cache").glob("TextClassificationDataModule-*"))) == 3


@pytest.mark.parametrize("damage", ["truncate", "meta"])
def test_a_damaged_cache_is_rebuilt_with_a_warning(tmp_path, tiny_model, caplog, damage):
    path = write_csv(tmp_path / "train.csv", make_rows(30, 0))
    first = classification_data(tmp_path, tiny_model, train_file=str(path))
    expected = {split: list(dataset["input_ids"]) for split, dataset in first.splits.items()}
    (entry,) = (tmp_path / "cache").glob("TextClassificationDataModule-*")
    if damage == "truncate":  # a full disk or a partial copy: the arrow file cut short
        arrow = next((entry / "data" / "train").glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 3])
    else:
        (entry / "meta.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="lmforge.data.datamodule"):
        again = classification_data(tmp_path, tiny_model, train_file=str(path))
    assert f"tokenization cache at {entry} cannot be read" in caplog.text
    assert again.cache_hit is False
    assert {split: list(ds["input_ids"]) for split, ds in again.splits.items()} == expected
    assert (
        classification_data(tmp_path, tiny_model, train_file=str(path)).cache_hit is True
    )  # rebuilt whole


# ----- errors ---------------------------------------------------------------------------------


def test_missing_file_names_the_key(tmp_path, tiny_model):
    message = classification_data_error(tmp_path, tiny_model, train_file=str(tmp_path / "nope.csv"))
    assert "data.train_file" in message and "nope.csv" in message


def test_missing_column_lists_columns_found(tmp_path, tiny_model):
    path = write_csv(tmp_path / "t.csv", make_rows(10, 0))
    message = classification_data_error(
        tmp_path, tiny_model, train_file=str(path), text_column="review"
    )
    assert "data.text_column='review'" in message and "text, label" in message


def test_missing_text_names_the_rows(tmp_path, tiny_model):
    rows = make_rows(10, 0)
    rows[3]["text"] = ""
    path = write_csv(tmp_path / "t.csv", rows)
    message = classification_data_error(
        tmp_path, tiny_model, train_file=str(path), drop_empty=False
    )
    assert "row(s) 4" in message and "'text'" in message


def test_empty_and_non_utf8_files(tmp_path, tiny_model):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in classification_data_error(tmp_path, tiny_model, train_file=str(empty))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert "UTF-8" in classification_data_error(tmp_path, tiny_model, train_file=str(latin))


def test_no_source_is_refused(tmp_path, tiny_model):
    assert "No data source" in classification_data_error(tmp_path, tiny_model)


# ----- sampler --------------------------------------------------------------------------------


def test_sampler_order_depends_only_on_seed_and_epoch():
    lengths = list(range(100))
    a = SeededBatchSampler(lengths, 8, shuffle=True, seed=3)
    b = SeededBatchSampler(lengths, 8, shuffle=True, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(i for batch in a for i in batch) == lengths


def test_length_grouping_reduces_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (640,), generator=gen).tolist()

    def padded(sampler):
        return sum(max(lengths[i] for i in b) * len(b) for b in sampler)

    plain = SeededBatchSampler(lengths, 16, shuffle=True, seed=0)
    grouped = SeededBatchSampler(lengths, 16, shuffle=True, group_by_length=True, seed=0)
    assert padded(grouped) < 0.7 * padded(plain)
    assert sorted(i for b in grouped for i in b) == list(range(640))


def test_sampler_shards_across_processes():
    shards = [
        list(SeededBatchSampler(list(range(50)), 4, shuffle=True, num_replicas=2, rank=r))
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 7
    seen = {i for shard in shards for batch in shard for i in batch}
    assert seen == set(range(50))


def test_meta_survives_the_cache_as_json(tmp_path, tiny_model, tiny_data):
    dm = classification_data(tmp_path, tiny_model, train_file=str(tiny_data / "train.csv"))
    assert dm.cache_hit is False
    again = classification_data(tmp_path, tiny_model, train_file=str(tiny_data / "train.csv"))
    assert again.cache_hit is True
    # What the first run wrote to the cache is what the second reads: label names included.
    assert json.loads(json.dumps(dm.meta)) == again.meta
    assert again.label_names == ["cooking", "music", "sports"]


def test_hub_code_path_on_a_local_dataset_folder(tmp_path, tiny_model):
    """`data.dataset_name` goes through datasets.load_dataset; a local folder exercises it."""
    import datasets

    folder = tmp_path / "hub_like"
    folder.mkdir()
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    for split, n in (("train", 40), ("validation", 10)):
        rows = {
            "sentence": [f"text number {i}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
        }
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(folder / f"{split}.parquet")
        )
    dm = classification_data(tmp_path, tiny_model, dataset_name=str(folder), text_column="sentence")
    assert dm.label_names == ["negative", "positive"]  # from the ClassLabel feature
    assert dm.meta["carved_splits"] == ["test"]
    assert len(dm.splits["validation"]) == 10
    again = classification_data(
        tmp_path, tiny_model, dataset_name=str(folder), text_column="sentence"
    )
    assert again.cache_hit is True


def test_files_and_a_hub_name_together_are_refused(tmp_path, tiny_model, tiny_data):
    message = classification_data_error(
        tmp_path, tiny_model, dataset_name="imdb", train_file=str(tiny_data / "train.csv")
    )
    assert "choose one source" in message


def test_the_seed_keys_the_cache_only_when_splits_are_carved(tmp_path, tiny_model, tiny_data):
    files = {f"{s}_file": str(tiny_data / f"{s}.csv") for s in ("train", "validation", "test")}
    assert classification_data(tmp_path, tiny_model, seed=1, **files).cache_hit is False
    # All three splits given: another seed changes nothing tokenized.
    assert classification_data(tmp_path, tiny_model, seed=2, **files).cache_hit is True
    # Carved splits depend on the seed.
    only_train = {"train_file": files["train_file"]}
    assert classification_data(tmp_path, tiny_model, seed=1, **only_train).cache_hit is False
    assert classification_data(tmp_path, tiny_model, seed=2, **only_train).cache_hit is False


def test_batches_pad_to_a_multiple(tmp_path, tiny_model, tiny_data):
    files = {f"{split}_file": str(tiny_data / f"{split}.csv") for split in ("train", "test")}
    plain = classification_data(tmp_path, tiny_model, batch_size=8, **files)
    padded = classification_data(tmp_path, tiny_model, batch_size=8, pad_to_multiple_of=8, **files)
    loaders = (padded.train_dataloader(), padded.test_dataloader())
    for batch in (b for loader in loaders for b in loader):
        assert batch["input_ids"].shape[1] % 8 == 0
    # Same examples, same real tokens: only the padding differs.
    for ours, theirs in zip(padded.train_dataloader(), plain.train_dataloader(), strict=True):
        assert (
            ours["attention_mask"].sum(dim=1).tolist()
            == theirs["attention_mask"].sum(dim=1).tolist()
        )
        width = theirs["input_ids"].shape[1]
        assert torch.equal(ours["input_ids"][:, :width], theirs["input_ids"])
