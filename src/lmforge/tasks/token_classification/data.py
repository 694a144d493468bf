"""Data for token classification (named-entity recognition): CoNLL files, JSON, hub data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import datasets
from transformers import DataCollatorForTokenClassification, PreTrainedTokenizerBase

from lmforge.data.datamodule import TextDataModule
from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.sources import FORMATS, check_file, load_file, require_columns
from lmforge.errors import LmforgeError

CONLL_SUFFIXES = (".conll", ".conllu", ".iob", ".iob2", ".bio", ".txt")
# Tag prefixes each scheme allows besides "O".
SCHEME_PREFIXES = {"IOB1": ("B", "I"), "IOB2": ("B", "I"), "IOBES": ("B", "I", "E", "S")}


def check_tag(tag: str, scheme: str) -> bool:
    """Whether `tag` is "O" or `<prefix>-<type>` with a prefix of `scheme`."""
    if tag == "O":
        return True
    match = re.fullmatch(r"([A-Z])-(.+)", tag)
    return match is not None and match.group(1) in SCHEME_PREFIXES[scheme]


def read_conll(
    path: str,
    key: str,
    token_index: int = 0,
    tag_index: int = -1,
    scheme: str | None = None,
    with_lines: bool = False,
) -> datasets.Dataset:
    """Read a CoNLL-style file: one token per line, columns split on whitespace, a blank line
    between sentences, `-DOCSTART-` lines skipped. Every line must have as many columns as the
    first one; with `scheme`, every tag must belong to it. Errors name the file and line.

    With `with_lines`, a `lines` column holds each token's line number, so later checks can
    point at the line too.
    """
    file = check_file(path, key, CONLL_SUFFIXES)
    sentences: list[tuple[list[str], list[str], list[int]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    expected: int | None = None
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                if tokens:
                    sentences.append((tokens, tags, lines))
                tokens, tags, lines = [], [], []
                continue
            if fields[0] == "-DOCSTART-":
                continue
            if expected is None:
                expected = len(fields)
                if expected < 2:
                    raise LmforgeError(
                        f"{key}={path!r} line {number}: {line.strip()!r} has 1 column; a CoNLL "
                        "file needs a token and a tag per line."
                    )
            if len(fields) != expected:
                raise LmforgeError(
                    f"{key}={path!r} line {number}: {len(fields)} columns, expected {expected} "
                    f"like the first token line; found {line.strip()!r}. Every token line needs "
                    "the same columns (a token containing a space splits into two)."
                )
            tag = fields[tag_index]
            if scheme and not check_tag(tag, scheme):
                prefixes = ", ".join(f"{p}-<type>" for p in SCHEME_PREFIXES[scheme])
                raise LmforgeError(
                    f"{key}={path!r} line {number}: tag {tag!r} is not a {scheme} tag "
                    f"(expected O, {prefixes}; set data.tag_scheme if the file uses another)."
                )
            tokens.append(fields[token_index])
            tags.append(tag)
            lines.append(number)
    if tokens:
        sentences.append((tokens, tags, lines))
    if not sentences:
        raise LmforgeError(
            f"{key}={path!r}: the file holds no sentences (only blank or -DOCSTART- lines); "
            "expected token and tag lines."
        )
    columns: dict[str, list[Any]] = {
        "tokens": [s[0] for s in sentences],
        "tags": [s[1] for s in sentences],
    }
    if with_lines:
        columns["lines"] = [s[2] for s in sentences]
    return datasets.Dataset.from_dict(columns)


def align_labels(
    word_ids: list[int | None],
    word_labels: list[int],
    label_all_subwords: bool,
    inside_of: dict[int, int],
) -> list[int]:
    """One label per subword: the word's label on its first subword; later subwords get
    IGNORE_INDEX, or (with `label_all_subwords`) the word's label with B- turned into I-."""
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE_INDEX)
        elif word != previous:
            labels.append(word_labels[word])
        elif label_all_subwords:
            labels.append(inside_of.get(word_labels[word], word_labels[word]))
        else:
            labels.append(IGNORE_INDEX)
        previous = word
    return labels


class TokenClassificationDataModule(TextDataModule):
    """Sentences as word lists with one tag per word (IOB1, IOB2/BIO or IOBES).

    Tag names come from `label_names` or the training split: "O", then every tag of the scheme
    for each entity type seen in training (B-/I-, plus E-/S- for IOBES). Words are split into
    subwords with a fast tokenizer; the first subword carries the word's tag (or every subword,
    with `label_all_subwords`).
    """

    supported_suffixes = (*FORMATS, *CONLL_SUFFIXES)

    def __init__(
        self,
        *,
        token_column: str = "tokens",
        tag_column: str = "tags",
        label_names: list[str] | None = None,
        tag_scheme: str = "IOB2",
        label_all_subwords: bool = False,
        conll_token_index: int = 0,
        conll_tag_index: int = -1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if tag_scheme not in SCHEME_PREFIXES:
            raise LmforgeError(
                f"data.tag_scheme={tag_scheme!r}; expected one of {', '.join(SCHEME_PREFIXES)}."
            )
        self.token_column = token_column
        self.tag_column = tag_column
        self.configured_label_names = list(label_names) if label_names else None
        self.tag_scheme = tag_scheme
        self.label_all_subwords = label_all_subwords
        self.conll_token_index = conll_token_index
        self.conll_tag_index = conll_tag_index
        self._inside_of: dict[int, int] = {}
        # Per split read from CoNLL: each token's line (errors name it); rows dropped as empty.
        self._token_lines: dict[str, list[list[int]]] = {}
        self._empty: dict[str, list[int]] = {}

    @property
    def label_names(self) -> list[str]:
        return self.meta["label_names"]

    def model_inputs(self) -> dict[str, Any]:
        return {"label_names": self.label_names}

    def run_settings(self) -> dict[str, Any]:
        # Inputs are words: a row's list of words, or a text split on whitespace.
        return {**super().run_settings(), "text_column": self.token_column}

    def preprocessing_settings(self) -> dict[str, Any]:
        return {
            **super().preprocessing_settings(),
            "token_column": self.token_column,
            "tag_column": self.tag_column,
            "label_names": self.configured_label_names,
            "tag_scheme": self.tag_scheme,
            "label_all_subwords": self.label_all_subwords,
            "conll": [self.conll_token_index, self.conll_tag_index],
        }

    def read_file(self, path: str, key: str) -> datasets.Dataset:
        if Path(path).suffix.lower() in CONLL_SUFFIXES:
            dataset = read_conll(
                path,
                key,
                self.conll_token_index,
                self.conll_tag_index,
                self.tag_scheme,
                with_lines=True,
            )
            # CoNLL columns are always read as tokens/tags.
            self.token_column, self.tag_column = "tokens", "tags"
            split = key.removeprefix("data.").removesuffix("_file")
            self._token_lines[split] = dataset["lines"]
            return dataset.remove_columns("lines")
        return load_file(path, key)

    def _names_of(self, dataset: datasets.Dataset) -> list[str] | None:
        feature = dataset.features[self.tag_column]
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.ClassLabel):
            return list(inner.names)
        return None

    def _where(self, split: str, row: int, position: int = 0) -> str:
        """Where a sentence (0-based `row` of the split after dropping) is: its file and line
        for CoNLL, its row number (1-based, as in the file) otherwise."""
        for dropped in self._empty.get(split, []):
            row += dropped <= row
        if lines := self._token_lines.get(split):
            return f"{self.source_of(split)} line {lines[row][position]}"
        return f"The {split} split ({self.source_of(split)}), row {row + 1}"

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        """Columns exist; each sentence with words has one tag per word."""
        columns = {"token_column": self.token_column, "tag_column": self.tag_column}
        require_columns(dataset, columns, split, self.source_of(split))
        self._empty[split] = []  # rows are numbered as read until empty ones are dropped
        for row, (words, tags) in enumerate(
            zip(dataset[self.token_column], dataset[self.tag_column], strict=True)
        ):
            if words and len(words) != len(tags or []):
                raise LmforgeError(
                    f"{self._where(split, row)}: {len(words)} tokens but {len(tags or [])} tags "
                    f"in columns {self.token_column!r}/{self.tag_column!r}; expected one tag per "
                    "token."
                )

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        rows = dataset[self.token_column]
        empty = [i for i, words in enumerate(rows) if not any(str(w).strip() for w in words or [])]
        self._empty[split] = empty
        return empty, f"no tokens in column {self.token_column!r}"

    def row_texts(self, dataset: datasets.Dataset) -> list[str]:
        return [" ".join(map(str, words)) for words in dataset[self.token_column]]

    def label_counts(self, dataset: datasets.Dataset, meta: dict[str, Any]) -> dict[str, int]:
        """Words per tag."""
        names = meta["label_names"]
        counts = [0] * len(names)
        for row in dataset["word_labels"]:
            for tag in row:
                counts[tag] += 1
        return dict(zip(names, counts, strict=True))

    def _check_tags(self, split: str, rows: list[list[str]], index: dict[str, int]) -> None:
        """Every tag belongs to the scheme and to the known tags; errors say where."""
        prefixes = ", ".join(f"{p}-<type>" for p in SCHEME_PREFIXES[self.tag_scheme])
        for row, tags in enumerate(rows):
            for position, tag in enumerate(tags):
                where = f"{self._where(split, row, position)}, word {position + 1}"
                if not check_tag(tag, self.tag_scheme):
                    raise LmforgeError(
                        f"{where}: tag {tag!r} is not a {self.tag_scheme} tag; expected O or "
                        f"{prefixes} (set data.tag_scheme if the data uses another scheme)."
                    )
                if tag not in index:
                    known = (
                        "tags of data.label_names"
                        if self.configured_label_names
                        else ("training tags")
                    )
                    unknown = sorted({t for r in rows for t in r if t not in index})
                    count = sum(1 for r in rows if any(t not in index for t in r))
                    raise LmforgeError(
                        f"{where}: tag {tag!r} is not among the {known} ({', '.join(index)}). "
                        f"The {split} split has {count} sentence(s) with unknown tags "
                        f"({', '.join(map(repr, unknown))}); expected only known tags (list "
                        "every tag in data.label_names, or fix the data)."
                    )

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        class_names = self._names_of(raw["train"])
        if self.configured_label_names:
            names = self.configured_label_names
        elif class_names:
            names = class_names
        else:
            # Every tag of each entity type seen in training, so a multi-word entity that only
            # validation has (an I- tag) is still known. Malformed tags are refused below.
            found = {
                t[2:]
                for row in raw["train"][self.tag_column]
                for t in row
                if t != "O" and check_tag(t, self.tag_scheme)
            }
            prefixes = SCHEME_PREFIXES[self.tag_scheme]
            names = ["O", *(f"{p}-{kind}" for kind in sorted(found) for p in prefixes)]
        index = {name: i for i, name in enumerate(names)}
        # B-X -> I-X, for later subwords of a word when every subword is labelled.
        self._inside_of = {
            i: index[f"I-{n[2:]}"]
            for n, i in index.items()
            if n.startswith("B-") and f"I-{n[2:]}" in index
        }
        encoded = {}
        for split, dataset in raw.items():
            split_names = self._names_of(dataset)
            rows = dataset[self.tag_column]
            if split_names:
                rows = [[split_names[t] for t in row] for row in rows]
            self._check_tags(split, rows, index)
            ids = [[index[t] for t in row] for row in rows]
            dataset = dataset.remove_columns(self.tag_column)
            encoded[split] = dataset.add_column("word_labels", ids)
        # Tag counts per split are in the data checks (after carving).
        return datasets.DatasetDict(encoded), {"label_names": names, "tag_scheme": self.tag_scheme}

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        tokenizer = cast(PreTrainedTokenizerBase, self.tokenizer)  # loaded before tokenizing
        if not tokenizer.is_fast:
            raise LmforgeError(
                f"model.tokenizer={self.tokenizer_name!r} is not a fast tokenizer; token "
                "classification needs one to map subwords back to words."
            )
        words = [[str(w) for w in row] for row in batch[self.token_column]]
        encoded = tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=self.max_length
        )
        labels, truncated = [], []
        for i, row_labels in enumerate(batch["word_labels"]):
            word_ids = encoded.word_ids(i)
            labels.append(
                align_labels(word_ids, row_labels, self.label_all_subwords, self._inside_of)
            )
            last = max((w for w in word_ids if w is not None), default=-1)
            truncated.append(last < len(row_labels) - 1)
        out = dict(encoded)
        out["labels"] = labels
        out["_truncated"] = truncated
        return out

    def build_collator(self) -> DataCollatorForTokenClassification:
        return DataCollatorForTokenClassification(
            cast(PreTrainedTokenizerBase, self.tokenizer),  # loaded before batching
            label_pad_token_id=IGNORE_INDEX,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
