"""Reading raw splits from local files or the Hugging Face hub into a `DatasetDict`."""

from __future__ import annotations

import codecs
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import datasets

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

# File ending -> datasets builder name (and extra arguments).
FORMATS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".txt": ("text", {}),
}
SPLIT_NAME_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


def file_fingerprint(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the identity of local data in cache keys and run records."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_utf8(file: Path, key: str, path: str) -> None:
    """Decode the file in blocks, so a large file is never held in memory at once."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as err:
                where = offset + err.start
                line += block[: err.start].count(b"\n")
                found = block[err.start : err.end].hex(" ")
                raise LmforgeError(
                    f"{key}={path!r}: the file is not valid UTF-8: line {line}, byte offset "
                    f"{where} holds byte(s) 0x{found} that UTF-8 cannot decode. Expected UTF-8 "
                    "text; re-encode the file, e.g. `iconv -f latin1 -t utf-8 "
                    f"{file.name} > utf8_{file.name}` if it is Latin-1 (a Windows or Excel "
                    "export often is)."
                ) from err
            offset += len(block)
            line += block.count(b"\n")


def check_file(path: str, key: str, suffixes: Iterable[str] = tuple(FORMATS)) -> Path:
    """Fail clearly unless `path` is a non-empty, readable UTF-8 file of a supported type."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise LmforgeError(
            f"{key}={path!r} is a directory ({file.resolve()}); expected a data file "
            f"({', '.join(suffixes)})."
        )
    if not file.is_file():
        raise LmforgeError(
            f"{key}={path!r}: no such file (looked for {file.resolve()}); expected an existing "
            f"{', '.join(suffixes)} file (relative paths start from the launch directory)."
        )
    suffix = file.suffix.lower()
    if suffix not in suffixes:
        raise LmforgeError(
            f"{key}={path!r}: unsupported file type {suffix!r}; expected one of "
            f"{', '.join(suffixes)}."
        )
    if file.stat().st_size == 0:
        raise LmforgeError(
            f"{key}={path!r}: the file is empty (0 bytes); expected a header line and data rows "
            "(csv/tsv), one record per line (jsonl, conll, txt) or a parquet table."
        )
    try:
        if suffix != ".parquet":
            _require_utf8(file, key, path)
        else:
            file.open("rb").close()
    except OSError as err:
        raise LmforgeError(f"{key}={path!r}: the file cannot be read: {err.strerror}.") from err
    return file


def _root_message(err: BaseException) -> str:
    """The innermost explicit cause of an error: the builders wrap the parser's useful message
    (e.g. pandas' "Expected 2 fields in line 3, saw 3") in a generic one."""
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(str(err).split()) or type(err).__name__


def load_file(path: str, key: str) -> datasets.Dataset:
    """Load one local file as a Dataset; `key` (e.g. `data.train_file`) names it in errors."""
    file = check_file(path, key)
    builder, kwargs = FORMATS[file.suffix.lower()]
    try:
        dataset = datasets.load_dataset(builder, data_files=str(file), split="train", **kwargs)
    except Exception as err:  # the builders raise many types for malformed files
        # A csv holding only its header makes the builder find no data at all.
        if "corresponds to no data" not in str(err):
            raise LmforgeError(
                f"{key}={path!r}: could not be read as {builder}: {_root_message(err)}"
            ) from err
        dataset = None
    if dataset is None or len(dataset) == 0:
        with open(file, encoding="utf-8") as f:
            first = f.readline().strip()
        header = f" (found only the line {first!r})" if builder == "csv" and first else ""
        raise LmforgeError(
            f"{key}={path!r}: the file holds no rows{header}; expected at least one data row."
        )
    return dataset


def require_source(train_file: str | None, dataset_name: str | None) -> None:
    """Fail clearly when neither a training file nor a hub data set is configured."""
    if not train_file and not dataset_name:
        raise LmforgeError(
            "No data source: set data.train_file to a csv/tsv/json/jsonl/parquet file or "
            "data.dataset_name to a hub data set."
        )


def load_splits(
    train_file: str | None,
    validation_file: str | None,
    test_file: str | None,
    dataset_name: str | None,
    dataset_config: str | None,
    reader: Callable[[str, str], datasets.Dataset] | None = None,
) -> tuple[datasets.DatasetDict, dict[str, str]]:
    """The raw splits and a fingerprint per split (file content hash or the hub's fingerprint).

    `reader(path, key)` reads one local file (default: `load_file`); task datamodules pass
    their own for formats such as CoNLL.
    """
    reader = reader or load_file
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    if dataset_name:
        if train_file:
            raise LmforgeError(
                f"data.dataset_name={dataset_name!r} and data.train_file={train_file!r} are "
                "both set; choose one source (set the other to null)."
            )
        try:
            loaded = datasets.load_dataset(dataset_name, dataset_config)
        except Exception as err:
            raise LmforgeError(
                f"data.dataset_name={dataset_name!r} (config {dataset_config!r}) could not be "
                f"loaded: {err}"
            ) from err
        splits = {SPLIT_NAME_ALIASES.get(name, name): ds for name, ds in loaded.items()}
        # Local files may still replace single hub splits (e.g. a private test set).
        for split, path in files.items():
            if path:
                splits[split] = reader(path, f"data.{split}_file")
        if "train" not in splits:
            raise LmforgeError(
                f"data.dataset_name={dataset_name!r} has no train split (found: "
                f"{', '.join(splits)})."
            )
        fingerprints = {name: ds._fingerprint for name, ds in splits.items()}
        return datasets.DatasetDict(splits), fingerprints
    require_source(train_file, dataset_name)
    splits, fingerprints = {}, {}
    for split, path in files.items():
        if path:
            splits[split] = reader(path, f"data.{split}_file")
            fingerprints[split] = file_fingerprint(path)
            log.info("%s split: %s (%d rows)", split, path, len(splits[split]))
    return datasets.DatasetDict(splits), fingerprints


def require_columns(
    dataset: datasets.Dataset, columns: Mapping[str, str | None], split: str, source: str = ""
) -> None:
    """Fail clearly when a configured column is missing from a split (`source` names its file)."""
    where = f" ({source})" if source else ""
    for key, column in columns.items():
        if column and column not in dataset.column_names:
            raise LmforgeError(
                f"data.{key}={column!r} is not a column of the {split} split{where}; columns "
                f"found: {', '.join(dataset.column_names)}. Set data.{key} to one of them."
            )
