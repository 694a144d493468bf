"""Bad data is refused before training with one clear message, and the user's files are untouched.

Each test writes its own data folder, records the sha256 of every file in it, expects an
LmforgeError naming the file and the column / line / key, what was found and what was expected,
and checks the files afterwards. A few go through the real `lmforge-train` console script.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmforge.errors import LmforgeError
from lmforge.tasks.language_modeling.data import LanguageModelingDataModule
from lmforge.tasks.text_classification.data import TextClassificationDataModule
from lmforge.tasks.token_classification.data import TokenClassificationDataModule
from lmforge.train import train
from tests.helpers import (
    make_conll_sentences,
    make_rows,
    run,
    script,
    tiny_overrides,
    write_conll,
    write_csv,
)


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@contextlib.contextmanager
def untouched(folder: Path) -> Iterator[None]:
    """The files under `folder` (and their list) are the same after the block as before."""
    before = digests(folder)
    assert before, "the test wrote no data"
    yield
    assert digests(folder) == before


def refused(tmp_path: Path, tiny_model: Path, cls=TextClassificationDataModule, **kwargs) -> str:
    """Build a datamodule over `tmp_path / "data"`; return the LmforgeError's message."""
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    if cls is not LanguageModelingDataModule:  # it takes block_size instead
        kwargs.setdefault("max_length", 32)
    with untouched(tmp_path / "data"), pytest.raises(LmforgeError) as info:
        dm = cls(tokenizer=str(tiny_model), **kwargs)
        dm.prepare_data()
        dm.setup("fit")
    return str(info.value)


def refused_by_cli(tmp_path: Path, *overrides: str) -> str:
    """Run `lmforge-train`; it must fail with a message and no traceback. Return stderr."""
    with untouched(tmp_path / "data"):
        result = run(
            script("lmforge-train"),
            *overrides,
            f"paths.cache_dir={tmp_path / 'cache'}",
            "hydra.run.dir=run",
            cwd=tmp_path,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
    return result.stderr


def good_csv(tmp_path: Path, name: str = "train.csv", n: int = 30) -> Path:
    return write_csv(tmp_path / "data" / name, make_rows(n, 0))


# ----- files ------------------------------------------------------------------------------------


def test_missing_train_file(tmp_path, tiny_model):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("the data is elsewhere")
    path = tmp_path / "data" / "nope.csv"
    message = refused(tmp_path, tiny_model, train_file=str(path))
    assert f"data.train_file='{path}': no such file" in message
    assert "expected an existing" in message


def test_missing_validation_file(tmp_path, tiny_model):
    train_file = good_csv(tmp_path)
    missing = tmp_path / "data" / "dev.csv"
    message = refused(
        tmp_path, tiny_model, train_file=str(train_file), validation_file=str(missing)
    )
    assert f"data.validation_file='{missing}': no such file" in message


def test_directory_given_as_a_file(tmp_path, tiny_model):
    good_csv(tmp_path)
    message = refused(tmp_path, tiny_model, train_file=str(tmp_path / "data"))
    assert f"data.train_file='{tmp_path / 'data'}' is a folder holding data files" in message
    assert "give the file itself" in message and "train.csv" in message


def test_non_utf8_csv_names_line_and_byte_through_the_cli(tmp_path, tiny_model, tiny_data):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_bytes("text,label\nok,a\ncaf\xe9 noir,b\n".encode("latin-1"))
    stderr = refused_by_cli(
        tmp_path,
        *tiny_overrides(tiny_model, tiny_data),
        f"data.train_file={data / 'train.csv'}",
    )
    assert f"data.train_file='{data / 'train.csv'}': the file is not valid UTF-8" in stderr
    assert "line 3, byte offset 19 holds byte(s) 0xe9" in stderr
    assert "iconv -f latin1 -t utf-8" in stderr


def test_malformed_csv_row(tmp_path, tiny_model):
    path = tmp_path / "data" / "train.csv"
    path.parent.mkdir()
    path.write_text("text,label\nfine,a\nan, extra, field\n")
    message = refused(tmp_path, tiny_model, train_file=str(path))
    assert f"data.train_file='{path}': could not be read as csv" in message
    assert "Expected 2 fields in line 3, saw 3" in message


def test_empty_file(tmp_path, tiny_model):
    path = tmp_path / "data" / "train.csv"
    path.parent.mkdir()
    path.write_text("")
    message = refused(tmp_path, tiny_model, train_file=str(path))
    assert f"data.train_file='{path}': the file is empty (0 bytes); expected a header" in message


def test_header_only_file(tmp_path, tiny_model):
    train_file = good_csv(tmp_path)
    test_file = tmp_path / "data" / "test.csv"
    test_file.write_text("text,label\n")
    message = refused(tmp_path, tiny_model, train_file=str(train_file), test_file=str(test_file))
    assert f"data.test_file='{test_file}': the file holds no rows" in message
    assert "found only the line 'text,label'" in message and "expected at least one" in message


# ----- columns, texts and labels ------------------------------------------------------------------


def test_missing_text_column_lists_the_columns_found(tmp_path, tiny_model):
    path = good_csv(tmp_path)
    message = refused(tmp_path, tiny_model, train_file=str(path), text_column="review")
    assert "data.text_column='review' is not a column of the train split" in message
    assert f"data.train_file='{path}'" in message and "columns found: text, label" in message


def test_missing_label_column_through_the_cli(tmp_path, tiny_model, tiny_data):
    path = good_csv(tmp_path)
    stderr = refused_by_cli(
        tmp_path,
        *tiny_overrides(tiny_model, tiny_data),
        f"data.train_file={path}",
        "data.label_column=stars",
    )
    assert "data.label_column='stars' is not a column of the train split" in stderr
    assert f"data.train_file='{path}'" in stderr and "columns found: text, label" in stderr


def test_every_text_empty_leaves_no_rows(tmp_path, tiny_model):
    rows = [{"text": " " if i % 2 else "", "label": "ab"[i % 2]} for i in range(6)]
    path = write_csv(tmp_path / "data" / "train.csv", rows)
    message = refused(tmp_path, tiny_model, train_file=str(path))
    assert f"The train split (data.train_file='{path}') has no usable rows" in message
    assert "all 6 have an empty or missing text in column(s) 'text'" in message


def test_empty_texts_are_refused_without_drop_empty(tmp_path, tiny_model):
    rows = make_rows(30, 0)
    for i in (3, 10):
        rows[i]["text"] = ""
    path = write_csv(tmp_path / "data" / "train.csv", rows)
    message = refused(tmp_path, tiny_model, train_file=str(path), drop_empty=False)
    assert f"The train split (data.train_file='{path}') has 2 row(s)" in message
    assert "column(s) 'text': row(s) 4, 11 (1-based" in message
    assert "set data.drop_empty=true" in message


def test_empty_labels_name_the_rows(tmp_path, tiny_model):
    rows = make_rows(30, 0)
    rows[6]["label"] = ""
    path = write_csv(tmp_path / "data" / "train.csv", rows)
    message = refused(tmp_path, tiny_model, train_file=str(path))
    assert f"The train split (data.train_file='{path}') has 1 row(s) with no label" in message
    assert "column 'label' (data.label_column): row(s) 7" in message
    assert "Expected a label in every row" in message


def test_labels_training_never_saw(tmp_path, tiny_model):
    train_file = good_csv(tmp_path)
    validation = [{"text": "vote bill senate", "label": "politics"}] * 2
    validation += [{"text": "rain cloud", "label": "weather"}, *make_rows(5, 1)]
    validation_file = write_csv(tmp_path / "data" / "validation.csv", validation)
    message = refused(
        tmp_path,
        tiny_model,
        train_file=str(train_file),
        validation_file=str(validation_file),
    )
    assert f"The validation split (data.validation_file='{validation_file}')" in message
    assert "has 3 row label(s) in column 'label' that the train split does not have" in message
    assert "'politics' (2 row(s)), 'weather' (1 row(s))" in message
    assert "Expected one of the known labels: 'cooking', 'music', 'sports'" in message


def test_a_single_class_in_training(tmp_path, tiny_model):
    path = write_csv(tmp_path / "data" / "train.csv", [{"text": "a b", "label": "x"}] * 10)
    message = refused(tmp_path, tiny_model, train_file=str(path))
    assert f"The train split (data.train_file='{path}') has a single label ('x'" in message
    assert "all 10 rows) in column 'label'; classification needs at least two" in message


# ----- token classification -------------------------------------------------------------------


def ner_files(tmp_path: Path, validation_lines: str) -> tuple[Path, Path]:
    train_file = write_conll(tmp_path / "data" / "train.conll", make_conll_sentences(20, 0))
    validation_file = tmp_path / "data" / "validation.conll"
    validation_file.write_text(validation_lines)
    return train_file, validation_file


def test_conll_line_with_the_wrong_column_count_through_the_cli(tmp_path, tiny_model, tiny_data):
    train_file, _ = ner_files(tmp_path, "Rust\tB-LANG\nis\tO\nNew York\tB-OS\n")
    stderr = refused_by_cli(
        tmp_path,
        *tiny_overrides(tiny_model, tiny_data),
        "experiment=debian_ner_minilm",
        f"data.train_file={train_file}",
    )
    validation_file = tmp_path / "data" / "validation.conll"
    assert f"data.validation_file='{validation_file}' line 3: 3 columns, expected 2" in stderr
    assert "found 'New York\\tB-OS'" in stderr


def test_conll_tag_outside_the_scheme(tmp_path, tiny_model):
    train_file, validation_file = ner_files(tmp_path, "Rust\tB-LANG\nis\tO\nfast\tI-\n")
    message = refused(
        tmp_path,
        tiny_model,
        cls=TokenClassificationDataModule,
        train_file=str(train_file),
        validation_file=str(validation_file),
    )
    assert f"data.validation_file='{validation_file}' line 3: tag 'I-' is not a IOB2" in message
    assert "expected O, B-<type>, I-<type>" in message


def test_tag_outside_the_declared_label_names(tmp_path, tiny_model):
    train_file, validation_file = ner_files(
        tmp_path, "Rust\tB-LANG\nis\tO\n\nLinux\tB-OS\nor\tO\nMars\tB-PLANET\n"
    )
    message = refused(
        tmp_path,
        tiny_model,
        cls=TokenClassificationDataModule,
        train_file=str(train_file),
        validation_file=str(validation_file),
        label_names=["O", "B-LANG", "I-LANG", "B-OS", "I-OS"],
    )
    assert f"data.validation_file='{validation_file}' line 6, word 3" in message
    assert "tag 'B-PLANET' is not among the tags of data.label_names (O, B-LANG" in message
    assert "1 sentence(s) with unknown tags ('B-PLANET')" in message


def test_json_tags_and_tokens_of_different_lengths(tmp_path, tiny_model):
    rows = [{"words": ["Rust", "code"], "ner": ["B-LANG", "O"]}] * 5
    rows.append({"words": ["Linux", "kernel", "code"], "ner": ["B-OS", "I-OS"]})
    path = tmp_path / "data" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(json.dumps(r) for r in rows))
    message = refused(
        tmp_path,
        tiny_model,
        cls=TokenClassificationDataModule,
        train_file=str(path),
        token_column="words",
        tag_column="ner",
    )
    assert f"The train split (data.train_file='{path}'), row 6: 3 tokens but 2 tags" in message
    assert "expected one tag per token" in message


# ----- language modelling ---------------------------------------------------------------------


def test_text_file_with_no_text(make_cfg, tmp_path):
    path = tmp_path / "data" / "train.txt"
    path.parent.mkdir()
    path.write_text("\n   \n\t\n")
    cfg = make_cfg("experiment=debian_mlm_minilm", f"data.train_file={path}")
    with untouched(tmp_path / "data"), pytest.raises(LmforgeError) as info:
        train(cfg)
    message = str(info.value)
    assert f"data.train_file='{path}': the file holds no text (3 line(s), all blank" in message
    assert "expected at least one line of text" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_language_modelling_column_of_empty_texts(tmp_path, tiny_model):
    path = write_csv(
        tmp_path / "data" / "train.csv", [{"id": 1, "body": ""}, {"id": 2, "body": "  "}]
    )
    message = refused(
        tmp_path,
        tiny_model,
        cls=LanguageModelingDataModule,
        train_file=str(path),
        text_column="body",
        block_size=16,
    )
    assert f"The train split (data.train_file='{path}') has no usable rows" in message
    assert "all 2 have an empty or missing text in column 'body'" in message
