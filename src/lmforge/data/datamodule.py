"""The shared LightningDataModule: raw splits -> checks -> tokenized (cached) -> batches.

Task datamodules subclass `TextDataModule` and fill in how rows become model inputs; loading,
split carving, caching, caps and batching live here once.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lmforge.config.resources import train_split
from lmforge.data.checks import build_report, drop_empty_rows, log_report
from lmforge.data.sampler import ResumableDataLoader, SeededBatchSampler
from lmforge.data.sources import (
    FORMATS,
    SPLIT_NAME_ALIASES,
    check_file,
    check_folder,
    file_fingerprint,
    folder_fingerprint,
    load_file,
    load_splits,
    read_text_folder,
    require_source,
)
from lmforge.data.splits import SPLITS
from lmforge.data.streaming import StreamedTrainingSet, StreamLoader, rank_stream
from lmforge.data.tokenization import load_tokenizer
from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

# Bump when the cached layout or preprocessing code changes, so old caches are not reused.
# 2: empty rows dropped before tokenization; meta.json holds the data checks.
CACHE_FORMAT = 2


def load_tokenizer_for_batching(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer that can pad: GPT-style tokenizers without a pad token pad with EOS."""
    tokenizer = load_tokenizer(name_or_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info(
            "The tokenizer has no pad token; padding with its EOS token %r.", tokenizer.eos_token
        )
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A content hash of the tokenizer, so a changed tokenizer at the same path re-tokenizes."""
    if tokenizer.is_fast:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        # Truncation/padding state changes with every call; it is not part of the vocabulary.
        state.pop("truncation", None)
        state.pop("padding", None)
        content = json.dumps(state, sort_keys=True)
    else:
        content = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([type(tokenizer).__name__, tokenizer.all_special_tokens])
    return hashlib.sha256((content + extra).encode()).hexdigest()


# Tokenizing processes: at most this many by default, and one per this many rows at most.
MAX_PROCESSES = 8
MIN_ROWS_PER_PROCESS = 1000


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class TextDataModule(pl.LightningDataModule):
    """Loads, checks, tokenizes (with an on-disk cache) and batches text data.

    Subclasses implement `encode_targets` (raw rows -> a `labels` column, plus any metadata such
    as label names) and `tokenize` (a batch of rows -> model inputs), and may set
    `stratify_column` for seeded stratified carving of missing splits.
    """

    stratify_column: str | None = None
    # Whether the training split may be streamed (data.streaming=true); see `stream_refusal`.
    supports_streaming: bool = False
    # Local file endings this datamodule reads (see `read_file`).
    supported_suffixes: tuple[str, ...] = tuple(FORMATS)

    def __init__(
        self,
        *,
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        dataset_name: str | None = None,
        dataset_config: str | None = None,
        tokenizer: str,
        max_length: int = 128,
        cache_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        group_by_length: bool = True,
        pad_to_multiple_of: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_test_samples: int | None = None,
        validation_ratio: float = 0.1,
        test_ratio: float = 0.1,
        seed: int = 0,
        drop_empty: bool = True,
        invalid_utf8: str = "error",
        folder_classes: list[str] | None = None,
        num_proc: int | None = None,
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        stream_check_rows: int = 1000,
    ) -> None:
        super().__init__()
        self.sources = {
            "train_file": train_split(train_file),
            "validation_file": validation_file,
            "test_file": test_file,
            "dataset_name": dataset_name,
            "dataset_config": dataset_config,
        }
        self.tokenizer_name = tokenizer
        self.max_length = max_length
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "lmforge-cache")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.group_by_length = group_by_length
        # Batches are padded to a multiple of this (None: to their longest example).
        self.pad_to_multiple_of = pad_to_multiple_of
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.caps = {
            "train": max_train_samples,
            "validation": max_eval_samples,
            "test": max_test_samples,
        }
        self.validation_ratio = validation_ratio
        self.test_ratio = test_ratio
        self.seed = seed
        # (epoch, batches done) of a run resumed mid-epoch: where its training batches continue.
        self.resume_point: tuple[int, int] | None = None
        self.drop_empty = drop_empty
        # Folders of text files (see lmforge.data.sources.read_text_folder): what to do with a
        # file that is not UTF-8, and which class folders to read (None: all).
        # Processes that tokenize a split (None: the cores available, at most MAX_PROCESSES);
        # not part of the cache key: the result is the same for any number.
        self.num_proc = num_proc
        # Streamed training data (see lmforge.data.streaming): the shuffle buffer's size in
        # examples, and the rows of the stream's head that the data checks read.
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer
        self.stream_check_rows = stream_check_rows
        self.invalid_utf8 = invalid_utf8
        self.folder_classes = list(folder_classes) if folder_classes is not None else None
        # What reading each folder split found (files read, skipped and why), for the checks.
        self.source_notes: dict[str, str] = {}
        # The data checks (see lmforge.data.checks.build_report), filled by `setup`: a plain
        # dict for the log, `lmforge-check` and metrics.json.
        self.data_report: dict[str, Any] = {}
        self._dropped: dict[str, dict[str, Any]] = {}
        # What `select_rows` did, per split, for the data checks (a few-shot draw's counts).
        self.selection_notes: dict[str, str] = {}
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.lengths: dict[str, list[int]] = {}
        self.meta: dict[str, Any] = {}
        self.data_fingerprints: dict[str, str] = {}
        self.cache_hit: bool | None = None
        self._cache_path: Path | None = None
        self._raw: datasets.DatasetDict | None = None

    # ----- hooks for task datamodules -------------------------------------------------------
    def model_inputs(self) -> dict[str, Any]:
        """What the data tells the task module (label names, ...): keyword arguments of its
        constructor. Known after `setup`."""
        return {}

    def run_settings(self) -> dict[str, Any]:
        """What prediction and export must remember of this data: the sequence length and the
        input columns (no data is read)."""
        return {"max_length": self.max_length}

    def preprocessing_settings(self) -> dict[str, Any]:
        """Settings that change the tokenized data; part of the cache key."""
        return {"max_length": self.max_length, "drop_empty": self.drop_empty}

    def encode_targets(self, raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, dict]:
        """Check the raw splits and add a `labels` column; return metadata (e.g. label names)."""
        raise NotImplementedError

    def tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        """Turn a batch of rows into model inputs (`input_ids`, ..., `labels`)."""
        raise NotImplementedError

    def build_collator(self) -> Callable[..., Any]:
        """The function that pads a list of examples into a batch."""
        raise NotImplementedError

    def eval_collator(self) -> Callable[..., Any]:
        """The collator of validation/test batches (the training one unless overridden)."""
        return self.build_collator()

    def read_file(self, path: str, key: str) -> datasets.Dataset:
        """Read one local data file (`key` names it in errors); override for other formats."""
        return load_file(path, key)

    def folder_columns(self) -> tuple[str, str | None] | None:
        """The columns a folder of text files fills: (text column, label column or None for
        one document per file); None where the task reads no folders."""
        return None

    def stream_builder(self, file: Path) -> tuple[str, dict]:
        """The `datasets` builder (and its arguments) that streams a local training file."""
        return FORMATS[file.suffix.lower()]

    def stream_keeps(self, row: dict[str, Any]) -> bool:
        """Whether a streamed training row is kept (rows without text are not)."""
        return True

    def stream_refusal(self) -> str | None:
        """Why this data, as configured, cannot stream its training split (None: it can)."""
        if self.supports_streaming:
            return None
        return "its targets need the whole training split up front"

    def stream_examples(self, encoded: dict[str, list]) -> dict[str, list]:
        """A tokenized batch of streamed training rows as the examples that train (the last
        step of `after_tokenize` and `_capped` that applies to a stream)."""
        encoded.pop("truncated")
        encoded.pop("length")
        return encoded

    @property
    def tokenize_is_row_wise(self) -> bool:
        """Whether `tokenize` turns each row into its outputs alone; a datamodule whose output
        depends on the rows batched together (blocks grouped across documents) says False and
        tokenizes in one process, since processes would cut the batches elsewhere."""
        return True

    def processes_for(self, rows: int) -> int:
        """Processes that tokenize a split of `rows` rows: `num_proc` or the cores available
        (at most MAX_PROCESSES), one per MIN_ROWS_PER_PROCESS rows at most, since starting a
        process costs more than a small split's tokenization."""
        if not self.tokenize_is_row_wise:
            return 1
        wanted = self.num_proc or min(available_cores(), MAX_PROCESSES)
        return max(1, min(wanted, rows // MIN_ROWS_PER_PROCESS))

    def _without_state(self) -> TextDataModule:
        """A copy to hand to tokenizing processes: what tokenizing needs, not the trainer (and
        its model) or the loaded splits, which would be pickled to every process."""
        clone = copy.copy(self)
        clone.__dict__.update(trainer=None, _raw=None, splits={}, lengths={})
        return clone

    def _read(self, path: str, key: str) -> datasets.Dataset:
        """A split from a file (`read_file`) or from a folder of text files."""
        if not Path(path).expanduser().is_dir():
            return self.read_file(path, key)
        columns = self.folder_columns()
        if columns is None:
            raise LmforgeError(
                f"{key}={path!r} is a folder; this task reads data files "
                f"({', '.join(self.supported_suffixes)}), not folders of text files."
            )
        dataset, note = read_text_folder(
            path, key, *columns, classes=self.folder_classes, invalid_utf8=self.invalid_utf8
        )
        self.source_notes[key] = note
        return dataset

    def after_tokenize(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """A last, cached step per split (e.g. fixed masking of evaluation data)."""
        return dataset

    @property
    def length_key(self) -> str:
        """Config key of the length limit, named in truncation warnings: the one the family
        spec declares for this data format."""
        from lmforge.tasks import length_key_of

        return length_key_of(type(self).__name__)

    def check_split(self, split: str, dataset: datasets.Dataset) -> None:
        """Refuse a raw split the task cannot use (missing columns, missing labels)."""

    def empty_rows(self, split: str, dataset: datasets.Dataset) -> tuple[list[int], str]:
        """0-based indices of rows with no text, and how to describe them ("an empty ...")."""
        return [], ""

    def row_texts(self, dataset: datasets.Dataset) -> list[str] | None:
        """The text of each raw row, compared across splits by the duplicate check."""
        return None

    def label_counts(self, dataset: datasets.Dataset, meta: dict[str, Any]) -> dict | None:
        """Examples per label (words per tag for NER) of an encoded split; None without labels."""
        return None

    def no_examples_reason(self, dataset: datasets.Dataset) -> str:
        """Why a split with rows gave no example (families that merge rows say how)."""
        return "Check that its rows hold text in the configured columns."

    def source_of(self, split: str) -> str:
        """Where a split comes from, as errors and the data report name it."""
        if path := self.sources.get(f"{split}_file"):
            return f"data.{split}_file={path!r}"
        if name := self.sources["dataset_name"]:
            return f"data.dataset_name={name!r}, {split} split"
        return f"carved from {self.source_of('train')}"

    # ----- preparation ------------------------------------------------------------------------
    def _ensure_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer_for_batching(self.tokenizer_name)
        return self.tokenizer

    def _resolve_cache_path(self) -> Path:
        if self._cache_path is None:
            tokenizer = self._ensure_tokenizer()
            self.data_fingerprints = self._source_fingerprints()
            key = {
                "format": CACHE_FORMAT,
                "datamodule": type(self).__name__,
                "tokenizer": tokenizer_fingerprint(tokenizer),
                "data": self.data_fingerprints,
                "settings": self.preprocessing_settings(),
                "carving": self._carving_settings(),
            }
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
            self._cache_path = self.cache_dir / f"{type(self).__name__}-{digest}"
        return self._cache_path

    def _carving_settings(self) -> list[Any] | None:
        """What decides carved validation/test splits; None when local files give both, so a new
        seed reuses the tokenized data (a hub data set's splits are known only once loaded)."""
        given = self.sources["validation_file"] and self.sources["test_file"]
        if given and not self.sources["dataset_name"]:
            return None
        return [self.validation_ratio, self.test_ratio, self.seed]

    def _source_fingerprints(self) -> dict[str, str]:
        """Identify the raw data: local files by content, hub data by its loaded fingerprint."""
        if self.streaming:
            return self._streaming_fingerprints()
        if self.sources["dataset_name"]:
            self._raw, fingerprints = load_splits(**self.sources, reader=self._read)
            return fingerprints
        require_source(self.sources["train_file"], None)
        return self._file_fingerprints(SPLITS)

    def _file_fingerprints(self, splits: Iterable[str]) -> dict[str, str]:
        fingerprints = {}
        for split in splits:
            if not (path := self.sources[f"{split}_file"]):
                continue
            key = f"data.{split}_file"
            if Path(path).expanduser().is_dir():
                # What decides the rows read from a folder is part of its identity.
                folder = folder_fingerprint(check_folder(path, key))
                settings = json.dumps([self.invalid_utf8, self.folder_classes])
                fingerprints[split] = hashlib.sha256((folder + settings).encode()).hexdigest()
            else:
                fingerprints[split] = file_fingerprint(
                    check_file(path, key, self.supported_suffixes)
                )
        return fingerprints

    def prepare_data(self) -> None:
        """Tokenize every split once and cache it on disk (runs on one process per node)."""
        cache_path = self._resolve_cache_path()
        # Lightning calls prepare_data again at fit: the first call tells whether the run hit.
        if (cache_path / "meta.json").is_file():
            if self.cache_hit is None:
                self.cache_hit = True
            log.info("Tokenized data: cache hit at %s", cache_path)
            return
        self.cache_hit = False
        raw, meta = self._checked_raw_splits()
        tokenized, stats = {}, {}
        for split, dataset in raw.items():
            columns = dataset.column_names
            processes = self.processes_for(len(dataset))
            tokenized[split] = dataset.map(
                (self._without_state() if processes > 1 else self)._tokenize_with_stats,
                batched=True,
                remove_columns=columns,
                desc=f"Tokenizing {split}",
                load_from_cache_file=False,
                num_proc=processes if processes > 1 else None,
            )
            if len(tokenized[split]) == 0 and len(dataset) > 0:
                raise LmforgeError(
                    f"The {split} split ({self.source_of(split)}) has {len(dataset):,} row(s) "
                    f"but gives no example once tokenized. {self.no_examples_reason(dataset)}"
                )
            stats[split] = {
                "examples": len(tokenized[split]),
                "truncated": int(sum(tokenized[split]["truncated"])),
            }
            tokenized[split] = self.after_tokenize(
                split, tokenized[split].remove_columns("truncated")
            )
        meta["stats"] = stats
        meta["data_checks"] = self._data_checks(raw, stats, meta)
        meta["data_checks"]["notes"] += list(self.source_notes.values())
        # Write to a temporary folder and rename, so a crash or a concurrent run never leaves a
        # half-written cache entry that a later run would trust.
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_path.parent, prefix=".tmp-"))
        datasets.DatasetDict(tokenized).save_to_disk(str(tmp / "data"))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.rename(tmp, cache_path)
        except OSError:  # another process finished first: keep its entry
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("Tokenized data cached at %s", cache_path)

    def _checked_raw_splits(self) -> tuple[datasets.DatasetDict, dict[str, Any]]:
        """The raw splits, checked and with their targets, missing splits carved; and meta."""
        if self.streaming:
            raw = self._raw or self._streaming_raw_splits()
        else:
            raw = self._raw or load_splits(**self.sources, reader=self._read)[0]
        raw = self._drop_empty_rows(raw)
        raw, meta = self.encode_targets(raw)
        if self.streaming:
            meta["carved_splits"] = []
            self.source_notes["data.streaming"] = (
                f"train is streamed: its checks above read the first {len(raw['train'])} rows "
                f"of the stream (data.stream_check_rows={self.stream_check_rows}); the rest "
                "is read, shuffled and tokenized as training goes."
            )
            return raw, meta
        raw, meta["carved_splits"] = self._carve_missing_splits(raw)
        return raw, meta

    # ----- streamed training data (data.streaming=true; see lmforge.data.streaming) ----------
    def _stream_source(self) -> datasets.IterableDataset:
        """The raw training rows as a `datasets` stream (local file or hub), rows without text
        left out."""
        path, name = self.sources["train_file"], self.sources["dataset_name"]
        if path:
            file = Path(path).expanduser()
            if file.is_dir():
                raise LmforgeError(
                    f"data.train_file={path!r} is a folder: data.streaming=true streams files "
                    "(or a hub data set); read the folder without streaming, or give its files."
                )
            # A pattern (corpus/*.txt) streams its files as shards: DataLoader workers and
            # ranks then read whole files each.
            files = sorted(glob.glob(str(file))) if glob.has_magic(str(file)) else [str(file)]
            if not files:
                raise LmforgeError(f"data.train_file={path!r}: the pattern matches no file.")
            for name in files:
                if (
                    not Path(name).is_file()
                    or Path(name).suffix.lower() not in self.supported_suffixes
                ):
                    check_file(name, "data.train_file", self.supported_suffixes)  # says why
            builder, options = self.stream_builder(Path(files[0]))
            stream = datasets.load_dataset(
                builder, data_files=files, split="train", streaming=True, **options
            )
        else:
            require_source(None, name)
            try:
                stream = datasets.load_dataset(
                    name, self.sources["dataset_config"], split="train", streaming=True
                )
            except Exception as err:
                raise LmforgeError(
                    f"data.dataset_name={name!r}: its train split could not be streamed: {err}"
                ) from err
        return stream.filter(self.stream_keeps)

    def _streaming_raw_splits(self) -> datasets.DatasetDict:
        """Validation and test read whole (they must be given: a stream cannot be carved), and
        the first `stream_check_rows` rows of the training stream for the data checks."""
        if refusal := self.stream_refusal():
            raise LmforgeError(
                f"data.streaming=true: {type(self).__name__} does not stream its training data "
                f"as configured: {refusal}. Or set data.streaming=false."
            )
        splits: dict[str, datasets.Dataset] = {}
        for split in ("validation", "test"):
            if path := self.sources[f"{split}_file"]:
                splits[split] = self._read(path, f"data.{split}_file")
            elif name := self.sources["dataset_name"]:
                splits.update(self._hub_split(name, split))
        missing = [s for s in ("validation", "test") if s not in splits]
        if missing:
            raise LmforgeError(
                f"data.streaming=true: no {' or '.join(missing)} split. A streamed training "
                "split cannot be carved into the others: give "
                + " and ".join(f"data.{s}_file" for s in missing)
                + " (or a hub data set that has them)."
            )
        head = itertools.islice(iter(self._stream_source()), self.stream_check_rows)
        splits["train"] = datasets.Dataset.from_list(list(head))
        if len(splits["train"]) == 0:
            raise LmforgeError(
                f"{self.source_of('train')}: the training stream holds no rows with text."
            )
        return datasets.DatasetDict(splits)

    def _hub_split(self, name: str, split: str) -> dict[str, datasets.Dataset]:
        """One split of a hub data set by its name or an alias ({} when it has none)."""
        aliases = [split, *(a for a, s in SPLIT_NAME_ALIASES.items() if s == split)]
        for alias in aliases:
            try:
                return {
                    split: datasets.load_dataset(name, self.sources["dataset_config"], split=alias)
                }
            except ValueError:  # "Unknown split"
                continue
        return {}

    def _streaming_fingerprints(self) -> dict[str, str]:
        """Validation/test by content; the stream by what names it (hashing a corpus that may
        not fit on disk is what streaming avoids) and the rows its checks read."""
        if self.sources["dataset_name"]:
            self._raw = self._streaming_raw_splits()
            fingerprints = {s: d._fingerprint for s, d in self._raw.items() if s != "train"}
            identity: list[Any] = [self.sources["dataset_name"], self.sources["dataset_config"]]
        else:
            fingerprints = self._file_fingerprints(("validation", "test"))
            path = self.sources["train_file"]
            pattern = str(Path(str(path)).expanduser())
            files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            identity = [
                [str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns]
                for f in files
                if Path(f).is_file()
            ]
        text = json.dumps(["stream", *identity, self.stream_check_rows])
        fingerprints["train"] = hashlib.sha256(text.encode()).hexdigest()
        return fingerprints

    def _training_stream(self) -> datasets.IterableDataset:
        """This process's tokenized training stream: shuffled with a buffer (seeded; a new
        order every pass), dealt to the distributed ranks, tokenized as it is read."""
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        stream = self._stream_source()
        columns = stream.column_names or list(next(iter(stream)))
        if self.caps["train"] is not None:  # data.max_train_samples: the stream's first rows
            stream = stream.take(self.caps["train"])
        stream = stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        stream = rank_stream(stream, rank, world)
        return stream.map(self._stream_tokenize, batched=True, remove_columns=columns)

    def _stream_tokenize(self, batch: dict[str, list]) -> dict[str, list]:
        """A batch of streamed rows through what a map-style split goes through: rows without
        text left out, targets encoded (with the names the head of the stream gave), tokenized,
        then `stream_examples`."""
        rows = datasets.Dataset.from_dict(batch)
        empty = set(self.empty_rows("train", rows)[0])
        if empty:
            rows = rows.select([i for i in range(len(rows)) if i not in empty])
        if len(rows) == 0:
            return {}
        encoded_rows = self.encode_targets(datasets.DatasetDict({"train": rows}))[0]["train"]
        return self.stream_examples(self._tokenize_with_stats(encoded_rows.to_dict()))

    def _drop_empty_rows(self, raw: datasets.DatasetDict) -> datasets.DatasetDict:
        """Check each split, then drop its rows without text (or fail: `data.drop_empty`)."""
        kept = {}
        for split, dataset in raw.items():
            self.check_split(split, dataset)
            empty, what = self.empty_rows(split, dataset)
            kept[split], self._dropped[split] = drop_empty_rows(
                dataset,
                empty,
                split=split,
                source=self.source_of(split),
                what=what,
                drop=self.drop_empty,
            )
        return datasets.DatasetDict(kept)

    def _data_checks(
        self, raw: datasets.DatasetDict, stats: dict[str, dict], meta: dict[str, Any]
    ) -> dict[str, Any]:
        """The report of `lmforge.data.checks.build_report` on the carved, encoded splits."""
        carved = meta.get("carved_splits", [])
        no_drops = {"count": 0, "rows": []}
        splits = {
            split: {
                "source": f"carved from {self.source_of('train')}"
                if split in carved
                else self.source_of(split),
                "rows": len(dataset),
                "examples": stats[split]["examples"],
                "truncated": stats[split]["truncated"],
                # A carved split's empty rows were dropped from (and counted in) train.
                "dropped_empty": self._dropped.get(split, no_drops),
                "labels": self.label_counts(dataset, meta),
            }
            for split, dataset in raw.items()
        }
        texts = {split: self.row_texts(dataset) for split, dataset in raw.items()}
        has_texts = all(t is not None for t in texts.values())
        return build_report(
            splits,
            cast("dict[str, list[str]]", texts) if has_texts else None,
            self.length_key,
            self.max_length,
        )

    def raw_splits(self) -> dict[str, datasets.Dataset]:
        """The splits before tokenization (same checks, carving and caps): the text that
        tokenization drops, for text baselines and reports. Row for row as in `splits` where one
        row makes one example (not for grouped language-modelling blocks). Reads the sources
        again."""
        raw, _ = self._checked_raw_splits()
        return {split: self._capped(split, raw[split]) for split in SPLITS if split in raw}

    def _capped(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """The rows of a split the run uses: those `select_rows` keeps, then the first
        `max_<split>_samples` of them (all of them without a cap)."""
        dataset = self.select_rows(split, dataset)
        cap = self.caps[split]
        return dataset.select(range(cap)) if cap is not None and cap < len(dataset) else dataset

    def select_rows(self, split: str, dataset: datasets.Dataset) -> datasets.Dataset:
        """A task's own choice of rows (few-shot draws), made the same way on the tokenized
        and the raw split; notes for the data checks go to `selection_notes`. All rows here."""
        return dataset

    def _tokenize_with_stats(self, batch: dict[str, list]) -> dict[str, list]:
        encoded = self.tokenize(batch)
        # A datamodule whose examples are not one sequence (preference pairs) gives its own.
        if "length" not in encoded:
            encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        encoded["truncated"] = encoded.pop("_truncated")
        return encoded

    def _carve_missing_splits(
        self, raw: datasets.DatasetDict
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Split missing validation/test sets off the training set (seeded, stratified)."""
        splits = dict(raw)
        carved = []
        # Ratios are shares of the whole training file, whichever split is carved first.
        total = len(splits["train"])
        for split, ratio in (("test", self.test_ratio), ("validation", self.validation_ratio)):
            if split in splits:
                continue
            train = splits["train"]
            if not 0 < ratio < 1:
                raise LmforgeError(
                    f"The data has no {split} split, so it is carved from training with "
                    f"data.{split}_ratio, which must be in (0, 1); got {ratio}."
                )
            parts = self._split(train, max(1, round(ratio * total)))
            splits["train"], splits[split] = parts["train"], parts["test"]
            carved.append(split)
            log.warning(
                "No %s split given: carved %d examples (%.0f%%) from training (seed %d%s).",
                split,
                len(splits[split]),
                100 * ratio,
                self.seed,
                ", stratified by label" if self.stratify_column else "",
            )
        return datasets.DatasetDict(splits), carved

    def _split(self, dataset: datasets.Dataset, count: int) -> datasets.DatasetDict:
        column = self.stratify_column
        if column:
            counts = Counter(dataset[column])
            if min(counts.values()) >= 2 and count >= len(counts):
                dataset = dataset.cast_column(
                    column, datasets.ClassLabel(num_classes=max(counts) + 1)
                )
                parts = dataset.train_test_split(
                    test_size=count, seed=self.seed, stratify_by_column=column
                )
                return datasets.DatasetDict(
                    {k: v.cast_column(column, datasets.Value("int64")) for k, v in parts.items()}
                )
            log.warning("Some labels are too rare to stratify the split; splitting at random.")
        return dataset.train_test_split(test_size=count, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        """Load the cached splits (on every process) and apply the sample caps."""
        if self.splits:
            return
        cache_path = self._resolve_cache_path()
        if not (cache_path / "meta.json").is_file():
            self.prepare_data()
        try:
            self._load_cache(cache_path)
        except LmforgeError:  # the data or settings are wrong, not the cache entry
            raise
        except Exception as err:  # pyarrow, json and OS errors alike: the entry is unreadable
            # Damaged outside lmforge (a full disk, a partial copy, a truncated file): a cache
            # that cannot be read is a cache miss.
            log.warning(
                "The tokenization cache at %s cannot be read (%s: %s); rebuilding it.",
                cache_path,
                type(err).__name__,
                str(err).strip().splitlines()[0] if str(err).strip() else "no detail",
            )
            self.splits, self.lengths = {}, {}
            shutil.rmtree(cache_path, ignore_errors=True)
            self.cache_hit = None
            self.prepare_data()
            self._load_cache(cache_path)
        self.report()

    def _load_cache(self, cache_path: Path) -> None:
        """The cached splits with the sample caps applied, every column read once."""
        self.meta = json.loads((cache_path / "meta.json").read_text())
        loaded = datasets.load_from_disk(str(cache_path / "data"))
        self._ensure_tokenizer()
        for split in SPLITS:
            if split not in loaded:
                continue
            dataset = self._capped(split, loaded[split])
            self.lengths[split] = dataset["length"]
            # Reading every column here finds a damaged file now, not in the middle of training.
            dataset.with_format("arrow")[:]
            self.splits[split] = dataset.remove_columns("length")

    def report(self) -> None:
        """Log the data checks and keep them in `data_report`, with the rows used after caps."""
        report = json.loads(json.dumps(self.meta["data_checks"]))  # a copy to add to
        for split, dataset in self.splits.items():
            report["splits"][split]["used"] = len(dataset)
        report["notes"] = [*report.get("notes", []), *self.selection_notes.values()]
        self.data_report = report
        log_report(report)

    # ----- batches ----------------------------------------------------------------------------
    def _stream_loader(self) -> DataLoader:
        """The endless training loader of a streamed split (see lmforge.data.streaming)."""
        skip = self.resume_point[1] if self.resume_point is not None else 0
        dataset = StreamedTrainingSet(self._training_stream, self.batch_size, skip)
        options: dict[str, Any] = dict(
            batch_size=self.batch_size,
            collate_fn=self.build_collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # Its own generator, as the map-style loader: never a draw from the global RNG.
            generator=torch.Generator().manual_seed(self.seed),
        )
        if self.trainer is not None:
            return StreamLoader(dataset, progress=self._training_progress, **options)
        return DataLoader(dataset, **options)

    def _loader(self, split: str, train: bool) -> DataLoader:
        if train and self.streaming:
            return self._stream_loader()
        if split not in self.splits:
            raise LmforgeError(f"The data has no {split} split.")
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = SeededBatchSampler(
            self.lengths[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            # Overfitting (trainer.overfit_batches) repeats the same first batches every epoch.
            # (The Trainer sets `overfit_batches` at setup; its class does not declare it.)
            shuffle=train and not (self.trainer is not None and self.trainer.overfit_batches),  # type: ignore[attr-defined]
            # Evaluation order does not change metrics; sorted batches pad less.
            group_by_length=self.group_by_length or not train,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
        )
        options: dict[str, Any] = dict(
            batch_sampler=sampler,
            collate_fn=self.build_collator() if train else self.eval_collator(),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # Its own generator, so creating a loader never draws from the global RNG (which
            # drives dropout and must continue unchanged across resume).
            generator=torch.Generator().manual_seed(self.seed),
        )
        if train and self.trainer is not None:
            # Checkpoints record where the epoch stood, so a resumed run continues mid-epoch.
            if self.resume_point is not None:
                sampler.resume_at(*self.resume_point)
            return ResumableDataLoader(
                self.splits[split], progress=self._training_progress, **options
            )
        return DataLoader(self.splits[split], **options)

    def _training_progress(self) -> tuple[int, int]:
        """(epoch, training batches whose step ran in this epoch) of the running fit."""
        trainer = cast(pl.Trainer, self.trainer)  # only called while a fit runs
        # Declared as a tracker without `processed`; the batch progress holds one with it.
        current: Any = trainer.fit_loop.epoch_loop.batch_progress.current
        return trainer.current_epoch, current.processed

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


def prepare_datamodule(data_config: Any) -> TextDataModule:
    """Build the datamodule a `data` config describes, read, check and tokenize its data."""
    from hydra.utils import instantiate

    datamodule: TextDataModule = instantiate(data_config, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule
