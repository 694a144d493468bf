"""Tokenizing in several processes (data.num_proc) gives the same data and the same cache key
as one process."""

from __future__ import annotations

from lmforge.data.datamodule import MIN_ROWS_PER_PROCESS
from tests.helpers import classification_data, make_rows, write_csv


def test_two_processes_tokenize_exactly_what_one_does(tmp_path, tiny_model):
    rows = 2 * MIN_ROWS_PER_PROCESS + 37
    data = tmp_path / "data"
    write_csv(data / "train.csv", make_rows(rows, seed=1))
    write_csv(data / "test.csv", make_rows(40, seed=2))
    one = classification_data(
        tmp_path / "one", tiny_model, train_file=str(data / "train.csv"), num_proc=1
    )
    two = classification_data(
        tmp_path / "two", tiny_model, train_file=str(data / "train.csv"), num_proc=2
    )
    assert two.processes_for(rows) == 2 and one.processes_for(rows) == 1
    assert two.processes_for(40) == 1  # small splits: one process
    assert one._resolve_cache_path().name == two._resolve_cache_path().name
    for split in ("train", "validation", "test"):
        assert one.splits[split].to_dict() == two.splits[split].to_dict(), split


def test_grouping_blocks_across_documents_stays_in_one_process(tmp_path, tiny_model):
    from lmforge.tasks.language_modeling.data import LanguageModelingDataModule

    def build(mode: str) -> LanguageModelingDataModule:
        return LanguageModelingDataModule(
            tokenizer=str(tiny_model), train_file="x.txt", mode=mode, num_proc=4
        )

    assert build("group").processes_for(10**6) == 1
    assert build("truncate").processes_for(10**6) == 4
