"""The schema of a composed training config: the type and range of every value lmforge reads.

Defaults live in conf/, not here: this file only says what a value may be. A group's schema
names the keys its options share (`data.batch_size`, `optimizer.lr`); a key only some options
have is checked when present. Top-level keys are closed: an unknown one is refused with the
closest known name. Cross-field rules (a LoRA key with finetune=full, a metric the task does
not log) live in `lmforge.config.validation`.

pydantic validates in strict mode, so `trainer.max_epochs=abc` or `optimizer.lr='1e-3'` (a
quoted string) is refused here instead of failing deep inside torch.
"""

from __future__ import annotations

import difflib
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from lmforge.errors import LmforgeError

# The default of every field: an option may lack the key, and then nothing is checked. A key
# that is present must fit its type, so `null` passes only where the type says `| None`.
ABSENT: Any = None


class Section(BaseModel):
    """The keys of one config node that lmforge checks; others pass through unchecked."""

    model_config = ConfigDict(strict=True)


class DataSchema(Section):
    """The keys every data config shares (conf/data/_shared.yaml); a task family's schema
    subclasses it with its own keys."""

    batch_size: int = Field(ABSENT, gt=0)
    eval_batch_size: int = Field(ABSENT, gt=0)
    max_train_samples: int | None = Field(ABSENT, gt=0)
    max_eval_samples: int | None = Field(ABSENT, gt=0)
    max_test_samples: int | None = Field(ABSENT, gt=0)
    validation_ratio: float = Field(ABSENT, gt=0, lt=1)
    test_ratio: float = Field(ABSENT, gt=0, lt=1)
    num_workers: int = Field(ABSENT, ge=0)
    seed: int = Field(ABSENT, ge=0)
    group_by_length: bool = ABSENT
    pad_to_multiple_of: int | None = Field(ABSENT, gt=0)
    pin_memory: bool = ABSENT
    invalid_utf8: Literal["error", "skip"] = ABSENT
    folder_classes: list[str] | None = ABSENT
    num_proc: int | None = Field(ABSENT, gt=0)
    streaming: bool = ABSENT
    shuffle_buffer: int = Field(ABSENT, gt=0)
    stream_check_rows: int = Field(ABSENT, gt=0)


class ModelSchema(Section):
    """The keys every model config shares; a task family's schema subclasses it."""

    pretrained: str | None = ABSENT
    tokenizer: str | None = ABSENT
    init_from: str | None = ABSENT
    gradient_checkpointing: bool = ABSENT


class OptimizerSchema(Section):
    lr: float = Field(ABSENT, gt=0)
    weight_decay: float = Field(ABSENT, ge=0)
    eps: float = Field(ABSENT, gt=0)
    momentum: float = Field(ABSENT, ge=0)
    layer_decay: float | None = Field(ABSENT, gt=0, le=1)
    fused: bool = ABSENT
    nesterov: bool = ABSENT


class SchedulerSchema(Section):
    warmup_ratio: float = Field(ABSENT, ge=0, lt=1)


class FinetuneSchema(Section):
    quant_type: Literal["nf4", "fp4"] = ABSENT
    double_quant: bool = ABSENT
    compute_dtype: Literal["bfloat16", "float16", "float32"] = ABSENT
    r: int = Field(ABSENT, gt=0)
    alpha: float = Field(ABSENT, gt=0)
    dropout: float = Field(ABSENT, ge=0, lt=1)
    use_dora: bool = ABSENT
    layers: int = Field(ABSENT, ge=0)
    embeddings: bool = ABSENT
    backbone: bool = ABSENT
    unfreeze_every: int = Field(ABSENT, ge=0)
    num_virtual_tokens: int = Field(ABSENT, gt=0)


class TrainerSchema(Section):
    # -1: no limit (Lightning's convention); the cross-field check wants epochs or steps.
    max_epochs: int | None = Field(ABSENT, ge=-1)
    min_epochs: int | None = Field(ABSENT, ge=0)
    max_steps: int = Field(ABSENT, ge=-1)
    num_nodes: int = Field(ABSENT, gt=0)
    accumulate_grad_batches: int = Field(ABSENT, gt=0)
    gradient_clip_val: float | None = Field(ABSENT, ge=0)
    check_val_every_n_epoch: int | None = Field(ABSENT, gt=0)
    val_check_interval: int | float | None = Field(ABSENT, gt=0)
    log_every_n_steps: int = Field(ABSENT, gt=0)
    num_sanity_val_steps: int = Field(ABSENT, ge=-1)
    # Lightning reads an int as a number of batches and a float as a share of them.
    limit_train_batches: float | None = Field(ABSENT, ge=0)
    limit_val_batches: float | None = Field(ABSENT, ge=0)
    limit_test_batches: float | None = Field(ABSENT, ge=0)
    overfit_batches: float = Field(ABSENT, ge=0)
    deterministic: bool | Literal["warn"] | None = ABSENT
    enable_progress_bar: bool = ABSENT
    enable_model_summary: bool = ABSENT
    use_distributed_sampler: bool = ABSENT
    detect_anomaly: bool = ABSENT


class CompareSchema(Section):
    baselines: list[str] = ABSENT
    max_flipped: int = Field(ABSENT, ge=0)


class DistillSchema(Section):
    teacher: str | None = ABSENT
    alpha: float = Field(ABSENT, ge=0, le=1)
    temperature: float = Field(ABSENT, gt=0)


class CompileSchema(Section):
    enabled: bool = ABSENT
    backend: str = ABSENT
    mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = ABSENT
    dynamic: bool | None = ABSENT
    fullgraph: bool = ABSENT


class PrecisionProbeSchema(Section):
    min_speedup: float = Field(ABSENT, gt=0)
    refresh: bool = ABSENT


class TrialSchema(Section):
    study_name: str | None = ABSENT
    storage: str | None = ABSENT
    number: int | None = Field(ABSENT, ge=0)
    pruner: Literal["none", "median", "asha", "hyperband"] = ABSENT
    pruner_warmup: int = Field(ABSENT, ge=0)
    pruner_startup_trials: int = Field(ABSENT, ge=0)


class TrainSchema(Section):
    """Every top-level key of conf/train.yaml; groups without shared keys are `Any`."""

    model_config = ConfigDict(strict=True, extra="forbid")

    task_name: str = ABSENT
    tags: Any = ABSENT
    seed: int = Field(ABSENT, ge=0, le=2**32 - 1)  # numpy's seed range
    resume: str | None = ABSENT
    train: bool = ABSENT
    test: bool = ABSENT
    evaluate_before: bool = ABSENT
    compare: CompareSchema = ABSENT
    distill: DistillSchema = ABSENT
    compile: CompileSchema = ABSENT
    float32_matmul_precision: Literal["auto", "highest", "high", "medium"] | None = ABSENT
    precision_probe: PrecisionProbeSchema = ABSENT
    optimized_metric: str = ABSENT
    optimized_mode: Literal["min", "max"] = ABSENT
    run_id: str = ABSENT
    trial: TrialSchema = ABSENT
    data: DataSchema = ABSENT
    model: ModelSchema = ABSENT
    optimizer: OptimizerSchema = ABSENT
    scheduler: SchedulerSchema | None = ABSENT
    finetune: FinetuneSchema | None = ABSENT
    trainer: TrainerSchema = ABSENT
    callbacks: Any = ABSENT
    logger: Any = ABSENT
    paths: Any = ABSENT
    # Present when a config is composed with return_hydra_config (Hydra's own settings).
    hydra: Any = ABSENT


# ----- the other commands' settings (conf/predict.yaml, serve.yaml, export.yaml, eval.yaml) -----
Device = Literal["auto", "cpu", "cuda"]
CHECKPOINT = Field(
    ABSENT, min_length=1, description="a checkpoint: ckpt_path=<run dir>/checkpoints/best.ckpt"
)


class GenerateSchema(Section):
    max_new_tokens: int | None = Field(ABSENT, ge=1)
    num_beams: int | None = Field(ABSENT, ge=1)
    do_sample: bool = ABSENT
    temperature: float = Field(ABSENT, gt=0)
    top_k: int = Field(ABSENT, ge=0)
    top_p: float = Field(ABSENT, gt=0, le=1)
    num_return_sequences: int = Field(ABSENT, ge=1)


class PredictSchema(Section):
    """conf/predict.yaml (lmforge-predict)."""

    ckpt_path: str | None = ABSENT
    model_dir: str | None = ABSENT
    backend: Literal["auto", "pytorch", "onnxruntime"] = ABSENT
    threads: int | None = Field(ABSENT, ge=1)
    text_column: str | None = ABSENT
    output: str | None = ABSENT
    output_format: Literal["jsonl", "csv"] = ABSENT
    device: Device = ABSENT
    batch_size: int = Field(ABSENT, ge=1)
    max_length: int | None = Field(ABSENT, ge=1)
    stride: int | None = Field(ABSENT, ge=0)
    threshold: float | None = Field(ABSENT, gt=0, lt=1)
    fill_top_k: int = Field(ABSENT, ge=1)
    alternatives: int = Field(ABSENT, ge=0)
    generate: GenerateSchema = ABSENT
    seed: int = Field(ABSENT, ge=0, le=2**32 - 1)
    progress_bar: bool = ABSENT


class ServerSchema(Section):
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = ABSENT
    port: int = Field(ABSENT, ge=1024, le=65535)
    batching: bool = ABSENT
    max_batch_size: int = Field(ABSENT, ge=1)
    batch_timeout: float = Field(ABSENT, ge=0)
    workers: int = Field(ABSENT, ge=1)
    device: Device = ABSENT
    timeout: float = Field(ABSENT, gt=0)
    max_text_chars: int = Field(ABSENT, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = ABSENT


class ServeSchema(PredictSchema):
    """conf/serve.yaml (lmforge-serve): predict's settings and the server's."""

    serve: ServerSchema = ABSENT


class ExportSchema(Section):
    """conf/export.yaml (lmforge-export)."""

    ckpt_path: str = CHECKPOINT
    format: Literal["hf", "onnx", "torchscript"] = ABSENT
    output_dir: str | None = ABSENT
    tolerance: float = Field(ABSENT, ge=0)
    parity_texts: str | None = ABSENT
    onnx_opset: int = Field(ABSENT, ge=7)
    quantize: Literal["int8"] | None = ABSENT
    max_metric_drop: float = Field(ABSENT, ge=0)
    force: bool = ABSENT
    max_test_samples: int | None = Field(ABSENT, gt=0)


class EvalSchema(Section):
    """conf/eval.yaml (lmforge-eval)."""

    ckpt_path: str = CHECKPOINT
    test_file: str | None = ABSENT
    max_test_samples: int | None = Field(ABSENT, gt=0)
    batch_size: int | None = Field(ABSENT, gt=0)


def check_command_settings(cfg: DictConfig, schema: type[Section]) -> None:
    """Refuse, in one paragraph, every value of a command's config that does not fit `schema`
    (the same checks, and the same sentences, as the training config's)."""
    values = _values(schema, cfg)
    try:
        schema.model_validate(values)
    except ValidationError as err:
        problems = [_sentence(error, cfg, schema) for error in err.errors()]
        raise LmforgeError(" ".join(problems)) from None


def schema_problems(
    cfg: DictConfig,
    data_schema: type[DataSchema] = DataSchema,
    model_schema: type[ModelSchema] = ModelSchema,
) -> list[str]:
    """One sentence per value of `cfg` that does not fit `TrainSchema`, its `data` and
    `model` sections checked against the run's task family's schemas."""
    schema = TrainSchema
    if data_schema is not DataSchema or model_schema is not ModelSchema:
        schema = create_model(
            "TrainSchema",
            __base__=TrainSchema,
            data=(data_schema, ABSENT),
            model=(model_schema, ABSENT),
        )
    values = _values(schema, cfg, top_level=True)
    try:
        schema.model_validate(values)
    except ValidationError as err:
        return [_sentence(error, cfg, schema) for error in err.errors()]
    return []


_SKIP = object()  # a key the node lacks, or whose interpolation cannot resolve here


def _values(schema: type[Section], node: DictConfig, top_level: bool = False) -> dict[str, Any]:
    """The values of `node` that `schema` checks, nested the same way; interpolations resolved."""
    names = list(node.keys()) if top_level else list(schema.model_fields)
    values: dict[str, Any] = {}
    for name in names:
        value = _lookup(node, str(name))
        if value is _SKIP:
            continue
        info = schema.model_fields.get(str(name))
        section = _section_of(info) if info else None
        if section is not None and isinstance(value, DictConfig):
            values[str(name)] = _values(section, value)
        elif section is None and info is not None and info.annotation is Any:
            values[str(name)] = None  # unchecked: not worth resolving
        else:
            values[str(name)] = _plain(value)
    return values


def _lookup(node: DictConfig, name: str) -> Any:
    if name not in node:
        return _SKIP
    try:
        return node[name]
    except OmegaConfBaseException:
        # ${hydra:...} outside a Hydra run, or a ??? the user still has to fill in: nothing to
        # check yet; the code that reads the key reports it.
        return _SKIP


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            return OmegaConf.to_container(value, resolve=False)
    return value


def _section_of(info: FieldInfo) -> type[Section] | None:
    for kind in _union_members(info.annotation):
        if isinstance(kind, type) and issubclass(kind, Section):
            return kind
    return None


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _field_at(location: tuple[Any, ...], top: type[Section]) -> FieldInfo | None:
    """The schema field an error location (`('optimizer', 'lr')`) points at."""
    schema: type[Section] | None = top
    info = None
    for part in location:
        if schema is None or not isinstance(part, str) or part not in schema.model_fields:
            break
        info = schema.model_fields[part]
        schema = _section_of(info)
    return info


def _sentence(error: Any, cfg: DictConfig, schema: type[Section]) -> str:
    location = tuple(p for p in error["loc"] if isinstance(p, str))
    key = ".".join(location)
    if error["type"] == "extra_forbidden":
        known = [k for k in TrainSchema.model_fields if k != "hydra"]
        close = difflib.get_close_matches(key, known, n=1) or _nested_matches(key, cfg)
        hint = f" Did you mean {close[0]}?" if close else ""
        return (
            f"{key} is not a top-level key of the training config.{hint} Top-level keys: "
            f"{', '.join(known)}."
        )
    info = _field_at(location, schema)
    if info is not None and info.description:
        expected = info.description
    else:
        expected = describe(info) if info is not None else error["msg"].lower()
    return f"{key} must be {expected}, got {error['input']!r}."


def _nested_matches(name: str, cfg: DictConfig) -> list[str]:
    """Keys deeper in the config whose own name is close to `name` (max_epochs ->
    trainer.max_epochs): a top-level key added by mistake instead of a group's key."""
    scored: list[tuple[float, str]] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for child, value in node.items():
                path = f"{prefix}{child}"
                score = difflib.SequenceMatcher(None, name, str(child)).ratio()
                if prefix and score >= 0.8:
                    scored.append((score, path))
                walk(value, f"{path}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return [path for _, path in sorted(scored, key=lambda item: -item[0])]


_TYPE_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def describe(info: FieldInfo) -> str:
    """What a field accepts, in words: 'a number in [0, 1)', 'a whole number above 0 (or null)'."""
    kinds, nullable = [], False
    for kind in _union_members(info.annotation):
        if kind is type(None):
            nullable = True
        elif get_origin(kind) is Literal:
            kinds.append("one of " + ", ".join(repr(v) for v in get_args(kind)))
        else:
            origin = get_origin(kind) or kind
            kinds.append(_TYPE_WORDS.get(origin) or _container_word(origin))
    text = " or ".join(kinds) + _bounds(info.metadata)
    return f"{text} (or null)" if nullable else text


def _container_word(kind: Any) -> str:
    if kind is list:
        return "a list"
    if isinstance(kind, type) and issubclass(kind, Section):
        return "a group of settings"
    return str(kind)


def _bounds(metadata: list[Any]) -> str:
    low: tuple[str, Any] | None = None
    high: tuple[str, Any] | None = None
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            low = ("(", item.gt)
        elif isinstance(item, annotated_types.Ge):
            low = ("[", item.ge)
        elif isinstance(item, annotated_types.Lt):
            high = (")", item.lt)
        elif isinstance(item, annotated_types.Le):
            high = ("]", item.le)
    if low and high:
        return f" in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f" above {low[1]}" if low[0] == "(" else f" of {low[1]} or more"
    if high:
        return f" below {high[1]}" if high[0] == ")" else f" of {high[1]} or less"
    return ""
