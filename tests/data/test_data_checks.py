"""The data checks before training: exact numbers on crafted data, warnings, `lmforge-check`."""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.tasks.language_modeling.data import LanguageModelingDataModule
from lmforge.tasks.text_classification.data import TextClassificationDataModule
from lmforge.tasks.token_classification.data import TokenClassificationDataModule
from lmforge.train import train
from tests.helpers import make_rows, run, script, tiny_overrides, write_conll, write_csv

SHORT = "goal team"  # well under max_length=32 tokens
LONG = "goal " * 60  # far over it


def build(tmp_path: Path, tiny_model: Path, cls=TextClassificationDataModule, **kwargs):
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    if cls is not LanguageModelingDataModule:
        kwargs.setdefault("max_length", 32)
    dm = cls(tokenizer=str(tiny_model), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def files(tmp_path: Path, **splits: list[dict]) -> dict[str, str]:
    """Write one csv per split under tmp_path/data; the datamodule's file arguments."""
    return {
        f"{split}_file": str(write_csv(tmp_path / "data" / f"{split}.csv", rows))
        for split, rows in splits.items()
    }


def test_duplicates_with_train_are_counted_after_whitespace_normalisation(tmp_path, tiny_model):
    train_rows = make_rows(30, 0)
    test_rows = make_rows(9, 5)
    # 3 training texts in test, with other spacing; one of them twice in validation
    for i, source in enumerate((0, 4, 7)):
        test_rows[i] = {**train_rows[source], "text": "  " + train_rows[source]["text"] + " "}
    test_rows[1]["text"] = test_rows[1]["text"].replace(" ", "\t", 1)
    validation_rows = [*make_rows(6, 6), train_rows[2], train_rows[2]]
    dm = build(
        tmp_path,
        tiny_model,
        **files(tmp_path, train=train_rows, validation=validation_rows, test=test_rows),
    )
    duplicates = dm.data_report["duplicates_with_train"]
    assert duplicates["test"]["count"] == 3
    # quoted normalised, long texts cut to 80 characters
    first = duplicates["test"]["examples"][0]
    assert first[:77] == " ".join(train_rows[0]["text"].split())[:77] and len(first) <= 80
    assert duplicates["validation"]["count"] == 2
    warnings = dm.data_report["warnings"]
    assert any(w.startswith("test: 3 of 9 examples also occur in train") for w in warnings)
    assert any(w.startswith("validation: 2 of 8 examples also occur in train") for w in warnings)


def test_truncated_share_per_split_and_the_heavy_truncation_warning(tmp_path, tiny_model):
    def rows(n_long: int, n: int) -> list[dict]:
        return [
            {"text": f"{LONG if i < n_long else SHORT} {i}", "label": "ab"[i % 2]} for i in range(n)
        ]

    dm = build(
        tmp_path,
        tiny_model,
        **files(tmp_path, train=rows(4, 10), validation=rows(1, 10), test=rows(0, 4)),
    )
    splits = dm.data_report["splits"]
    assert [splits[s]["truncated"] for s in ("train", "validation", "test")] == [4, 1, 0]
    assert [splits[s]["truncated_share"] for s in ("train", "validation", "test")] == [
        0.4,
        0.1,
        0.0,
    ]
    # over 20% warns (train only), and says which key to raise
    truncation = [w for w in dm.data_report["warnings"] if "truncated" in w]
    assert truncation == [
        "train: 40.0% of the examples (4 of 10) are longer than data.max_length=32 tokens and "
        "were truncated; raise data.max_length if their ends matter (memory and time grow "
        "with it)."
    ]


def test_empty_texts_are_dropped_counted_and_named(tmp_path, tiny_model):
    rows = make_rows(30, 0)
    for i, text in ((1, ""), (4, "   "), (8, "")):
        rows[i]["text"] = text
    validation = make_rows(6, 1)
    validation[0]["text"] = ""
    dm = build(tmp_path, tiny_model, **files(tmp_path, train=rows, validation=validation))
    splits = dm.data_report["splits"]
    assert splits["train"]["dropped_empty"]["count"] == 3
    assert splits["train"]["dropped_empty"]["rows"] == [2, 5, 9]
    assert splits["validation"]["dropped_empty"]["count"] == 1
    # the carved test split comes from train, whose count holds its empty rows
    assert splits["test"]["dropped_empty"]["count"] == 0
    assert splits["test"]["source"].startswith("carved from data.train_file=")
    assert splits["train"]["rows"] + splits["test"]["rows"] == 27
    assert splits["validation"]["rows"] == len(dm.splits["validation"]) == 5
    assert any(
        w.startswith("train: dropped 3 row(s) with an empty or missing text in column(s) 'text'")
        and "(row(s) 2, 5, 9;" in w
        for w in dm.data_report["warnings"]
    )


def test_label_counts_per_split_after_carving(tmp_path, tiny_model):
    # 10 of each label; 20% carved for validation and for test, stratified: 2 of each
    train_file = files(tmp_path, train=make_rows(30, 0))["train_file"]
    dm = build(tmp_path, tiny_model, train_file=train_file, validation_ratio=0.2, test_ratio=0.2)
    labels = {s: info["labels"] for s, info in dm.data_report["splits"].items()}
    assert labels == {
        "train": {"cooking": 6, "music": 6, "sports": 6},
        "validation": {"cooking": 2, "music": 2, "sports": 2},
        "test": {"cooking": 2, "music": 2, "sports": 2},
    }
    assert dm.data_report["warnings"] == []


def test_ner_tag_counts_and_duplicate_sentences(tmp_path, tiny_model):
    sentences = [
        [("Rust", "B-LANG"), ("is", "O"), ("fast", "O")],
        [("Red", "B-OS"), ("Hat", "I-OS"), ("Linux", "I-OS")],
        [("Perl", "B-LANG"), ("on", "O"), ("Linux", "B-OS")],
    ]
    train_file = write_conll(tmp_path / "data" / "train.conll", sentences * 2)
    test_file = write_conll(tmp_path / "data" / "test.conll", sentences[:1])
    validation_file = write_conll(
        tmp_path / "data" / "validation.conll", [[("Go", "B-LANG"), ("rocks", "O")]]
    )
    dm = build(
        tmp_path,
        tiny_model,
        cls=TokenClassificationDataModule,
        train_file=str(train_file),
        validation_file=str(validation_file),
        test_file=str(test_file),
    )
    report = dm.data_report
    assert report["splits"]["train"]["labels"] == {
        "O": 6,
        "B-LANG": 4,
        "I-LANG": 0,
        "B-OS": 4,
        "I-OS": 4,
    }
    assert report["splits"]["test"]["labels"]["B-LANG"] == 1
    assert report["duplicates_with_train"]["test"] == {"count": 1, "examples": ["Rust is fast"]}
    assert report["duplicates_with_train"]["validation"]["count"] == 0


def test_language_modelling_drops_empty_documents_and_counts_overlap(tmp_path, tiny_model):
    docs = [{"id": i, "body": f"document number {i} about goals"} for i in range(12)]
    docs[3]["body"] = ""
    test = [{"id": 0, "body": docs[5]["body"]}, {"id": 1, "body": "something new"}]
    dm = build(
        tmp_path,
        tiny_model,
        cls=LanguageModelingDataModule,
        text_column="body",
        block_size=8,
        mode="truncate",
        **files(tmp_path, train=docs, validation=docs[6:8], test=test),
    )
    report = dm.data_report
    assert report["splits"]["train"]["dropped_empty"] == {
        "count": 1,
        "rows": [4],
        "what": "an empty or missing text in column 'body'",
    }
    assert report["splits"]["train"]["rows"] == 11
    assert report["duplicates_with_train"] == {
        "validation": {"count": 2, "examples": [docs[6]["body"], docs[7]["body"]]},
        "test": {"count": 1, "examples": [docs[5]["body"]]},
    }
    assert report["length_limit"] == {"key": "data.block_size", "value": 8}
    assert report["splits"]["train"]["labels"] is None


def test_the_report_is_the_same_from_the_cache(tmp_path, tiny_model, tiny_data):
    kwargs = {"train_file": str(tiny_data / "train.csv"), "max_train_samples": 50}
    first = build(tmp_path, tiny_model, **kwargs)
    second = build(tmp_path, tiny_model, **kwargs)
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert first.data_report == second.data_report
    assert second.data_report["splits"]["train"]["used"] == 50
    json.dumps(second.data_report)  # plain data, ready for metrics.json


def test_metrics_json_records_the_data_checks(make_cfg, tmp_path):
    cfg = make_cfg("train=false", "test=false", "evaluate_before=false", "compare.baselines=[]")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    checks = metrics["data_checks"]
    assert set(checks["splits"]) == {"train", "validation", "test"}
    assert checks["splits"]["train"]["labels"] == {"cooking": 32, "music": 32, "sports": 32}


# ----- lmforge-check --------------------------------------------------------------------------


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the rich tables in `text`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def test_lmforge_check_prints_a_summary_and_exits_0(tmp_path, tiny_model, tiny_data):
    result = run(
        script("lmforge-check"),
        *tiny_overrides(tiny_model, tiny_data),
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.max_length=8",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "Data check" in out and "The data is usable (3 warning(s))." in out
    rows = {cells[0]: cells[1:] for cells in table_rows(out)}
    assert rows["train"] == ["96", "96", "96", "0", "85.4%", "-"]
    assert rows["test"] == ["30", "30", "30", "0", "86.7%", "0"]
    for label in ("cooking", "music", "sports"):
        assert rows[label] == ["32", "10", "10"]
    assert "truncated" in out and "raise data.max_length" in out
    # only Hydra's record and the log, under outputs/check/
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    written = [p for p in written if not p.startswith("cache")]
    assert len(written) == 4 and all(p.startswith("outputs/check/runs/") for p in written)
    assert {Path(p).name for p in written} == {
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
        "check.log",
    }


def test_lmforge_check_on_bad_data_exits_1_with_the_message(tmp_path, tiny_model, tiny_data):
    path = write_csv(tmp_path / "data" / "train.csv", make_rows(20, 0))
    result = run(
        script("lmforge-check"),
        *tiny_overrides(tiny_model, tiny_data),
        f"data.train_file={path}",
        "data.label_column=stars",
        f"paths.cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "lmforge: error: data.label_column='stars' is not a column" in result.stderr
    assert "Traceback" not in result.stderr
