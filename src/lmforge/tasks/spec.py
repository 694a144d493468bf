"""The task-family spec: what the rest of lmforge knows of a family, without importing it.

Every family folder under `lmforge/tasks/` defines `FAMILIES`, a tuple of `TaskFamily` specs,
in an `__init__.py` that imports no torch, transformers or Lightning: the config checks read
the specs before any heavy import. Classes are named by dotted path and loaded on demand.
Code outside `lmforge/tasks/` asks a spec and never names a family.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DataFormat:
    """One data format a family trains on.

    Attributes:
        datamodule: dotted path of the LightningDataModule class that reads it.
        length_key: the data config key that caps its sequence length, in tokens
            (`data.max_length`, `data.block_size`): the position check and the truncation
            report read it, for every format alike.
    """

    datamodule: str
    length_key: str = "data.max_length"


@dataclass(frozen=True)
class Baseline:
    """A baseline that only one family uses, kept in that family's folder.

    Attributes:
        runner: dotted path of its function `(module, datamodule, device) -> (metrics keyed as
            the task logs them, details)`.
        description: what it is, for logs and comparison.md.
    """

    runner: str
    description: str


@dataclass(frozen=True)
class TaskFamily:
    """One task family.

    Attributes:
        name: recorded in checkpoints, metrics.json and lmforge.json (`text_classification`).
        module: dotted path of its LightningModule class.
        data_formats: the data formats it trains on, its main one first (causal LMs: plain
            text, then instructions and chats), each with its datamodule and length key.
        predictor: dotted path of its predictor class (`lmforge-predict`, sample predictions).
        auto_class: the transformers Auto class of its models.
        auto_class_by: for families whose Auto class depends on a model setting: the setting's
            name and a table from its value to the Auto class (`auto_class` otherwise).
        pipeline_tag: the Hub task tag of its models (and the transformers `pipeline` task
            an exported folder loads in, where `has_pipeline`).
        has_pipeline: transformers has a pipeline for the task (transformers 5 removed the
            summarization, translation and question-answering pipelines).
        hf_usage: for families without a pipeline, the code that runs an exported Hugging Face
            folder (`{folder}` stands for its path), shown in the export's model card.
        architecture_suffixes: endings of Hugging Face architecture names that mean this family
            (`ForSequenceClassification`), for exported folders without lmforge.json.
        peft_task_type: peft's task type, given to prompt-learning methods (None: peft wraps the
            bare model).
        peft_task_wrapper: give the task type to every peft method, so the wrapper keeps the
            task's own methods (a causal LM's `generate`).
        prompt_learning: whether prompt and prefix tuning apply (they shift every position).
        metrics: the names it logs after the stage prefix (`val/acc`); a name ending in `<...>`
            stands for one metric per label or entity type (`f1_<label>` -> `f1_games`).
        only_when: metric -> boolean config key that must be true for it to be logged.
        lower_is_better: metric names that improve downwards (losses, perplexity).
        primary_metric: the metric that ranks runs and picks a probe baseline's C.
        optimized_metric: the metric a run optimizes (best checkpoint, early stopping, sweeps)
            unless the config sets one; empty: `primary_metric`.
        label_unit: what carries one label: an `example` (classification) or a `token`
            (tagging); empty where there are no labels (language modelling).
        baselines: the names of the baselines that apply: shared ones
            (`lmforge.evaluation.baselines.BASELINES`) and its own.
        own_baselines: the baselines only this family uses: name -> `Baseline`.
        baseline_note: what serves as the baseline where no baseline applies.
        token_type_ids: whether its models take token type ids (language models do not).
        export_outputs: the model outputs an export returns and checks, in order.
        export_formats: the `lmforge-export` formats its models can take.
        decoder_inputs: its models take decoder inputs besides the encoder's (encoder-decoder
            models): the export check feeds them.
        distillation: whether a teacher's logits can be compared with the student's.
        data_schema, model_schema: the types and ranges of its own keys of the `data` and
            `model` groups (subclasses of `lmforge.config.schema.DataSchema`/`ModelSchema`).
        experiment: its shipped experiment (`conf/experiment/<name>.yaml`), runnable offline.
        example_inputs: inputs a user can try on its models (`lmforge-predict input=...`): a
            text, or for families that read two texts a mapping of their two columns.
    """

    name: str
    module: str
    data_formats: tuple[DataFormat, ...]
    predictor: str
    auto_class: str
    pipeline_tag: str
    architecture_suffixes: tuple[str, ...]
    metrics: tuple[str, ...]
    peft_task_type: str | None = None
    peft_task_wrapper: bool = False
    prompt_learning: bool = False
    only_when: Mapping[str, str] = field(default_factory=dict)
    lower_is_better: tuple[str, ...] = ("loss",)
    primary_metric: str = "loss"
    optimized_metric: str = ""
    label_unit: str = ""
    baselines: tuple[str, ...] = ()
    own_baselines: Mapping[str, Baseline] = field(default_factory=dict)
    baseline_note: str = ""
    token_type_ids: bool = True
    export_outputs: tuple[str, ...] = ("logits",)
    export_formats: tuple[str, ...] = ("hf", "onnx", "torchscript")
    has_pipeline: bool = True
    hf_usage: str = ""
    decoder_inputs: bool = False
    distillation: bool = False
    data_schema: Any = None
    model_schema: Any = None
    experiment: str = ""
    example_inputs: tuple[Any, ...] = ()
    auto_class_by: tuple[str, Mapping[str, str]] | None = None

    @property
    def datamodule(self) -> str:
        """Dotted path of the datamodule of its main data format."""
        return self.data_formats[0].datamodule

    def __post_init__(self) -> None:
        if not self.optimized_metric:
            object.__setattr__(self, "optimized_metric", self.primary_metric)

    def data_format(self, datamodule: object) -> DataFormat | None:
        """The format whose datamodule `datamodule` names (a `_target_` or a class name)."""
        name = class_name(datamodule)
        return next((f for f in self.data_formats if class_name(f.datamodule) == name), None)

    # ----- classes, loaded on demand -------------------------------------------------------------
    def module_class(self) -> Any:
        return load(self.module)

    def datamodule_class(self) -> Any:
        return load(self.datamodule)

    def predictor_class(self) -> Any:
        return load(self.predictor)

    def auto_class_for(self, settings: Mapping[str, Any] | None = None) -> str:
        """The Auto class name of a model with these settings (hyperparameters, lmforge.json)."""
        if self.auto_class_by is None or settings is None:
            return self.auto_class
        key, table = self.auto_class_by
        return table.get(str(settings.get(key)), self.auto_class)

    def auto_model_class(self, settings: Mapping[str, Any] | None = None) -> Any:
        return load(f"transformers.{self.auto_class_for(settings)}")

    # ----- metrics -------------------------------------------------------------------------------
    def monitorable(self, cfg_flags: Mapping[str, bool] | None = None) -> list[str]:
        """The keys a checkpoint or early-stopping callback can watch during training."""
        flags = cfg_flags or {}
        names = [
            f"val/{m}" for m in self.metrics if flags.get(self.only_when.get(m, ""), True) is True
        ]
        return [*names, "train/loss"]

    def logs(self, key: str, cfg_flags: Mapping[str, bool] | None = None) -> bool:
        """Whether `key` (e.g. `val/f1_macro`) is logged during training by this family."""
        # Lightning adds _step/_epoch to metrics logged both per step and per epoch.
        if key in ("train/loss", "train/loss_step", "train/loss_epoch"):
            return True
        for name in self.monitorable(cfg_flags):
            if name.endswith(">"):
                pattern = re.escape(name[: name.index("<")]) + r"[^/]+"
                if re.fullmatch(pattern, key):
                    return True
            elif key == name:
                return True
        return False


def load(dotted: str) -> Any:
    """The object a dotted path names (`package.module.Name`)."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def class_name(target: object) -> str:
    """The class name a `_target_` names (its last dotted part)."""
    return str(target).rpartition(".")[2]


def safe_name(text: str) -> str:
    """A label name made safe for a metric key (`val/f1_<name>`)."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(text)).strip("_") or "label"
