"""Prediction: run a trained model on new texts and write one record per input.

The model comes from an lmforge checkpoint (its run directory gives the tokenizer and the
run's settings: sequence length, text column, labels) or from an exported Hugging Face folder
(`config.json`, weights, tokenizer and an optional `lmforge.json`). Either way the task
family's predictor (its spec names it) turns batches of inputs into records; this module reads
the inputs and writes the records: `predictions.jsonl` (or `.csv`) in the run directory, or
`output=`, which must not exist yet.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig, ListConfig
from transformers import AutoConfig

from lmforge.config.positions import usable_positions
from lmforge.config.schema import PredictSchema, Section, check_command_settings
from lmforge.data.datamodule import load_tokenizer_for_batching
from lmforge.data.sources import FORMATS, check_file, load_file
from lmforge.errors import LmforgeError
from lmforge.runtime.record import read_export_settings
from lmforge.runtime.rundir import EXPORT_SETTINGS_FILE, record_config
from lmforge.tasks import FAMILIES, family_of_architectures
from lmforge.tasks.predictor import InputText, Predictor
from lmforge.tasks.runs import load_run
from lmforge.tasks.spec import TaskFamily

log = logging.getLogger(__name__)

OUTPUT_FORMATS = ("jsonl", "csv")


def predict(cfg: DictConfig) -> Path:
    """Predict on `cfg.input` with the model of `cfg.ckpt_path` or `cfg.model_dir`; write one
    record per input and return the output file."""
    check_settings(cfg)
    output = output_path(cfg)
    input_file = input_file_of(cfg.input)
    device = choose_device(cfg.device)
    predictor, family = load_predictor(cfg, device)
    inputs = (
        read_input_file(input_file, predictor) if input_file else typed_inputs(cfg.input, predictor)
    )
    predictor.check(inputs)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_config(run_dir, cfg)

    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    with (
        record_writer(output, cfg.output_format) as write,
        progress(len(inputs), enabled=cfg.progress_bar and input_file is not None) as advance,
    ):
        for start in range(0, len(inputs), cfg.batch_size):
            batch = inputs[start : start + cfg.batch_size]
            for record in predictor.predict(batch):
                write(record)
            advance(len(batch))
    log.info(
        "Predicted %d input(s) with a %s model in %.1f s: %s",
        len(inputs),
        family.name,
        time.perf_counter() - started,
        output,
    )
    return output


# ----- settings and output ------------------------------------------------------------------
def check_settings(cfg: DictConfig, schema: type[Section] = PredictSchema) -> None:
    """Refuse impossible settings before any model or data is loaded: each value against the
    command's schema (`schema`), then the rules between them."""
    check_command_settings(cfg, schema)
    if bool(cfg.ckpt_path) == bool(cfg.model_dir):
        given = "both were given" if cfg.ckpt_path else "neither was given"
        raise LmforgeError(
            "Name the model with exactly one of ckpt_path=<run dir>/checkpoints/best.ckpt (an "
            f"lmforge checkpoint) or model_dir=<folder> (an exported Hugging Face model); {given}."
        )
    generate = cfg.generate
    if generate.num_return_sequences > 1 and not generate.do_sample:
        raise LmforgeError(
            f"generate.num_return_sequences={generate.num_return_sequences} needs "
            "generate.do_sample=true (greedy decoding gives one continuation per prompt)."
        )


def output_path(cfg: DictConfig) -> Path:
    """Where predictions go: `output=` (which must not exist: a user's file is never
    overwritten) or `predictions.<format>` in the run directory."""
    if not cfg.output:
        return Path(cfg.paths.output_dir) / f"predictions.{cfg.output_format}"
    path = Path(str(cfg.output)).expanduser()
    suffix = path.suffix.lower().lstrip(".")
    if suffix in OUTPUT_FORMATS and suffix != cfg.output_format:
        raise LmforgeError(
            f"output={cfg.output!r} ends in .{suffix} but output_format={cfg.output_format!r}; "
            f"set output_format={suffix} or name a .{cfg.output_format} file."
        )
    if path.exists():
        raise LmforgeError(
            f"output={cfg.output!r} already exists; lmforge-predict never overwrites a file. "
            "Name a new file, or leave output unset to write into the new run directory."
        )
    return path


@contextmanager
def record_writer(path: Path, output_format: str) -> Iterator[Callable[[dict], None]]:
    """Write records as JSON lines or CSV rows (nested values JSON-encoded in their cell).

    The file is created exclusively, so an existing file is never overwritten; if prediction
    fails part way, the partial file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # "x": fail if the file exists. Closed by `with handle` below, once it is ours.
        handle: TextIO = open(path, "x", encoding="utf-8", newline="")  # noqa: SIM115
    except FileExistsError as err:
        raise LmforgeError(
            f"{path} already exists; lmforge-predict never overwrites a file."
        ) from err
    writer: csv.DictWriter | None = None

    def write(record: dict) -> None:
        nonlocal writer
        if output_format == "jsonl":
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        if writer is None:
            writer = csv.DictWriter(handle, fieldnames=list(record))
            writer.writeheader()
        writer.writerow(
            {
                key: json.dumps(value, ensure_ascii=False)
                if isinstance(value, list | dict)
                else value
                for key, value in record.items()
            }
        )

    try:
        with handle:
            yield write
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextmanager
def progress(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over the inputs (on stderr); `advance(n)` after each batch."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "Predicting",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    ) as bar:
        task = bar.add_task("predict", total=total)
        yield lambda n: bar.advance(task, n)


def choose_device(device: str) -> torch.device:
    """`auto`: a GPU when one is visible, else the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        raise LmforgeError("device='cuda' but no CUDA GPU is visible; use device=cpu or auto.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


# ----- loading the model --------------------------------------------------------------------
def load_predictor(cfg: DictConfig, device: torch.device) -> tuple[Predictor, TaskFamily]:
    """The family predictor of `ckpt_path` or `model_dir`, on `device`, with the `max_length`
    and `text_column` overrides applied to the run's settings."""
    if cfg.ckpt_path:
        if cfg.backend == "onnxruntime":
            raise LmforgeError(
                "backend=onnxruntime runs an ONNX export (model_dir=<folder>), not a checkpoint: "
                "export it with lmforge-export format=onnx first (quantize=int8 for int8)."
            )
        run = load_run(str(cfg.ckpt_path), "lmforge-predict")
        family, model, settings = run.family, run.module.model, run.settings()
        tokenizer = load_tokenizer_for_batching(str(run.tokenizer_dir))
    else:
        backend = str(cfg.backend or "auto")
        family, model, tokenizer, settings = load_export_folder(
            str(cfg.model_dir), backend, cfg.threads
        )
    positions = usable_positions(model.config.to_dict())
    if cfg.max_length is not None:
        if positions and cfg.max_length > positions:
            raise LmforgeError(
                f"max_length={cfg.max_length} is more than the model's {positions} positions."
            )
        settings["max_length"] = cfg.max_length
    elif positions:
        settings["max_length"] = min(settings["max_length"], positions)
    if cfg.text_column:
        settings["text_column"] = str(cfg.text_column)
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(int(cfg.threads))
    # functools.wraps on PreTrainedModel.to hides its bound `self` from the type checker.
    model.to(device).eval()  # type: ignore[arg-type]
    predictor = family.predictor_class()(model, tokenizer, settings, cfg, device)
    log.info("Loaded a %s model (%s)", family.name, predictor.describe())
    return predictor, family


def load_export_folder(
    model_dir: str, backend: str = "auto", threads: int | None = None
) -> tuple[TaskFamily, Any, Any, dict[str, Any]]:
    """An exported folder (Hugging Face, or ONNX run by ONNX Runtime): the family from
    `lmforge.json` or the architecture, the settings from `lmforge.json`, label names from the
    config's `id2label`."""
    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise LmforgeError(
            f"model_dir={model_dir!r}: no config.json there; expected a folder written by "
            "save_pretrained or lmforge-export (config.json, weights, tokenizer files)."
        )
    settings: dict[str, Any] = dict(read_export_settings(folder, f"model_dir={model_dir!r}"))
    fmt = settings.get("format", "hf")
    if fmt not in ("hf", "onnx"):
        raise LmforgeError(
            f"model_dir={model_dir!r} holds an export of format {fmt!r}; lmforge-predict and "
            "lmforge-serve run Hugging Face folders (format=hf, the default) and ONNX ones "
            "(format=onnx, through ONNX Runtime)."
        )
    if backend == "pytorch" and fmt == "onnx":
        raise LmforgeError(
            f"backend=pytorch: model_dir={model_dir!r} holds an ONNX graph, which runs through "
            "ONNX Runtime (backend=auto or onnxruntime); for PyTorch, predict from the "
            "checkpoint or a format=hf export."
        )
    if backend == "onnxruntime" and fmt != "onnx":
        raise LmforgeError(
            f"backend=onnxruntime: model_dir={model_dir!r} holds no ONNX graph; export one with "
            "lmforge-export format=onnx (quantize=int8 for the int8 graph)."
        )
    config = AutoConfig.from_pretrained(folder)
    family = export_family(settings.get("task"), config.architectures, model_dir)
    if fmt == "onnx":
        model = onnx_model(folder, config, settings, family, model_dir, threads)
    else:
        try:
            model = family.auto_model_class(settings).from_pretrained(folder)
        except Exception as err:
            raise LmforgeError(
                f"model_dir={model_dir!r} could not be loaded as a {family.name} Hugging Face "
                "model (lmforge-predict reads folders of save_pretrained or lmforge-export "
                f"format=hf or onnx): {err}"
            ) from err
    try:
        tokenizer = load_tokenizer_for_batching(str(folder))
    except LmforgeError as err:
        raise LmforgeError(
            f"model_dir={model_dir!r} holds no tokenizer that loads; save one beside the model "
            f"(tokenizer.save_pretrained). {err}"
        ) from err
    if not settings.get("labels") and getattr(config, "id2label", None):
        settings["labels"] = [config.id2label[i] for i in range(config.num_labels)]
    if settings.get("multi_label") is None:
        settings["multi_label"] = config.problem_type == "multi_label_classification"
    settings["max_length"] = settings.get("max_length") or tokenizer.model_max_length
    return family, model, tokenizer, settings


def onnx_model(
    folder: Path,
    config: Any,
    settings: dict[str, Any],
    family: TaskFamily,
    model_dir: str,
    threads: int | None = None,
) -> Any:
    """The folder's ONNX graph (`lmforge.json`'s model_file: the int8 one after
    quantize=int8) behind the model interface of the family's predictor."""
    from lmforge.export import require_onnx_extras
    from lmforge.onnx_backend import OnnxModel

    if not family.predictor_class().runs_on_graphs:
        raise LmforgeError(
            f"model_dir={model_dir!r}: {family.name} predictions generate token by token, "
            "which needs the PyTorch model; predict from the checkpoint or a format=hf export "
            "(the ONNX graph gives one pass's logits)."
        )
    require_onnx_extras()
    path = folder / str(settings.get("model_file") or "model.onnx")
    if not path.is_file():
        raise LmforgeError(
            f"model_dir={model_dir!r}: {EXPORT_SETTINGS_FILE} names the graph "
            f"{path.name!r}, which is not in the folder."
        )
    outputs = settings.get("outputs") or list(family.export_outputs)
    return OnnxModel(path, config, outputs, threads=threads)


def export_family(task: str | None, architectures: list[str] | None, model_dir: str) -> TaskFamily:
    """The family an exported folder names in lmforge.json, else the one its architecture
    name means (`BertForTokenClassification` -> token classification)."""
    if task:
        if task not in FAMILIES:
            raise LmforgeError(
                f"model_dir={model_dir!r}: {EXPORT_SETTINGS_FILE} names the task {task!r}; "
                f"expected one of {', '.join(FAMILIES)}."
            )
        return FAMILIES[task]
    family = family_of_architectures(architectures)
    if family is None:
        endings = sorted({e for f in FAMILIES.values() for e in f.architecture_suffixes})
        raise LmforgeError(
            f"model_dir={model_dir!r}: its config.json names the architecture(s) "
            f"{architectures or 'none'}, none of which ends in {', '.join(endings)}; name the "
            f'task in {EXPORT_SETTINGS_FILE} ({{"task": "<family>"}}), one of '
            f"{', '.join(FAMILIES)}."
        )
    return family


# ----- reading the inputs -------------------------------------------------------------------
def input_file_of(value: Any) -> Path | None:
    """The file `input=` names, checked (it exists, is UTF-8, has a known ending), or None
    for typed texts. A single word that looks like a path (a `/` or a data file ending) counts
    as a file, so a mistyped file name is an error rather than a text to predict on."""
    if isinstance(value, ListConfig | list | DictConfig | dict):
        return None
    text = str(value)
    looks_like_path = bool(text) and not any(c.isspace() for c in text)
    looks_like_path = looks_like_path and ("/" in text or Path(text).suffix.lower() in FORMATS)
    if Path(text).expanduser().is_file() or looks_like_path:
        return check_file(text, "input")
    return None


def typed_inputs(value: Any, predictor: Predictor) -> list[InputText]:
    """The texts typed on the command line: `input='a text'` or `input='[one,two]'`; for
    models that read two texts, `input={question:'...',context:'...'}` or a list of such."""
    items = list(value) if isinstance(value, ListConfig | list) else [value]
    pair_column = predictor.text_pair_column
    if pair_column:
        return [_typed_pair(item, i, predictor) for i, item in enumerate(items, 1)]
    texts = [str(v) for v in items]
    if not texts or any(not t.strip() for t in texts):
        raise LmforgeError(
            "input is empty; give a text (input='a text'), a list of texts (input='[one,two]') "
            "or a .txt/.csv/.jsonl/.json/.tsv/.parquet file."
        )
    return [InputText(t, where=f"input text {i + 1}") for i, t in enumerate(texts)]


def _typed_pair(item: Any, number: int, predictor: Predictor) -> InputText:
    """One typed input of a model that reads two texts: a mapping of its two columns."""
    first, second = predictor.text_column, str(predictor.text_pair_column)
    example = f"input={{{first}:'...',{second}:'...'}}"
    if not isinstance(item, DictConfig | dict):
        raise LmforgeError(
            f"This model reads text pairs ({first!r} + {second!r}); input {number} is "
            f"{str(item)[:60]!r}. Type each input as {example} (a list of them for several), "
            "or give a csv/jsonl file with both columns."
        )
    missing = [c for c in (first, second) if is_missing(item.get(c))]
    if missing:
        raise LmforgeError(
            f"input {number} has no text for {', '.join(map(repr, missing))}; found keys "
            f"{', '.join(map(repr, item)) or 'none'}. Expected {example}."
        )
    where = f"input {number}"
    value = item[second]
    value = list(value) if isinstance(value, ListConfig) else value
    return InputText(str(item[first]), predictor.pair_value(value, where), where=where)


def read_input_file(file: Path, predictor: Predictor) -> list[InputText]:
    """A .txt file (one text per line, blank lines skipped) or a table with the text column."""
    path = str(file)
    if file.suffix.lower() == ".txt":
        with open(file, encoding="utf-8") as f:
            inputs = [
                InputText(line.strip(), where=f"input={path!r} line {number}")
                for number, line in enumerate(f, start=1)
                if line.strip()
            ]
        if not inputs:
            raise LmforgeError(f"input={path!r}: the file holds no text (only blank lines).")
        return inputs
    table = load_file(path, "input")
    text_column, pair_column = predictor.text_column, predictor.text_pair_column
    columns = [text_column, pair_column]
    for column in filter(None, columns):
        if column not in table.column_names:
            raise LmforgeError(
                f"input={path!r} has no column {column!r} (the model's text column); columns "
                f"found: {', '.join(table.column_names)}. Name the text column with "
                "text_column=<column>."
            )
    pairs = table[pair_column] if pair_column else [None] * len(table)
    inputs, missing = [], []
    for row, (text, pair) in enumerate(zip(table[text_column], pairs, strict=True), 1):
        if is_missing(text) or (pair_column and is_missing(pair)):
            missing.append(row)
            continue
        words = predictor.reads_words and isinstance(text, list)
        where = f"input={path!r} row {row}"
        inputs.append(
            InputText(
                [str(w) for w in text] if words else str(text),
                None if pair is None else predictor.pair_value(pair, where),
                where=where,
            )
        )
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise LmforgeError(
            f"input={path!r}: {len(missing)} row(s) have no text in column "
            f"{text_column!r}"
            + (f" or {pair_column!r}" if pair_column else "")
            + f": row(s) {shown} (1-based, header not counted). Fill or remove them."
        )
    return inputs


def is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return not (value if isinstance(value, list) else str(value).strip())
