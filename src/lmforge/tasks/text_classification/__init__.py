"""Text classification: single-label, multi-label, sentence pairs (`model=text_classification`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import DataFormat, TaskFamily


class TextClassificationData(DataSchema):
    max_length: int | None = Field(ABSENT, gt=0)
    few_shot_k: int | None = Field(ABSENT, gt=0)
    few_shot_validation: bool = ABSENT
    few_shot_strict: bool = ABSENT


class PromptClassificationModel(ModelSchema):
    scorer: Literal["masked", "causal"] = ABSENT
    pattern: str = ABSENT
    verbalizer: dict[str, str] | None = ABSENT
    chat_template: bool = ABSENT
    normalize: Literal["mean", "sum"] = ABSENT
    calibrate: bool = ABSENT
    max_length: int = Field(ABSENT, gt=0)
    multi_label: Literal[False] = ABSENT


class TextClassificationModel(ModelSchema):
    multi_label: bool = ABSENT
    threshold: float = Field(ABSENT, gt=0, lt=1)
    classifier_dropout: float | None = Field(ABSENT, ge=0, lt=1)


FAMILIES = (
    TaskFamily(
        name="text_classification",
        module="lmforge.tasks.text_classification.module.TextClassificationModule",
        data_formats=(
            DataFormat("lmforge.tasks.text_classification.data.TextClassificationDataModule"),
        ),
        predictor="lmforge.tasks.text_classification.predict.TextClassificationPredictor",
        auto_class="AutoModelForSequenceClassification",
        pipeline_tag="text-classification",
        architecture_suffixes=("ForSequenceClassification",),
        peft_task_type="SEQ_CLS",
        prompt_learning=True,
        metrics=("loss", "acc", "f1_macro", "f1_micro", "f1_<label>"),
        only_when={"f1_micro": "model.multi_label"},
        label_unit="example",
        primary_metric="acc",
        baselines=("majority", "tfidf_logreg", "frozen_probe"),
        distillation=True,
        data_schema=TextClassificationData,
        experiment="debian_topics_minilm",
        example_inputs=("a library to read and write spreadsheet files", "a fast web browser"),
        model_schema=TextClassificationModel,
    ),
    # Classification by a pretrained LM filling a pattern (prompt.py): the same data, metrics
    # and records; the model is the masked or causal LM itself, with no head.
    TaskFamily(
        name="prompt_classification",
        module="lmforge.tasks.text_classification.prompt.PromptClassificationModule",
        data_formats=(
            DataFormat("lmforge.tasks.text_classification.data.TextClassificationDataModule"),
        ),
        predictor="lmforge.tasks.text_classification.prompt.PromptClassificationPredictor",
        auto_class="AutoModelForCausalLM",
        auto_class_by=(
            "scorer",
            {"masked": "AutoModelForMaskedLM", "causal": "AutoModelForCausalLM"},
        ),
        pipeline_tag="text-classification",
        has_pipeline=False,
        hf_usage=(
            "# A language model that classifies through the pattern and verbalizer in\n"
            "# lmforge.json; lmforge-predict model_dir={folder} applies them.\n"
            "import json, transformers\n"
            'settings = json.load(open("{folder}/lmforge.json"))\n'
            'model = getattr(transformers, settings["auto_class"]).from_pretrained("{folder}")'
        ),
        # Exported folders name their task in lmforge.json; a bare LM is not recognised as one.
        architecture_suffixes=(),
        metrics=("loss", "acc", "f1_macro", "f1_<label>"),
        label_unit="example",
        primary_metric="acc",
        baselines=("majority", "tfidf_logreg"),
        baseline_note=(
            "The untouched language model reading the pattern (the 'before' column) is the "
            "zero-shot result; the majority baseline is the share a constant answer gets."
        ),
        token_type_ids=False,
        export_formats=("hf",),
        data_schema=TextClassificationData,
        model_schema=PromptClassificationModel,
        experiment="debian_topics_prompt_smollm2",
        example_inputs=("a library to read and write spreadsheet files", "a fast web browser"),
    ),
)
