"""NER: CoNLL parsing, subword alignment, entity metrics, an end-to-end tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

from lmforge.errors import LmforgeError
from lmforge.tasks.token_classification.data import (
    TokenClassificationDataModule,
    align_labels,
    read_conll,
)
from lmforge.tasks.token_classification.metrics import EntityScores
from lmforge.tasks.token_classification.module import entity_spans
from lmforge.train import train
from tests.helpers import make_conll_sentences, write_conll


def test_read_conll_skips_docstart_and_blank_runs(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\n\nPeter NNP B-PER\n")
    dataset = read_conll(str(path), "data.train_file", scheme="IOB2")
    assert dataset["tokens"] == [["EU", "rejects"], ["Peter"]]
    assert dataset["tags"] == [["B-ORG", "O"], ["B-PER"]]


def test_read_conll_column_choice(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("EU B-ORG NNP\nrejects O VBZ\n")
    dataset = read_conll(str(path), "k", token_index=0, tag_index=1)
    assert dataset["tags"] == [["B-ORG", "O"]]


@pytest.mark.parametrize(
    ("content", "scheme", "expected"),
    [
        ("EU B-ORG\nrejects VBZ O\n", "IOB2", "line 2: 3 columns, expected 2"),
        ("EU B-ORG\nrejects X-ORG\n", "IOB2", "line 2: tag 'X-ORG' is not a IOB2 tag"),
        ("EU S-ORG\n", "IOB2", "line 1: tag 'S-ORG' is not a IOB2 tag"),
        ("\n\n", "IOB2", "holds no sentences"),
        ("EU\n", "IOB2", "line 1: 'EU' has 1 column"),
    ],
)
def test_read_conll_errors_name_file_and_line(tmp_path, content, scheme, expected):
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(LmforgeError, match=r"bad\.conll") as info:
        read_conll(str(path), "data.train_file", scheme=scheme)
    assert expected in str(info.value)


def test_iobes_tags_are_accepted_under_iobes(tmp_path):
    path = tmp_path / "e.conll"
    path.write_text("New B-LOC\nYork E-LOC\nis O\nbig O\nParis S-LOC\n")
    assert read_conll(str(path), "k", scheme="IOBES")["tags"][0][-1] == "S-LOC"


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.conll"
    path.write_text("")
    with pytest.raises(LmforgeError, match="empty"):
        read_conll(str(path), "data.train_file")


def test_alignment_on_a_hand_checked_example():
    # [CLS] Py ##thon runs Linux ##ux [SEP]; words: Python=B-LANG(1) runs=O(0) Linux=B-OS(3)
    word_ids = [None, 0, 0, 1, 2, 2, None]
    word_labels = [1, 0, 3]
    inside_of = {1: 2, 3: 4}  # B-LANG -> I-LANG, B-OS -> I-OS
    assert align_labels(word_ids, word_labels, False, inside_of) == [
        -100,
        1,
        -100,
        0,
        3,
        -100,
        -100,
    ]
    assert align_labels(word_ids, word_labels, True, inside_of) == [-100, 1, 2, 0, 3, 4, -100]


def test_entity_metrics_match_hand_computed_values():
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    i = {n: k for k, n in enumerate(names)}

    def ids(tags):
        return torch.tensor([[i[t] for t in tags] + [-100] * (4 - len(tags))])

    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-ORG"], ["I-ORG", "O"]]  # partial PER, wrong type, broken I-
    labels = torch.cat([ids(t) for t in true])
    predictions = torch.cat([ids(p) for p in pred]).clamp(min=0)

    default = EntityScores(names)
    default.update(predictions, labels)
    values = default.compute()
    # conlleval mode: the lone I-ORG opens an ORG entity, which matches -> 1 of 3 right
    assert_close(values["precision"], torch.tensor(1 / 3))
    assert_close(values["recall"], torch.tensor(1 / 3))
    assert_close(values["f1"], torch.tensor(1 / 3))
    assert_close(values["f1_ORG"], torch.tensor(2 / 3))  # P 1/2, R 1
    assert_close(values["f1_PER"], torch.tensor(0.0))
    assert_close(values["f1_LOC"], torch.tensor(0.0))

    strict = EntityScores(names, strict=True, scheme="IOB2")
    strict.update(predictions, labels)
    values = strict.compute()
    # strict IOB2: an I- without B- is no entity -> nothing right
    assert_close(values["f1"], torch.tensor(0.0))
    assert_close(values["precision"], torch.tensor(0.0))


def build(tmp_path, tiny_model, **kwargs) -> TokenClassificationDataModule:
    dm = TokenClassificationDataModule(
        tokenizer=str(tiny_model), cache_dir=str(tmp_path / "cache"), max_length=32, **kwargs
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_datamodule_tags_and_truncation(tmp_path, tiny_model, tiny_ner):
    long = [[(f"w{k}", "O") for k in range(40)] + [("Linux", "B-OS")]]
    train = write_conll(tmp_path / "train.conll", make_conll_sentences(20, 0) + long)
    dm = build(
        tmp_path,
        tiny_model,
        train_file=str(train),
        validation_file=str(tiny_ner / "validation.conll"),
        test_file=str(tiny_ner / "test.conll"),
    )
    # O first, then B-/I- of every type seen in training (I-LANG although training has none)
    assert dm.label_names == ["O", "B-LANG", "I-LANG", "B-OS", "I-OS"]
    assert dm.meta["stats"]["train"]["truncated"] == 1
    example = dm.splits["train"][0]
    assert example["labels"][0] == -100  # [CLS]


def test_json_rows_with_tag_outside_training(tmp_path, tiny_model):
    rows = [{"words": ["Rust", "code"], "ner": ["B-LANG", "O"]}] * 10
    test_rows = [{"words": ["Mars"], "ner": ["B-PLANET"]}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in test_rows))
    with pytest.raises(LmforgeError, match="'B-PLANET' is not among the training tags"):
        build(
            tmp_path,
            tiny_model,
            train_file=str(tmp_path / "train.jsonl"),
            test_file=str(tmp_path / "test.jsonl"),
            token_column="words",
            tag_column="ner",
        )


def test_ner_end_to_end(make_cfg, tmp_path, tiny_ner):
    train(
        make_cfg(
            "experiment=debian_ner_minilm",
            f"data.train_file={tiny_ner / 'train.conll'}",
            "data.max_length=32",
            "trainer.max_epochs=4",
            "optimizer.lr=5e-3",
        )
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {
        "test/f1",
        "test/precision",
        "test/recall",
        "test/f1_LANG",
        "test/f1_OS",
        "test/token_acc",
    } <= set(metrics["test"])
    before = metrics["before_training"]
    assert "test/f1" in before["test"] and before["start"]["newly_initialised"]
    assert metrics["test"]["test/token_acc"] > before["test"]["test/token_acc"]


def test_entity_spans_map_tags_back_to_words():
    words = ["GNU", "Emacs", "runs", "on", "Linux", "and", "Mac", "OS", "X"]
    tags = ["B-ORG", "O", "O", "O", "B-OS", "O", "B-OS", "I-OS", "I-OS"]
    scores = [0.9, 0.1, 0.1, 0.1, 0.8, 0.1, 0.6, 0.9, 0.9]
    spans = entity_spans(words, tags, scores)
    assert [(s["type"], s["start"], s["end"], s["text"]) for s in spans] == [
        ("ORG", 0, 0, "GNU"),
        ("OS", 4, 4, "Linux"),
        ("OS", 6, 8, "Mac OS X"),
    ]
    assert spans[2]["score"] == pytest.approx(0.8)


def test_tag_words_returns_one_tag_per_word(make_cfg, tmp_path, tiny_ner):
    from lmforge.data.datamodule import load_tokenizer
    from lmforge.tasks.runs import load_task_module

    train(
        make_cfg(
            "experiment=debian_ner_minilm",
            f"data.train_file={tiny_ner / 'train.conll'}",
            "data.max_length=32",
            "trainer.max_epochs=1",
            "evaluate_before=false",
        )
    )
    module = load_task_module(tmp_path / "run" / "checkpoints" / "best.ckpt")
    tokenizer = load_tokenizer(str(tmp_path / "run" / "tokenizer"))
    words = ["written", "in", "Python", "for", "Windows"]
    (result,) = module.eval().tag_words([words], tokenizer)
    assert result["words"] == words and len(result["tags"]) == len(words)
    assert all(tag in module.label_names for tag in result["tags"])
    # Longer than the window: read in overlapping windows, every word tagged (none cut off).
    (long,) = module.tag_words([words * 6], tokenizer, max_length=8)
    assert len(long["tags"]) == 30 and all(score > 0 for score in long["scores"])


def test_label_all_subwords_labels_later_subwords_inside(tmp_path, tiny_model):
    sentence = [("internationalization", "B-LANG"), ("rocks", "O")]
    train = write_conll(tmp_path / "train.conll", [sentence] * 10)
    first = build(tmp_path / "first", tiny_model, train_file=str(train))
    every = build(tmp_path / "every", tiny_model, train_file=str(train), label_all_subwords=True)
    names = every.label_names
    first_labels = first.splits["train"][0]["labels"]
    every_labels = every.splits["train"][0]["labels"]
    pieces = len(every.tokenizer.tokenize("internationalization"))
    assert pieces > 1
    assert first_labels[1 : 1 + pieces] == [names.index("B-LANG")] + [-100] * (pieces - 1)
    assert every_labels[1 : 1 + pieces] == [names.index("B-LANG")] + [names.index("I-LANG")] * (
        pieces - 1
    )
