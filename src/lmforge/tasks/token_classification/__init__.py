"""Token classification (named-entity recognition): `model=token_classification`."""

from __future__ import annotations

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import DataFormat, TaskFamily


class TokenClassificationData(DataSchema):
    max_length: int | None = Field(ABSENT, gt=0)


class TokenClassificationModel(ModelSchema):
    strict: bool = ABSENT
    classifier_dropout: float | None = Field(ABSENT, ge=0, lt=1)


FAMILIES = (
    TaskFamily(
        name="token_classification",
        module="lmforge.tasks.token_classification.module.TokenClassificationModule",
        data_formats=(
            DataFormat("lmforge.tasks.token_classification.data.TokenClassificationDataModule"),
        ),
        predictor="lmforge.tasks.token_classification.predict.TokenClassificationPredictor",
        auto_class="AutoModelForTokenClassification",
        pipeline_tag="token-classification",
        architecture_suffixes=("ForTokenClassification",),
        peft_task_type="TOKEN_CLS",
        metrics=("loss", "precision", "recall", "f1", "token_acc", "f1_<type>"),
        label_unit="token",
        primary_metric="f1",
        baselines=("frozen_probe",),
        distillation=True,
        data_schema=TokenClassificationData,
        experiment="debian_ner_minilm",
        example_inputs=("Python bindings for the GTK toolkit on Debian GNU/Linux",),
        model_schema=TokenClassificationModel,
    ),
)
