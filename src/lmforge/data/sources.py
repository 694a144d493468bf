"""Reading raw splits from local files or the Hugging Face hub into a `DatasetDict`."""

from __future__ import annotations

import codecs
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
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
            is_folder = Path(path).expanduser().is_dir()
            fingerprints[split] = (folder_fingerprint if is_folder else file_fingerprint)(path)
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


# ----- folders of text files ------------------------------------------------------------------
# What no library reads as lmforge needs it: datasets' "text" builder makes one row per line (or
# per file with sample_by="document") but takes no label from the folder, and its "imagefolder"-
# style label inference exists for images and audio only; neither counts hidden, empty, binary or
# mis-encoded files. Hence the walk below.
INVALID_UTF8 = ("error", "skip")
# Bytes looked at to tell a text file from a binary one (a NUL byte among them: binary).
BINARY_PROBE = 8192


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def folder_files(root: Path) -> list[Path]:
    """Every file under `root`, sorted by path, hidden ones (a part starting with '.') included."""
    return sorted(p for p in root.rglob("*") if p.is_file())


def folder_fingerprint(root: str | Path) -> str:
    """SHA-256 over the relative path and bytes of every file under a folder."""
    root = Path(root)
    digest = hashlib.sha256()
    for file in folder_files(root):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file_fingerprint(file).encode())
    return digest.hexdigest()


def check_folder(path: str, key: str) -> Path:
    """Fail clearly unless `path` is a readable folder holding at least one file."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise LmforgeError(f"{key}={path!r}: no such folder (looked for {root.resolve()}).")
    if not any(p.is_file() for p in root.rglob("*")):
        raise LmforgeError(
            f"{key}={path!r}: the folder holds no files; expected one text file per example "
            "(under one folder per class for classification)."
        )
    return root


def _read_text(file: Path, key: str, invalid_utf8: str) -> tuple[str | None, str]:
    """A file's text (UTF-8, a BOM dropped) or None and why it was skipped."""
    data = file.read_bytes()
    if b"\x00" in data[:BINARY_PROBE]:
        return None, "not text (NUL bytes: binary, or UTF-16)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        if invalid_utf8 == "skip":
            return None, "not valid UTF-8"
        line = data[: err.start].count(b"\n") + 1
        raise LmforgeError(
            f"{key}: {file} is not valid UTF-8: line {line}, byte offset {err.start} holds "
            f"0x{data[err.start : err.end].hex(' ')}. Re-encode it (e.g. `iconv -f latin1 -t "
            f"utf-8`), or set data.invalid_utf8=skip to skip such files and count them."
        ) from err
    if not text.strip():
        return None, "empty"
    return text, ""


def read_text_folder(
    path: str,
    key: str,
    text_column: str,
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    invalid_utf8: str = "error",
) -> tuple[datasets.Dataset, str]:
    """One row per text file of a folder, and a line for the data checks saying what was read
    and what was skipped.

    With `label_column`, each subfolder is a class (its name the label, `classes` keeping only
    those named) and every file under it an example; files beside the class folders are left
    out and counted. Without, every file under the folder is one example (a document). Hidden
    files and folders, empty files, binary files and (with `invalid_utf8=skip`) files that are
    not UTF-8 are skipped and counted; a UTF-8 BOM is dropped.
    """
    if invalid_utf8 not in INVALID_UTF8:
        raise LmforgeError(f"data.invalid_utf8={invalid_utf8!r}: expected error or skip.")
    root = check_folder(path, key)
    skipped: dict[str, list[str]] = {}
    sources: list[tuple[Path, str | None]] = []
    ignored: list[str] = []
    if label_column:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        found = [p.name for p in folders]
        if classes is not None:
            missing = [c for c in classes if c not in found]
            if missing:
                raise LmforgeError(
                    f"{key}={path!r}: no class folder {', '.join(map(repr, missing))} (from "
                    f"data.folder_classes); class folders found: {', '.join(found) or 'none'}."
                )
            ignored = [f"{p.name}/" for p in folders if p.name not in classes]
            folders = [p for p in folders if p.name in classes]
        data_files = sorted(
            p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in FORMATS
        )
        if len(folders) < 2 and data_files:
            raise LmforgeError(
                f"{key}={path!r} is a folder holding data files ({', '.join(data_files[:5])}) "
                "and no class folders: give the file itself, e.g. "
                f"{key}={Path(path) / data_files[0]}. A folder is read as one subfolder per "
                "class with one text file per example."
            )
        if len(folders) < 2:
            raise LmforgeError(
                f"{key}={path!r} is a folder, read as one subfolder per class with one text "
                f"file per example (e.g. {path}/pos/1.txt), but it holds "
                f"{len(folders)} class folder(s) ({', '.join(found) or 'none'}); "
                "classification needs at least two."
            )
        for folder in folders:
            sources += [(f, folder.name) for f in folder_files(folder)]
        ignored += [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    else:
        sources = [(f, None) for f in folder_files(root)]
    texts, labels = [], []
    for file, label in sources:
        relative = file.relative_to(root)
        if _hidden(relative):
            skipped.setdefault("hidden", []).append(str(relative))
            continue
        text, reason = _read_text(file, key, invalid_utf8)
        if text is None:
            skipped.setdefault(reason, []).append(str(relative))
            continue
        texts.append(text)
        labels.append(label)
    if not texts:
        raise LmforgeError(
            f"{key}={path!r}: no file in the folder holds text (skipped: "
            + "; ".join(f"{len(v)} {k}" for k, v in skipped.items())
            + ")."
        )
    columns: dict[str, list] = {text_column: texts}
    if label_column:
        columns[label_column] = labels
    read = f"{key}={path!r}: {len(texts)} file(s) read"
    if label_column:
        counts = {c: labels.count(c) for c in dict.fromkeys(labels)}
        read += " from class folders " + ", ".join(f"{c} ({n})" for c, n in counts.items())
    parts = [
        f"{len(v)} {k} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
        for k, v in skipped.items()
    ]
    if ignored:
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        parts.append(f"{len(ignored)} beside or outside the class folders, not read ({shown})")
    note = read + ("; skipped: " + "; ".join(parts) if parts else "") + "."
    log.info("%s", note)
    return datasets.Dataset.from_dict(columns), note


def split_folder(root: str, split: str) -> str | None:
    """`<root>/<split>` (or an alias: valid/val/dev for validation) when it is a folder."""
    for alias in SPLIT_FOLDER_ALIASES[split]:
        candidate = Path(root) / alias
        if candidate.is_dir():
            return str(candidate)
    return None


SPLIT_FOLDER_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
