"""Deployment export: a checkpoint as a Hugging Face folder, an ONNX graph or a TorchScript
module, checked against the PyTorch model on real inputs.

The export folder is self-contained: the model, the run's tokenizer, `lmforge.json` (what
`lmforge-predict` and a user need to run it: the task, the run's settings such as labels and
max_length, the inputs and outputs) and `parity.json`, the largest difference of every output
the task family exports (its spec's `export_outputs`) between the exported model and the
training module, on batches of shapes other than the one traced. Parity beyond `tolerance` is
an error; the files are kept for inspection.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lmforge import __version__
from lmforge.config.positions import usable_positions
from lmforge.config.schema import ExportSchema, check_command_settings
from lmforge.errors import LmforgeError
from lmforge.runtime.record import ExportSettings, write_export_settings
from lmforge.runtime.rundir import EXPORT_SETTINGS_FILE, write_json, write_new
from lmforge.tasks.base import TaskModule
from lmforge.tasks.runs import TrainedRun, load_run
from lmforge.tasks.spec import TaskFamily

log = logging.getLogger(__name__)

FORMATS = ("hf", "onnx", "torchscript")
# What `pip install lmforge[onnx]` brings: the exporter's backend and the runtime of the check.
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
# The ONNX exporter's optimizer logs every rewrite at INFO: hundreds of lines per export.
ONNX_CHATTY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")
PARITY_FILE = "parity.json"
QUANTIZATION_FILE = "quantization.json"
MODEL_FILES = {"hf": None, "onnx": "model.onnx", "torchscript": "model.pt"}
# Positional order of the exported inputs (TorchScript and ONNX take them in this order).
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")

# Tokens per row and padded width of the traced example (its second row is padded, so the
# trace records the masking path), and of the check batches: other batch sizes and lengths,
# one padded and one without padding (width None: as long as its row).
EXPORT_BATCH: tuple[tuple[int, ...], int | None] = ((16, 9), 16)
CHECK_BATCHES: tuple[tuple[tuple[int, ...], int | None], ...] = (((23, 14, 6), 23), ((11,), None))
# Decoder positions an encoder-decoder's parity check compares.
DECODER_STEPS = 5
# Parity inputs when neither parity_texts nor the run's data can be read.
BUILTIN_TEXTS = (
    "The library reads and writes spreadsheets in several formats and converts between them "
    "without losing formulas or cell styles.",
    "A small command-line tool that watches a folder and uploads every new photo to a remote "
    "server over an encrypted connection.",
    "This package provides the documentation for the game engine, including tutorials, the "
    "scripting reference and many examples.",
    "An editor for music notation: it plays back scores, prints parts for each instrument and "
    "imports files from other programs.",
    "Tools to analyse large data sets of weather measurements, with plots of temperature, rain "
    "and wind over many years.",
    "The mail client keeps messages in local folders, filters spam and encrypts letters with "
    "the keys of their receivers.",
)

Batch = dict[str, torch.Tensor]
# Runs an exported model on a batch: its outputs, in the order of the family's export_outputs.
Runner = Callable[[Batch], tuple[torch.Tensor, ...]]
Text = tuple[str, str | None]


def export(cfg: DictConfig) -> Path:
    """Export `cfg.ckpt_path` in `cfg.format`, check parity and return the export folder."""
    fmt = _check_options(cfg)
    out = _output_dir(cfg)
    run = load_run(str(cfg.ckpt_path), "lmforge-export")
    family, settings = run.family, run.settings()
    if fmt not in family.export_formats:
        raise LmforgeError(
            f"format={fmt}: {family.name} models export as {', '.join(family.export_formats)} "
            f"only: a {fmt} file holds one traced forward pass, and these models reach their "
            "output otherwise (a generation loop calling the decoder once per token, or "
            "scores read from several passes per input)."
        )
    model = run.module.export_model().eval()  # a copy with any adapter merged
    tokenizer, input_names = _export_tokenizer(family, model, str(run.tokenizer_dir))
    texts = _parity_texts(cfg, run, settings)
    example, checks = _parity_batches(tokenizer, texts, input_names, model)
    if family.decoder_inputs:
        example, *checks = [_with_decoder_inputs(b, model) for b in (example, *checks)]
    example, *checks = [run.module.export_batch(b) for b in (example, *checks)]

    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    log.info("Exporting %s as %s to %s", cfg.ckpt_path, fmt, out)
    exported = ExportedModel(model, input_names, family.export_outputs)
    run_exported = _save_model(fmt, exported, example, out, cfg, family)
    _write_info(out, cfg, fmt, family, model, settings, input_names)
    _write_model_card(out, fmt, family, cfg.ckpt_path, input_names)
    report = check_parity(run.module, run_exported, checks, family, fmt, float(cfg.tolerance))
    _record_parity(out, report)
    if cfg.quantize:
        _quantize(out, cfg, run, model)
    return out


# ----- options and folders --------------------------------------------------------------------
def _check_options(cfg: DictConfig) -> str:
    """Fail fast, before loading anything, on settings that cannot work."""
    check_command_settings(cfg, ExportSchema)
    fmt = str(cfg.format)
    if cfg.get("quantize") and fmt != "onnx":
        raise LmforgeError(
            f"quantize={cfg.quantize} quantizes an ONNX graph (ONNX Runtime's dynamic "
            f"quantization); format={fmt} has none. Use format=onnx quantize={cfg.quantize}."
        )
    if fmt == "onnx":
        require_onnx_extras()
    return fmt


def require_onnx_extras() -> None:
    """The ONNX exporter and runtime are optional dependencies: name what is missing."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise LmforgeError(
            f"format=onnx needs the packages {', '.join(ONNX_PACKAGES)}; missing: "
            f"{', '.join(missing)}. Install them with `pip install lmforge[onnx]` (or choose "
            "format=hf or format=torchscript)."
        )


def _output_dir(cfg: DictConfig) -> Path:
    """The export folder: `output_dir` when set (new or empty), else this run's directory,
    which may hold only Hydra's record of this command."""
    if cfg.output_dir:
        out, key, allowed = Path(str(cfg.output_dir)).expanduser(), "output_dir", set()
    else:
        out, key = Path(str(cfg.paths.output_dir)), "paths.output_dir"
        allowed = {".hydra", f"{cfg.task_name}.log"}
    if out.exists() and not out.is_dir():
        raise LmforgeError(f"{key}={str(out)!r} is a file; the export needs a folder.")
    if out.is_dir():
        found = sorted(p.name for p in out.iterdir() if p.name not in allowed)
        if found:
            raise LmforgeError(
                f"{key}={str(out)!r} is not empty (it holds {', '.join(found[:5])}"
                f"{', ...' if len(found) > 5 else ''}); lmforge-export never overwrites files. "
                "Name a new or empty folder, or leave output_dir unset for a new run directory "
                "under outputs/export/."
            )
    return out


# ----- tokenizer and inputs -------------------------------------------------------------------
def _export_tokenizer(
    family: TaskFamily, model: PreTrainedModel, tokenizer_dir: str
) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """The run's tokenizer, set to give exactly the exported model's inputs, and their names
    in `INPUT_ORDER`: what the tokenizer gives and the model's forward accepts (no token type
    ids for families whose models train without them)."""
    try:
        produced = AutoTokenizer.from_pretrained(tokenizer_dir).model_input_names
        accepted = inspect.signature(model.forward).parameters
        names = [n for n in INPUT_ORDER if n in produced and n in accepted]
        if not family.token_type_ids:
            names = [n for n in names if n != "token_type_ids"]
        # Passed at load, the names are saved with the tokenizer (an attribute set later is not).
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, model_input_names=names)
    except Exception as err:
        raise LmforgeError(
            f"The run's tokenizer {tokenizer_dir} could not be loaded: {err}"
        ) from err
    if tokenizer.pad_token is None:
        raise LmforgeError(
            f"The run's tokenizer {tokenizer_dir} has no pad token, so batches of different "
            "lengths cannot be checked; the run's tokenizer should have been saved with one."
        )
    return tokenizer, names


def _position_limit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest sequence the model takes (its positions), capped by the tokenizer."""
    limit = usable_positions(model.config.to_dict()) or tokenizer.model_max_length
    return int(min(limit, tokenizer.model_max_length))


def _parity_batches(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[Text],
    input_names: list[str],
    model: PreTrainedModel,
) -> tuple[Batch, list[Batch]]:
    """The traced example (`EXPORT_BATCH`) and the check batches (`CHECK_BATCHES`), each from
    other texts where there are enough."""
    limit = _position_limit(model, tokenizer)
    example = _encode(tokenizer, texts[:2], *EXPORT_BATCH, input_names, limit)
    checks, start = [], len(EXPORT_BATCH[0])
    for lengths, width in CHECK_BATCHES:
        rows = [texts[(start + i) % len(texts)] for i in range(len(lengths))]
        checks.append(_encode(tokenizer, rows, lengths, width, input_names, limit))
        start += len(lengths)
    return example, checks


def _with_decoder_inputs(batch: Batch, model: PreTrainedModel) -> Batch:
    """An encoder-decoder's batch: the decoder reads the start token and then the first
    `DECODER_STEPS - 1` source tokens (any tokens do: parity compares the two models on the
    same inputs)."""
    config: Any = model.config
    start = config.decoder_start_token_id
    start = start if start is not None else config.pad_token_id
    source = batch["input_ids"][:, : DECODER_STEPS - 1]
    first = torch.full((source.shape[0], 1), int(start or 0), dtype=source.dtype)
    decoder_ids = torch.cat([first, source], dim=1)
    return {
        **batch,
        "decoder_input_ids": decoder_ids,
        "decoder_attention_mask": torch.ones_like(decoder_ids),
    }


def _encode(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Text],
    lengths: Sequence[int],
    width: int | None,
    input_names: list[str],
    limit: int,
) -> Batch:
    """A batch of real inputs: row i cut at lengths[i] tokens, all padded to `width` (None:
    to the longest row)."""
    features = [
        tokenizer(text, pair, truncation=True, max_length=min(length, limit))
        for (text, pair), length in zip(rows, lengths, strict=True)
    ]
    padding: dict[str, Any] = (
        {"padding": "max_length", "max_length": min(width, limit)} if width else {}
    )
    batch = tokenizer.pad(features, return_tensors="pt", **padding)
    return {name: batch[name] for name in input_names}


def _parity_texts(cfg: DictConfig, run: TrainedRun, settings: dict[str, Any]) -> list[Text]:
    """Texts for the example and the check batches: `parity_texts`, else the run's data,
    else built-in sentences. Sentence-pair models get a second text per row."""
    pair_model = bool(settings.get("text_pair_column"))
    if cfg.parity_texts:
        path = Path(str(cfg.parity_texts)).expanduser()
        if not path.is_file():
            raise LmforgeError(f"parity_texts={cfg.parity_texts!r}: no such file.")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise LmforgeError(f"parity_texts={cfg.parity_texts!r}: the file holds no text.")
        return _as_rows(lines, pair_model)
    rows = _data_texts(run, settings)
    if rows:
        return rows
    log.info("No readable data file in the run's config; checking parity on built-in sentences.")
    return _as_rows(list(BUILTIN_TEXTS), pair_model)


def _as_rows(texts: list[str], pair_model: bool) -> list[Text]:
    """Plain texts as rows; a pair model pairs each text with the next one."""
    if not pair_model:
        return [(t, None) for t in texts]
    return [(t, texts[(i + 1) % len(texts)]) for i, t in enumerate(texts)]


def _data_texts(run: TrainedRun, settings: dict[str, Any], wanted: int = 8) -> list[Text]:
    """Up to `wanted` texts of the run's validation, test or training file (the first that
    reads), through the run's own datamodule reader; [] when none can be read."""
    try:
        datamodule = run.datamodule()
    except Exception as err:
        log.info("The run's data config could not be instantiated for parity texts: %s", err)
        return []
    pair_column = settings.get("text_pair_column")
    for split in ("validation", "test", "train"):
        path = datamodule.sources.get(f"{split}_file")
        if not path or not Path(str(path)).is_file():
            continue
        try:
            dataset = datamodule.read_file(str(path), f"data.{split}_file")
        except LmforgeError as err:
            log.info("Parity texts: %s", err)
            continue
        # Read after read_file: CoNLL and .txt readers set the column they produced.
        column = datamodule.run_settings()["text_column"]
        if column not in dataset.column_names:  # e.g. translation dicts: no plain text column
            continue
        rows: list[Text] = []
        for row in dataset.select(range(min(len(dataset), 10 * wanted))):
            text = row[column]
            text = " ".join(map(str, text)) if isinstance(text, list) else text  # words
            if isinstance(text, str) and text.strip():
                rows.append((text, str(row[pair_column]) if pair_column else None))
            if len(rows) == wanted:
                break
        if rows:
            log.info("Parity texts: %d rows of %s", len(rows), path)
            return rows
    return []


# ----- exporters: each saves the model and returns a function running the saved file ----------
class ExportedModel(nn.Module):
    """The model as tracing and ONNX want it: tensors in `INPUT_ORDER` in, the family's export
    outputs out as a tuple (no output dict, no cache)."""

    def __init__(
        self, model: PreTrainedModel, input_names: list[str], output_names: tuple[str, ...]
    ) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = tuple(output_names)
        accepted = inspect.signature(model.forward).parameters
        self.options = {"return_dict": True}
        if "use_cache" in accepted:
            self.options["use_cache"] = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        inputs = {name: given[name] for name in self.input_names}
        outputs = self.model(**inputs, **self.options)
        return tuple(outputs[name] for name in self.output_names)


def _export_hf(
    exported: ExportedModel, example: Batch, out: Path, cfg: DictConfig, family: TaskFamily
) -> Runner:
    """save_pretrained (adapters already merged); the check reloads it through its Auto class."""
    exported.model.save_pretrained(out)
    reloaded = family.auto_model_class().from_pretrained(out).eval()
    return lambda batch: tuple(reloaded(**batch)[name] for name in exported.output_names)


def _export_onnx(
    exported: ExportedModel, example: Batch, out: Path, cfg: DictConfig, family: TaskFamily
) -> Runner:
    """torch.onnx (dynamo exporter) with dynamic batch and sequence axes; checked in
    onnxruntime. Weights stay inside model.onnx unless past protobuf's 2 GB limit."""
    import onnxruntime

    path = out / cast(str, MODEL_FILES["onnx"])
    exported.model.config.save_pretrained(out)
    names = exported.input_names
    batch_dim, sequence_dim = torch.export.Dim("batch"), torch.export.Dim("sequence")
    size = sum(p.numel() * p.element_size() for p in exported.parameters())
    with warnings.catch_warnings(), _quiet(ONNX_CHATTY_LOGGERS):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported.eval(),
            tuple(example[name] for name in names),
            str(path),
            input_names=names,
            output_names=list(exported.output_names),
            dynamic_shapes={name: {0: batch_dim, 1: sequence_dim} for name in names},
            opset_version=int(cfg.onnx_opset),
            external_data=size >= 2**31 - 2**26,
            dynamo=True,
            verbose=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in session.get_inputs()]

    def run(batch: Batch) -> tuple[torch.Tensor, ...]:
        feeds = {name: batch[name].numpy() for name in graph_inputs}
        results = session.run(list(exported.output_names), feeds)
        return tuple(torch.from_numpy(result) for result in results)

    return run


def _export_torchscript(
    exported: ExportedModel, example: Batch, out: Path, cfg: DictConfig, family: TaskFamily
) -> Runner:
    """torch.jit.trace on the example; the tracer freezes Python decisions on shapes, which is
    what the check on other shapes is for. Checked after torch.jit.load."""
    path = out / cast(str, MODEL_FILES["torchscript"])
    exported.model.config.save_pretrained(out)
    names = exported.input_names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(
            exported.eval(),
            tuple(example[name] for name in names),
            strict=False,
            check_trace=False,
        )
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return lambda batch: tuple(loaded(*(batch[name] for name in names)))


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    """Keep libraries' step-by-step INFO lines out of the run log for a while."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


EXPORTERS: dict[str, Callable[..., Runner]] = {
    "hf": _export_hf,
    "onnx": _export_onnx,
    "torchscript": _export_torchscript,
}


def _save_model(fmt: str, exported: ExportedModel, *args: Any) -> Runner:
    """Run the format's exporter; its failures become one readable error."""
    try:
        return EXPORTERS[fmt](exported, *args)
    except LmforgeError:
        raise
    except Exception as err:
        raise LmforgeError(
            f"format={fmt}: exporting this {exported.model.config.model_type} model failed "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0]}); set "
            "HYDRA_FULL_ERROR=1 for the full trace, or try another format."
        ) from err


# ----- parity ---------------------------------------------------------------------------------
def max_abs_diff(reference: torch.Tensor, exported: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest absolute difference of one output; per-token outputs only where `mask` has a
    token (padding positions carry no prediction). Shape mismatch or NaN count as infinite."""
    if reference.shape != exported.shape:
        return math.inf
    difference = (reference.float() - exported.float()).abs()
    if difference.dim() >= 2 and difference.shape[:2] == mask.shape:
        difference = difference[mask.bool()]  # (batch, seq, ...): the positions with a token
    value = float(difference.max()) if difference.numel() else 0.0
    return value if math.isfinite(value) else math.inf


def check_parity(
    module: TaskModule,
    run_exported: Runner,
    batches: list[Batch],
    family: TaskFamily,
    fmt: str,
    tolerance: float,
) -> dict[str, Any]:
    """Run the training module and the exported model on each batch and compare every output
    the family exports; the parity record."""
    inputs, worst = [], 0.0
    with torch.no_grad():
        for batch in batches:
            reference = module.model(**batch)
            exported = run_exported(batch)
            # Outputs per decoder position for encoder-decoders, per input token otherwise.
            mask = batch.get("decoder_attention_mask", batch["attention_mask"])
            diffs = {
                name: max_abs_diff(reference[name], output, mask)
                for name, output in zip(family.export_outputs, exported, strict=True)
            }
            diff = max(diffs.values())
            padded = bool((batch["attention_mask"] == 0).any())
            inputs.append(
                {
                    "shape": list(batch["input_ids"].shape),
                    "padded": padded,
                    "max_abs_diff": diff,
                    "outputs": diffs,
                }
            )
            worst = max(worst, diff)
    for record in inputs:
        log.info("Parity %s on %s: max |diff| %.3g", fmt, record["shape"], record["max_abs_diff"])
    return {
        "format": fmt,
        "outputs": list(family.export_outputs),
        "max_abs_diff": worst if math.isfinite(worst) else None,
        "tolerance": tolerance,
        "inputs": inputs,
        "passed": math.isfinite(worst) and worst <= tolerance,
    }


def _record_parity(out: Path, report: dict[str, Any]) -> None:
    """Write parity.json; a failed check is an error (the files stay for inspection)."""
    write_json(out, PARITY_FILE, report)
    fmt, tolerance, diff = report["format"], report["tolerance"], report["max_abs_diff"]
    if not report["passed"]:
        found = f"by up to {diff} in" if diff is not None else "with non-finite or misshaped"
        raise LmforgeError(
            f"Parity check failed: the {fmt} export differs from the PyTorch model {found} "
            f"its outputs, above tolerance={tolerance} (see {out / PARITY_FILE}; the files are "
            "kept for inspection). Check the export, or raise `tolerance=` if the difference is "
            "acceptable for this model."
        )
    log.info("Exported %s to %s; parity max |diff| %.3g <= %g", fmt, out, diff, tolerance)


# ----- int8 --------------------------------------------------------------------------------------
def _quantize(out: Path, cfg: DictConfig, run: TrainedRun, model: PreTrainedModel) -> None:
    """Write the int8 graph, test it and the checkpoint on the run's test split, record both
    (quantization.json, lmforge.json, the model card) and fail above `max_metric_drop`."""
    from lmforge.onnx_backend import QUANTIZED_FILE, OnnxModel, quantize_int8

    family = run.family
    started = time.perf_counter()
    target = quantize_int8(out / cast(str, MODEL_FILES["onnx"]), out / QUANTIZED_FILE)
    log.info("Quantized to int8 in %.1f s: %s", time.perf_counter() - started, target)
    metric = f"test/{family.primary_metric}"
    reference = _test_metrics(cfg, run, run.module.model)
    graph = OnnxModel(
        target, model.config, family.export_outputs, loss_function=model.loss_function
    )
    quantized = _test_metrics(cfg, run, graph)
    if metric not in reference or metric not in quantized:
        raise LmforgeError(
            f"quantize=int8: the test split gave no {metric} to compare the int8 graph by "
            f"(got {', '.join(sorted(quantized)) or 'nothing'})."
        )
    lower = family.primary_metric in family.lower_is_better
    before, after = reference[metric], quantized[metric]
    if lower:  # percent worse
        drop = 100 * (after - before) / abs(before) if before else math.inf
        unit = "%"
    else:  # points lost
        drop, unit = 100 * (before - after), " points"
    fp32_file = cast(str, MODEL_FILES["onnx"])
    sizes = {name: (out / name).stat().st_size for name in (fp32_file, QUANTIZED_FILE)}
    record = {
        "method": "ONNX Runtime dynamic quantization (int8 weights, activations per batch)",
        "file": QUANTIZED_FILE,
        "metric": metric,
        "checkpoint": before,
        "int8": after,
        "drop": round(drop, 4),
        "drop_unit": unit.strip(),
        "max_metric_drop": float(cfg.max_metric_drop),
        "test_examples": quantized.pop("_examples", None),
        "checkpoint_metrics": {k: v for k, v in reference.items() if not k.startswith("_")},
        "int8_metrics": quantized,
        "bytes": {"fp32": sizes[fp32_file], "int8": sizes[QUANTIZED_FILE]},
        "passed": drop <= float(cfg.max_metric_drop),
        "forced": bool(cfg.force),
    }
    write_json(out, QUANTIZATION_FILE, record)
    summary = (
        f"{metric}: {before:.4f} with the checkpoint, {after:.4f} with the int8 graph "
        f"({'+' if drop < 0 else '-'}{abs(drop):.2f}{unit}); {sizes[QUANTIZED_FILE] / 2**20:.1f} "
        f"MiB against {sizes[fp32_file] / 2**20:.1f} MiB in fp32"
    )
    if not record["passed"] and not cfg.force:
        raise LmforgeError(
            f"quantize=int8: the int8 graph loses too much: {summary}, above "
            f"max_metric_drop={cfg.max_metric_drop}{unit} (see {out / QUANTIZATION_FILE}; the "
            "files are kept). Keep the fp32 graph (quantize=null), allow more "
            "(max_metric_drop=...), or keep it anyway with force=true."
        )
    # The folder's graph is now the int8 one: lmforge-predict and lmforge-serve run it.
    # lmforge.json was written by this export moments ago: updated in place.
    info = json.loads((out / EXPORT_SETTINGS_FILE).read_text(encoding="utf-8"))
    info.update(model_file=QUANTIZED_FILE, quantization=record)
    (out / EXPORT_SETTINGS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    with (out / "README.md").open("a", encoding="utf-8") as card:
        card.write(
            f"\n## int8\n\n`{QUANTIZED_FILE}` is the int8 graph (ONNX Runtime's dynamic "
            f"quantization), which `lmforge-predict model_dir=...` runs: {summary}"
            f"{' (kept with force=true, above the allowed drop)' if not record['passed'] else ''}"
            f". `{QUANTIZATION_FILE}` has every metric of both.\n"
        )
    log.info("int8 graph: %s", summary)


def _test_metrics(cfg: DictConfig, run: TrainedRun, model: Any) -> dict[str, float]:
    """The run's test metrics with `model` in place of its module's model (one CPU process,
    float32)."""
    import lightning.pytorch as pl

    from lmforge.evaluate import test_datamodule

    datamodule = test_datamodule(run, str(cfg.paths.cache_dir), None, cfg.max_test_samples)
    module = run.module
    original = module.model
    module.model = model
    try:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            precision="32-true",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        module.model = original
    metrics = {k: float(v) for k, v in results[0].items()}
    metrics["_examples"] = len(datamodule.splits["test"])
    return metrics


# ----- records --------------------------------------------------------------------------------
def _write_info(
    out: Path,
    cfg: DictConfig,
    fmt: str,
    family: TaskFamily,
    model: PreTrainedModel,
    settings: dict[str, Any],
    input_names: list[str],
) -> None:
    """lmforge.json: what running the export needs beyond the model and tokenizer (the run's
    settings, as `lmforge-predict` reads them from a checkpoint's run)."""
    write_export_settings(
        out,
        {
            # The run's settings first: the export's own keys below are never overridden.
            **cast(ExportSettings, settings),
            "task": family.name,
            "format": fmt,
            "model_file": MODEL_FILES[fmt],
            "inputs": input_names,
            "outputs": list(family.export_outputs),
            "auto_class": family.auto_class_for(settings),
            "pipeline_task": family.pipeline_tag,
            "model_type": model.config.model_type,
            "source_checkpoint": str(Path(str(cfg.ckpt_path)).expanduser().resolve()),
            "lmforge_version": __version__,
        },
    )


def _write_model_card(
    out: Path, fmt: str, family: TaskFamily, ckpt_path: str, input_names: list[str]
) -> None:
    """A short README.md: where the model comes from and how to run it."""
    folder = "path/to/this/folder"
    outputs = ", ".join(family.export_outputs)
    load_tokenizer = (
        "from transformers import AutoTokenizer\n"
        f'tokenizer = AutoTokenizer.from_pretrained("{folder}")\n'
    )
    usage = {
        "hf": (
            "from transformers import pipeline\n"
            f'model = pipeline("{family.pipeline_tag}", model="{folder}")\n'
            f'# or: transformers.{family.auto_class}.from_pretrained("{folder}")'
        )
        if family.has_pipeline
        else family.hf_usage.replace("{folder}", folder),
        "onnx": (
            f"import onnxruntime\n{load_tokenizer}"
            f'session = onnxruntime.InferenceSession("{folder}/model.onnx")\n'
            'inputs = dict(tokenizer(["some text"], return_tensors="np"))\n'
            f"{outputs} = session.run({list(family.export_outputs)!r}, inputs)"
        ),
        "torchscript": (
            f"import torch\n{load_tokenizer}"
            f'model = torch.jit.load("{folder}/model.pt")\n'
            'inputs = tokenizer(["some text"], return_tensors="pt")\n'
            f"{outputs}, = model({', '.join(f'inputs[{n!r}]' for n in input_names)})"
        ),
    }[fmt]
    header = f"---\nlibrary_name: transformers\npipeline_tag: {family.pipeline_tag}\n---\n\n"
    text = (
        f"{header if fmt == 'hf' else ''}# {family.name.replace('_', ' ')} model ({fmt})\n\n"
        f"Exported by lmforge {__version__} from `{ckpt_path}`. `{EXPORT_SETTINGS_FILE}` records "
        f"the task, labels, inputs, outputs and maximum length; `{PARITY_FILE}` the largest "
        "difference of each output from the PyTorch model on real inputs.\n\n"
        f"```python\n{usage}\n```\n"
    )
    write_new(out / "README.md", text)
