"""Folders of text files as data: one subfolder per class for classification, one document per
file for language modelling, aclImdb's train/test layout, and the files a real folder holds
beside the examples (hidden, empty, binary, BOM, not UTF-8)."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from lmforge.config.resources import sibling_split, train_split
from lmforge.data.sources import folder_fingerprint, read_text_folder
from lmforge.errors import LmforgeError
from tests.helpers import classification_data


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def imdb_like(root: Path, per_class: int = 6) -> Path:
    """aclImdb's layout: train/ and test/ with pos/ and neg/ (and train/unsup/), files beside."""
    words = {"pos": "great wonderful fine", "neg": "awful boring bad"}
    for split in ("train", "test"):
        for label, text in words.items():
            for i in range(per_class):
                write(root / split / label / f"{i}_7.txt", f"{text} film number {i} {split}")
        write(root / split / "urls_pos.txt", "http://example.org/1\n")
    write(root / "train" / "unsup" / "0_0.txt", "no label here")
    return root


def test_class_folders_give_rows_labelled_by_folder_and_count_what_was_skipped(tmp_path):
    root = tmp_path / "reviews"
    write(root / "pos" / "a.txt", codecs.BOM_UTF8 + b"good film")
    write(root / "pos" / "b.txt", "very good\nfilm\n")
    write(root / "pos" / "deep" / "c.txt", "nested files count too")
    write(root / "neg" / "a.txt", "bad film")
    write(root / "neg" / ".draft.txt", "hidden")
    write(root / "neg" / "empty.txt", "  \n")
    write(root / "neg" / "cover.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    write(root / ".git" / "config", "[core]")
    write(root / "README", "beside the class folders")
    dataset, note = read_text_folder(str(root), "data.train_file", "text", "label")
    rows = list(zip(dataset["text"], dataset["label"], strict=True))
    # Sorted by class, then path; the BOM is dropped, the text kept as written.
    assert rows == [
        ("bad film", "neg"),
        ("good film", "pos"),
        ("very good\nfilm\n", "pos"),
        ("nested files count too", "pos"),
    ]
    assert "4 file(s) read from class folders neg (1), pos (3)" in note
    assert "1 hidden (neg/.draft.txt)" in note
    assert "1 empty (neg/empty.txt)" in note
    assert "1 not text" in note and "neg/cover.png" in note
    assert "1 beside or outside the class folders, not read (README)" in note


def test_a_file_that_is_not_utf8_is_named_or_skipped_and_counted(tmp_path):
    root = tmp_path / "data"
    write(root / "a" / "1.txt", "fine")
    write(root / "b" / "1.txt", "fine too")
    write(root / "b" / "latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(LmforgeError) as err:
        read_text_folder(str(root), "data.train_file", "text", "label")
    message = str(err.value)
    assert "latin1.txt is not valid UTF-8" in message and "byte offset 3" in message
    assert "data.invalid_utf8=skip" in message
    dataset, note = read_text_folder(
        str(root), "data.train_file", "text", "label", invalid_utf8="skip"
    )
    assert dataset["label"] == ["a", "b"]
    assert "1 not valid UTF-8 (b/latin1.txt)" in note


def test_folder_errors_say_what_layout_is_expected(tmp_path):
    write(tmp_path / "one" / "only" / "1.txt", "x")
    with pytest.raises(LmforgeError, match="1 class folder"):
        read_text_folder(str(tmp_path / "one"), "data.train_file", "text", "label")
    (tmp_path / "none").mkdir()
    with pytest.raises(LmforgeError, match="holds no files"):
        read_text_folder(str(tmp_path / "none"), "data.train_file", "text", "label")
    write(tmp_path / "blank" / "a" / "1.txt", "")
    write(tmp_path / "blank" / "b" / "1.txt", " ")
    with pytest.raises(LmforgeError, match="no file in the folder holds text"):
        read_text_folder(str(tmp_path / "blank"), "data.train_file", "text", "label")
    imdb = imdb_like(tmp_path / "imdb")
    with pytest.raises(LmforgeError, match=r"no class folder 'positive'.*found: neg, pos, unsup"):
        read_text_folder(
            str(imdb / "train"), "data.train_file", "text", "label", classes=["positive", "neg"]
        )


def test_a_folder_of_documents_gives_one_row_per_file(tmp_path):
    write(tmp_path / "docs" / "b.txt", "second document\n\nwith a blank line")
    write(tmp_path / "docs" / "sub" / "a.md", "first")
    dataset, note = read_text_folder(str(tmp_path / "docs"), "data.train_file", "text")
    assert dataset.column_names == ["text"]
    assert dataset["text"] == ["second document\n\nwith a blank line", "first"]
    assert "2 file(s) read." in note


def test_the_train_test_layout_is_found_by_name_and_the_fingerprint_follows_content(tmp_path):
    imdb = imdb_like(tmp_path / "imdb")
    assert train_split(str(imdb)) == str(imdb / "train")
    assert sibling_split(str(imdb), "test") == str(imdb / "test")
    assert sibling_split(str(imdb / "train"), "test") == str(imdb / "test")
    assert sibling_split(str(imdb), "validation") is None
    before = folder_fingerprint(imdb / "train")
    write(imdb / "train" / "pos" / "0_7.txt", "changed")
    assert folder_fingerprint(imdb / "train") != before


def test_a_classification_run_reads_class_folders_with_the_checks_saying_what_was_read(
    tmp_path, tiny_model
):
    imdb = imdb_like(tmp_path / "imdb")
    dm = classification_data(
        tmp_path,
        tiny_model,
        train_file=str(imdb),
        test_file=str(imdb / "test"),
        folder_classes=["neg", "pos"],
    )
    assert dm.label_names == ["neg", "pos"]
    # 12 training files, a validation split carved from them; 12 test files.
    assert len(dm.splits["train"]) + len(dm.splits["validation"]) == 12
    assert len(dm.splits["test"]) == 12
    dm.report()
    notes = " ".join(dm.data_report["notes"])
    assert "from class folders neg (6), pos (6)" in notes
    assert "unsup/" in notes and "urls_pos.txt" in notes  # left out, and said so
    # The same folders hit the cache; another class selection is other data.
    again = classification_data(
        tmp_path,
        tiny_model,
        train_file=str(imdb),
        test_file=str(imdb / "test"),
        folder_classes=["neg", "pos"],
    )
    assert again.cache_hit is True
    # Without the selection every class folder is a class: unsup/ becomes a third label.
    everything = classification_data(
        tmp_path, tiny_model, train_file=str(imdb), test_file=str(imdb / "test")
    )
    assert everything.label_names == ["neg", "pos", "unsup"]
    everything.report()
    absent = [w for w in everything.data_report["warnings"] if w.startswith("test: no example")]
    assert absent and "'unsup' (1 in train)" in absent[0]


def test_a_language_model_reads_a_folder_of_documents(tmp_path, tiny_model):
    from lmforge.tasks.language_modeling.data import LanguageModelingDataModule

    docs = tmp_path / "corpus"
    for i in range(12):
        write(docs / f"doc{i:02d}.txt", f"document {i} " + "words and more words " * (i + 1))
    write(docs / "notes.bin", b"\x00\x01\x02")
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(docs),
        cache_dir=str(tmp_path / "cache"),
        block_size=16,
        objective="causal",
        mode="truncate",
    )
    dm.prepare_data()
    dm.setup("fit")
    # One example per document in truncate mode: 12 documents, carved into the three splits.
    assert sum(len(dm.splits[s]) for s in ("train", "validation", "test")) == 12
    dm.report()
    assert any("12 file(s) read" in n and "notes.bin" in n for n in dm.data_report["notes"])


def test_a_family_that_reads_files_only_says_so_for_a_folder(tmp_path, tiny_model):
    from lmforge.tasks.token_classification.data import TokenClassificationDataModule

    write(tmp_path / "ner" / "a" / "1.txt", "John lives in Paris")
    dm = TokenClassificationDataModule(
        tokenizer=str(tiny_model), train_file=str(tmp_path / "ner"), cache_dir=str(tmp_path)
    )
    with pytest.raises(LmforgeError, match="is a folder; this task reads data files"):
        dm.prepare_data()
