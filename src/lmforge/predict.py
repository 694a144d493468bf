"""Prediction: run a trained model on new texts and write one record per input.

The model comes from an lmforge checkpoint (its run directory gives the tokenizer, `max_length`
and the text column) or from an exported Hugging Face folder (`config.json`, weights, tokenizer
and an optional `lmforge.json`). Both become a `LoadedModel`, a plain Hugging Face model and
tokenizer, so every task's prediction code serves both sources. Predictions go to a new file:
`predictions.jsonl` (or `.csv`) in the run directory, or `output=`, which must not exist yet.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from transformers import AutoConfig, PreTrainedTokenizerBase

from lmforge.checkpoints import load_task_module, run_dir_of
from lmforge.data.datamodule import load_tokenizer_for_batching
from lmforge.data.sources import FORMATS, check_file, load_file
from lmforge.errors import LmforgeError
from lmforge.rundir import CONFIG_FILE, TOKENIZER_DIR, check_checkpoint_run, record_config
from lmforge.tasks import TASKS
from lmforge.tasks.token_classification import entity_spans, tag_sentences

log = logging.getLogger(__name__)

# Written by `lmforge-export` beside the model: task, max_length, multi_label, threshold, ...
EXPORT_SETTINGS_FILE = "lmforge.json"
OUTPUT_FORMATS = ("jsonl", "csv")
DEVICES = ("auto", "cpu", "cuda")
# Architecture name ending -> task, for exported folders without lmforge.json.
TASK_OF_ARCHITECTURE = {
    "ForSequenceClassification": "text_classification",
    "ForTokenClassification": "token_classification",
    "ForCausalLM": "causal_lm",
    "LMHeadModel": "causal_lm",
    "ForMaskedLM": "masked_lm",
}
# A threshold for multi-label folders that record none (the usual sigmoid midpoint).
DEFAULT_THRESHOLD = 0.5


@dataclass
class LoadedModel:
    """A Hugging Face model (or a peft model around one) with its tokenizer and what prediction
    needs to know: the task, the label names, the sequence length and the input columns."""

    task: str
    model: Any
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    text_column: str
    text_pair_column: str | None = None
    label_names: list[str] = field(default_factory=list)
    multi_label: bool = False
    threshold: float = DEFAULT_THRESHOLD


@dataclass
class InputText:
    """One input: its text (a word list for NER rows that hold one), the second text of a
    sentence pair, and where it came from (for error messages)."""

    text: str | list[str]
    text_pair: str | None = None
    where: str = "input"


def predict(cfg: DictConfig) -> Path:
    """Predict on `cfg.input` with the model of `cfg.ckpt_path` or `cfg.model_dir`; write one
    record per input and return the output file."""
    check_settings(cfg)
    output = output_path(cfg)
    input_file = input_file_of(cfg.input)
    loaded = load_model(cfg)
    inputs = read_input_file(input_file, loaded) if input_file else typed_inputs(cfg.input, loaded)
    check_inputs(loaded, inputs)
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_config(run_dir, cfg)

    device = choose_device(cfg.device)
    loaded.model.to(device).eval()
    torch.manual_seed(cfg.seed)
    predict_batch = batch_predictor(loaded, cfg, device)
    started = time.perf_counter()
    with (
        record_writer(output, cfg.output_format) as write,
        progress(len(inputs), enabled=cfg.progress_bar and input_file is not None) as advance,
    ):
        for start in range(0, len(inputs), cfg.batch_size):
            batch = inputs[start : start + cfg.batch_size]
            for record in predict_batch(batch):
                write(record)
            advance(len(batch))
    log.info(
        "Predicted %d input(s) with a %s model in %.1f s: %s",
        len(inputs),
        loaded.task,
        time.perf_counter() - started,
        output,
    )
    return output


# ----- settings and output ------------------------------------------------------------------
def check_settings(cfg: DictConfig) -> None:
    """Refuse impossible settings before any model or data is loaded."""
    if bool(cfg.ckpt_path) == bool(cfg.model_dir):
        given = "both were given" if cfg.ckpt_path else "neither was given"
        raise LmforgeError(
            "Name the model with exactly one of ckpt_path=<run dir>/checkpoints/best.ckpt (an "
            f"lmforge checkpoint) or model_dir=<folder> (an exported Hugging Face model); {given}."
        )
    problems = []
    if cfg.output_format not in OUTPUT_FORMATS:
        problems.append(f"output_format={cfg.output_format!r}; expected jsonl or csv.")
    if cfg.device not in DEVICES:
        problems.append(f"device={cfg.device!r}; expected one of {', '.join(DEVICES)}.")
    for key, least, optional in (
        ("batch_size", 1, False),
        ("fill_top_k", 1, False),
        ("generate.max_new_tokens", 1, False),
        ("generate.num_return_sequences", 1, False),
        ("max_length", 1, True),
        ("stride", 0, True),
    ):
        value = OmegaConf.select(cfg, key)
        if not (is_whole(value, least) or (optional and value is None)):
            allowed = "null or " if optional else ""
            problems.append(
                f"{key} must be {allowed}a whole number of at least {least}, got {value!r}."
            )
    if cfg.threshold is not None and not (is_number(cfg.threshold) and 0 < cfg.threshold < 1):
        problems.append(f"threshold must be null or in (0, 1), got {cfg.threshold!r}.")
    generate = cfg.generate
    if is_whole(generate.num_return_sequences, 2) and not generate.do_sample:
        problems.append(
            f"generate.num_return_sequences={generate.num_return_sequences} needs "
            "generate.do_sample=true (greedy decoding gives one continuation per prompt)."
        )
    if generate.do_sample:
        if not (is_number(generate.temperature) and generate.temperature > 0):
            problems.append(f"generate.temperature must be above 0, got {generate.temperature!r}.")
        if not (is_number(generate.top_p) and 0 < generate.top_p <= 1):
            problems.append(f"generate.top_p must be in (0, 1], got {generate.top_p!r}.")
        if not is_whole(generate.top_k, 0):
            problems.append(
                f"generate.top_k must be a whole number (0: off), got {generate.top_k!r}."
            )
    if problems:
        raise LmforgeError(" ".join(problems))


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


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
def load_model(cfg: DictConfig) -> LoadedModel:
    """The model of `ckpt_path` or `model_dir`, with `max_length`, `text_column` and
    `threshold` overrides applied."""
    loaded = (
        load_from_checkpoint(cfg.ckpt_path) if cfg.ckpt_path else load_from_folder(cfg.model_dir)
    )
    positions = model_positions(loaded.model)
    if cfg.max_length is not None:
        if positions and cfg.max_length > positions:
            raise LmforgeError(
                f"max_length={cfg.max_length} is more than the model's {positions} positions."
            )
        loaded.max_length = cfg.max_length
    elif positions:
        loaded.max_length = min(loaded.max_length, positions)
    if cfg.text_column:
        loaded.text_column = str(cfg.text_column)
    if cfg.threshold is not None:
        loaded.threshold = float(cfg.threshold)
    log.info(
        "Loaded a %s model (max_length %d, text column %r)",
        loaded.task,
        loaded.max_length,
        loaded.text_column,
    )
    return loaded


def load_from_checkpoint(ckpt_path: str) -> LoadedModel:
    """An lmforge checkpoint; its run directory gives the tokenizer and the data settings."""
    module = load_task_module(ckpt_path)
    source = run_dir_of(ckpt_path)
    for needed in (CONFIG_FILE, TOKENIZER_DIR):
        if not (source / needed).exists():
            raise LmforgeError(
                f"ckpt_path={ckpt_path!r}: its run directory {source} holds no {needed}; "
                "lmforge-predict needs the run directory a checkpoint was saved in (or export "
                "the model and use model_dir=)."
            )
    check_checkpoint_run(ckpt_path, module.task_name, source)
    data = OmegaConf.load(source / CONFIG_FILE).data
    # Classification and LM data name a text column; NER data a column of words.
    text_column = OmegaConf.select(data, "text_column") or OmegaConf.select(data, "token_column")
    return LoadedModel(
        task=module.task_name,
        model=module.model,
        tokenizer=load_tokenizer_for_batching(str(source / TOKENIZER_DIR)),
        max_length=OmegaConf.select(data, "max_length") or OmegaConf.select(data, "block_size"),
        text_column=text_column or "text",
        text_pair_column=OmegaConf.select(data, "text_pair_column"),
        label_names=list(getattr(module, "label_names", [])),
        multi_label=bool(getattr(module, "multi_label", False)),
        threshold=float(getattr(module, "threshold", DEFAULT_THRESHOLD)),
    )


def load_from_folder(model_dir: str) -> LoadedModel:
    """An exported Hugging Face folder: the task from `lmforge.json` or the architecture,
    label names from the config's `id2label`."""
    folder = Path(str(model_dir)).expanduser()
    if not (folder / "config.json").is_file():
        raise LmforgeError(
            f"model_dir={model_dir!r}: no config.json there; expected a folder written by "
            "save_pretrained or lmforge-export (config.json, weights, tokenizer files)."
        )
    settings = read_export_settings(folder, model_dir)
    if settings.get("format", "hf") != "hf":
        raise LmforgeError(
            f"model_dir={model_dir!r} holds an export of format {settings['format']!r}; "
            "lmforge-predict runs Hugging Face folders: export with lmforge-export format=hf "
            "(the default)."
        )
    config = AutoConfig.from_pretrained(folder)
    task = settings.get("task") or task_of_architectures(config.architectures, model_dir)
    if task not in TASKS:
        raise LmforgeError(
            f"model_dir={model_dir!r}: {EXPORT_SETTINGS_FILE} names the task {task!r}; expected "
            f"one of {', '.join(TASKS)}."
        )
    try:
        model = TASKS[task].auto_class.from_pretrained(folder)
    except Exception as err:
        raise LmforgeError(
            f"model_dir={model_dir!r} could not be loaded as a {task} Hugging Face model "
            "(lmforge-predict reads folders of save_pretrained or lmforge-export format=hf, not "
            f"ONNX or TorchScript ones): {err}"
        ) from err
    try:
        tokenizer = load_tokenizer_for_batching(str(folder))
    except LmforgeError as err:
        raise LmforgeError(
            f"model_dir={model_dir!r} holds no tokenizer that loads; save one beside the model "
            f"(tokenizer.save_pretrained). {err}"
        ) from err
    classifies = task in ("text_classification", "token_classification")
    labels = [config.id2label[i] for i in range(config.num_labels)] if classifies else []
    multi_label = settings.get("multi_label")
    if multi_label is None:
        multi_label = config.problem_type == "multi_label_classification"
    return LoadedModel(
        task=task,
        model=model,
        tokenizer=tokenizer,
        max_length=settings.get("max_length") or tokenizer.model_max_length,
        text_column=settings.get("text_column") or "text",
        text_pair_column=settings.get("text_pair_column"),
        label_names=labels,
        multi_label=bool(multi_label),
        threshold=float(settings.get("threshold") or DEFAULT_THRESHOLD),
    )


def read_export_settings(folder: Path, model_dir: str) -> dict[str, Any]:
    """The folder's `lmforge.json` (empty when there is none)."""
    path = folder / EXPORT_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise LmforgeError(f"model_dir={model_dir!r}: {path} is not valid JSON: {err}") from err
    if not isinstance(settings, dict):
        raise LmforgeError(f"model_dir={model_dir!r}: {path} should hold a JSON object.")
    return settings


def task_of_architectures(architectures: list[str] | None, model_dir: str) -> str:
    """The task of a Hugging Face architecture name (`BertForTokenClassification` -> NER)."""
    for name in architectures or []:
        for ending, task in TASK_OF_ARCHITECTURE.items():
            if name.endswith(ending):
                return task
    raise LmforgeError(
        f"model_dir={model_dir!r}: its config.json names the architecture(s) "
        f"{architectures or 'none'}, none of which ends in {', '.join(TASK_OF_ARCHITECTURE)}; "
        f'name the task in {EXPORT_SETTINGS_FILE} ({{"task": "text_classification"}}, ...).'
    )


def model_positions(model: Any) -> int | None:
    """How many positions the model embeds (None for models without a fixed limit)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ----- reading the inputs -------------------------------------------------------------------
def input_file_of(value: Any) -> Path | None:
    """The file `input=` names, checked (it exists, is UTF-8, has a known ending), or None
    for typed texts. A single word that looks like a path (a `/` or a data file ending) counts
    as a file, so a mistyped file name is an error rather than a text to predict on."""
    if isinstance(value, ListConfig | list):
        return None
    text = str(value)
    looks_like_path = bool(text) and not any(c.isspace() for c in text)
    looks_like_path = looks_like_path and ("/" in text or Path(text).suffix.lower() in FORMATS)
    if Path(text).expanduser().is_file() or looks_like_path:
        return check_file(text, "input")
    return None


def typed_inputs(value: Any, loaded: LoadedModel) -> list[InputText]:
    """The texts typed on the command line: `input='a text'` or `input='[one,two]'`."""
    texts = [str(v) for v in value] if isinstance(value, ListConfig | list) else [str(value)]
    if not texts or any(not t.strip() for t in texts):
        raise LmforgeError(
            "input is empty; give a text (input='a text'), a list of texts (input='[one,two]') "
            "or a .txt/.csv/.jsonl/.json/.tsv/.parquet file."
        )
    if loaded.text_pair_column:
        raise LmforgeError(
            f"This model classifies text pairs ({loaded.text_column!r} + "
            f"{loaded.text_pair_column!r}); give input= a csv/jsonl file with both columns."
        )
    return [InputText(t, where=f"input text {i + 1}") for i, t in enumerate(texts)]


def read_input_file(file: Path, loaded: LoadedModel) -> list[InputText]:
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
    columns = [loaded.text_column, loaded.text_pair_column]
    for column in filter(None, columns):
        if column not in table.column_names:
            raise LmforgeError(
                f"input={path!r} has no column {column!r} (the model's text column); columns "
                f"found: {', '.join(table.column_names)}. Name the text column with "
                "text_column=<column>."
            )
    pairs = table[loaded.text_pair_column] if loaded.text_pair_column else [None] * len(table)
    inputs, missing = [], []
    for row, (text, pair) in enumerate(zip(table[loaded.text_column], pairs, strict=True), 1):
        if is_missing(text) or (loaded.text_pair_column and is_missing(pair)):
            missing.append(row)
            continue
        words = loaded.task == "token_classification" and isinstance(text, list)
        inputs.append(
            InputText(
                [str(w) for w in text] if words else str(text),
                None if pair is None else str(pair),
                where=f"input={path!r} row {row}",
            )
        )
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
        raise LmforgeError(
            f"input={path!r}: {len(missing)} row(s) have no text in column "
            f"{loaded.text_column!r}"
            + (f" or {loaded.text_pair_column!r}" if loaded.text_pair_column else "")
            + f": row(s) {shown} (1-based, header not counted). Fill or remove them."
        )
    return inputs


def is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return not (value if isinstance(value, list) else str(value).strip())


def check_inputs(loaded: LoadedModel, inputs: list[InputText]) -> None:
    """Task-specific checks of every input before any prediction runs."""
    if loaded.task == "masked_lm":
        mask = loaded.tokenizer.mask_token
        if mask is None:
            raise LmforgeError("The masked LM's tokenizer has no mask token to fill.")
        for item in inputs:
            if mask not in str(item.text):
                raise LmforgeError(
                    f"{item.where} has no mask token: write {mask} where the model should fill "
                    f"in a word (e.g. 'the {mask} was won'). Got {str(item.text)[:80]!r}."
                )


# ----- prediction per task ------------------------------------------------------------------
def batch_predictor(
    loaded: LoadedModel, cfg: DictConfig, device: torch.device
) -> Callable[[list[InputText]], list[dict]]:
    """The function that turns a batch of inputs into records, for the model's task."""
    if loaded.task == "text_classification":
        return functools.partial(classify_texts, loaded, device=device)
    if loaded.task == "token_classification":
        stride = window_stride(loaded, cfg.stride)
        return functools.partial(
            tag_inputs, loaded, stride=stride, batch_size=cfg.batch_size, device=device
        )
    if loaded.task == "causal_lm":
        return functools.partial(
            generate_continuations, loaded, options=cfg.generate, device=device
        )
    if loaded.task == "masked_lm":
        return functools.partial(fill_masks, loaded, top_k=cfg.fill_top_k, device=device)
    raise LmforgeError(f"lmforge-predict cannot predict with a {loaded.task!r} model.")


@torch.inference_mode()
def classify_texts(loaded: LoadedModel, batch: list[InputText], device: torch.device) -> list[dict]:
    """Per text: the label and every label's probability (multi-label: the labels above the
    threshold and every label's own probability)."""
    texts = [str(item.text) for item in batch]
    pairs = [str(item.text_pair) for item in batch] if loaded.text_pair_column else None
    encoded = loaded.tokenizer(
        texts,
        pairs,
        truncation=True,
        max_length=loaded.max_length,
        padding=True,
        return_tensors="pt",
    ).to(device)
    logits = loaded.model(**encoded).logits  # (batch, num_labels)
    names = loaded.label_names
    probabilities = logits.sigmoid() if loaded.multi_label else logits.softmax(dim=-1)
    best = probabilities.argmax(dim=-1).tolist()
    records = []
    for item, row, top in zip(batch, probabilities.tolist(), best, strict=True):
        record: dict[str, Any] = {"text": str(item.text)}
        if pairs is not None:
            record["text_pair"] = item.text_pair
        if loaded.multi_label:
            record["labels"] = [n for n, p in zip(names, row, strict=True) if p > loaded.threshold]
        else:
            record["label"] = names[top]
        record["probabilities"] = dict(zip(names, row, strict=True))
        records.append(record)
    return records


def window_stride(loaded: LoadedModel, stride: int | None) -> int:
    """Tokens shared by consecutive windows of a long NER input (null: a quarter of the
    window); the tokenizer needs fewer than the window's room for words."""
    room = loaded.max_length - loaded.tokenizer.num_special_tokens_to_add(pair=False)
    chosen = room // 4 if stride is None else stride
    if not 0 <= chosen < room:
        raise LmforgeError(
            f"stride={stride} must be less than the {room} word tokens of a window "
            f"(max_length={loaded.max_length} minus special tokens)."
        )
    return chosen


def tag_inputs(
    loaded: LoadedModel, batch: list[InputText], stride: int, batch_size: int, device: torch.device
) -> list[dict]:
    """Per input: its words (split on whitespace), a tag per word and the entity spans."""
    sentences = [item.text if isinstance(item.text, list) else item.text.split() for item in batch]
    tagged = tag_sentences(
        loaded.model,
        loaded.tokenizer,
        sentences,
        loaded.label_names,
        loaded.max_length,
        stride,
        batch_size,
        device,
    )
    return [
        {
            "text": item.text if isinstance(item.text, str) else " ".join(item.text),
            "words": words,
            "tags": tags,
            "entities": entity_spans(words, tags, scores),
        }
        for item, words, (tags, scores) in zip(batch, sentences, tagged, strict=True)
    ]


@torch.inference_mode()
def generate_continuations(
    loaded: LoadedModel, batch: list[InputText], options: DictConfig, device: torch.device
) -> list[dict]:
    """Per prompt: `num_return_sequences` generations, each the decoded prompt + continuation
    and the continuation alone. Prompts longer than the model can take keep their end."""
    tokenizer = loaded.tokenizer
    room = loaded.max_length
    positions = model_positions(loaded.model)
    if positions:
        room = min(room, positions - options.max_new_tokens)
    if room < 1:
        raise LmforgeError(
            f"generate.max_new_tokens={options.max_new_tokens} leaves no room for the prompt in "
            f"the model's {positions} positions."
        )
    prompts = [
        tokenizer(str(item.text), add_special_tokens=False)["input_ids"][-room:] for item in batch
    ]
    for item, prompt in zip(batch, prompts, strict=True):
        if not prompt:
            raise LmforgeError(f"{item.where} gives no tokens to continue: {item.text!r}.")
    # Left padding: every prompt ends where generation starts.
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
    )
    sampling = (
        {"temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
        if options.do_sample
        else {}
    )
    output = loaded.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=options.max_new_tokens,
        do_sample=options.do_sample,
        num_return_sequences=options.num_return_sequences,
        pad_token_id=pad,
        **sampling,
    )  # (batch * num_return_sequences, width + new)
    new_tokens = output[:, width:].tolist()
    records = []
    for index, (item, prompt) in enumerate(zip(batch, prompts, strict=True)):
        start = index * options.num_return_sequences
        generations = [
            decode_generation(tokenizer, prompt, new)
            for new in new_tokens[start : start + options.num_return_sequences]
        ]
        records.append({"text": str(item.text), "generations": generations})
    return records


def decode_generation(
    tokenizer: PreTrainedTokenizerBase, prompt: list[int], new: list[int]
) -> dict[str, str]:
    """The decoded prompt + continuation, and the continuation alone (cut from the full text,
    so a continued word such as WordPiece's `##s` reads right)."""
    full = tokenizer.decode(prompt + new, skip_special_tokens=True)
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    tail = (
        full[len(head) :]
        if full.startswith(head)
        else tokenizer.decode(new, skip_special_tokens=True)
    )
    return {"text": full, "continuation": tail.strip()}


@torch.inference_mode()
def fill_masks(
    loaded: LoadedModel, batch: list[InputText], top_k: int, device: torch.device
) -> list[dict]:
    """Per text: for each mask token, in order, the `top_k` most likely tokens and their
    probabilities (special tokens left out)."""
    tokenizer = loaded.tokenizer
    texts = [str(item.text) for item in batch]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    lengths = encoded["attention_mask"].sum(dim=1).tolist()
    for item, length in zip(batch, lengths, strict=True):
        if length > loaded.max_length:
            raise LmforgeError(
                f"{item.where} is {length} tokens long, over max_length={loaded.max_length}; "
                "shorten it to the sentence around its mask(s)."
            )
    encoded = encoded.to(device)
    logits = loaded.model(**encoded).logits  # (batch, seq, vocab)
    masks = encoded["input_ids"] == tokenizer.mask_token_id  # (batch, seq)
    probabilities = logits[masks].softmax(dim=-1)  # (masks, vocab), row by row
    probabilities[:, tokenizer.all_special_ids] = 0.0
    scores, ids = probabilities.topk(top_k, dim=-1)  # (masks, top_k)
    candidates = [
        [
            {"token": tokenizer.decode([token]).strip(), "score": score}
            for score, token in zip(row_scores, row_ids, strict=True)
        ]
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True)
    ]
    records, taken = [], 0
    for text, count in zip(texts, masks.sum(dim=1).tolist(), strict=True):
        fills = candidates[taken : taken + count]
        taken += count
        records.append({"text": text, "fills": fills})
    return records
