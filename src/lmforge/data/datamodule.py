"""The shared LightningDataModule: raw splits -> checks -> tokenized (cached) -> batches.

Task datamodules subclass `TextDataModule` and fill in how rows become model inputs; loading,
split carving, caching, caps and batching live here once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import datasets
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from lmforge.data.checks import build_report, drop_empty_rows, log_report
from lmforge.data.sampler import ResumableDataLoader, SeededBatchSampler
from lmforge.data.sources import (
    FORMATS,
    check_file,
    file_fingerprint,
    load_file,
    load_splits,
    require_source,
)
from lmforge.data.splits import SPLITS
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


class TextDataModule(pl.LightningDataModule):
    """Loads, checks, tokenizes (with an on-disk cache) and batches text data.

    Subclasses implement `encode_targets` (raw rows -> a `labels` column, plus any metadata such
    as label names) and `tokenize` (a batch of rows -> model inputs), and may set
    `stratify_column` for seeded stratified carving of missing splits.
    """

    stratify_column: str | None = None
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
    ) -> None:
        super().__init__()
        self.sources = {
            "train_file": train_file,
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
        if self.sources["dataset_name"]:
            self._raw, fingerprints = load_splits(**self.sources, reader=self.read_file)
            return fingerprints
        require_source(self.sources["train_file"], None)
        return {
            split: file_fingerprint(check_file(path, f"data.{split}_file", self.supported_suffixes))
            for split in SPLITS
            if (path := self.sources[f"{split}_file"])
        }

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
            tokenized[split] = dataset.map(
                self._tokenize_with_stats,
                batched=True,
                remove_columns=columns,
                desc=f"Tokenizing {split}",
                load_from_cache_file=False,
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
        raw = self._raw or load_splits(**self.sources, reader=self.read_file)[0]
        raw = self._drop_empty_rows(raw)
        raw, meta = self.encode_targets(raw)
        raw, meta["carved_splits"] = self._carve_missing_splits(raw)
        return raw, meta

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
    def _loader(self, split: str, train: bool) -> DataLoader:
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
