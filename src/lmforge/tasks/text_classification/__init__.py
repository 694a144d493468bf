"""Text classification: single-label, multi-label, sentence pairs (`model=text_classification`)."""

from __future__ import annotations

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import DataFormat, TaskFamily


class TextClassificationData(DataSchema):
    max_length: int | None = Field(ABSENT, gt=0)
    few_shot_k: int | None = Field(ABSENT, gt=0)
    few_shot_validation: bool = ABSENT
    few_shot_strict: bool = ABSENT


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
)
