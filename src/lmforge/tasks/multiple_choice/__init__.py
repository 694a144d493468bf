"""Multiple choice, SWAG/ARC style: a question and a varying number of answer choices
(`model=multiple_choice`), scored by a multiple-choice head or a causal LM."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import Baseline, DataFormat, TaskFamily


class MultipleChoiceData(DataSchema):
    max_length: int = Field(ABSENT, gt=0)
    question_column: str = ABSENT
    context_column: str | None = ABSENT
    choices_column: str | list[str] = ABSENT
    label_column: str = ABSENT
    label_format: Literal["auto", "index", "number", "letter", "text"] = ABSENT
    choice_separator: str = Field(ABSENT, min_length=1)


class MultipleChoiceModel(ModelSchema):
    scorer: Literal["head", "causal"] = ABSENT
    pattern: str = ABSENT
    chat_template: bool = ABSENT
    normalize: Literal["mean", "sum"] = ABSENT
    max_length: int = Field(ABSENT, gt=0)
    classifier_dropout: float | None = Field(ABSENT, ge=0, lt=1)


HF_USAGE = """import torch
from transformers import AutoModelForMultipleChoice, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{folder}")
model = AutoModelForMultipleChoice.from_pretrained("{folder}").eval()
question = "Which package reads and writes spreadsheet files?"
choices = ["a spreadsheet library", "a video player", "a mail client"]
inputs = tokenizer([question] * len(choices), choices, padding=True, truncation=True,
                   return_tensors="pt")
with torch.no_grad():
    logits = model(**{k: v.unsqueeze(0) for k, v in inputs.items()}).logits[0]
print(choices[int(logits.argmax())], logits.softmax(-1).tolist())
# A causal-LM folder (lmforge.json: scorer causal) scores each choice's log-likelihood after
# the pattern in lmforge.json; lmforge-predict model_dir={folder} applies it."""

FAMILIES = (
    TaskFamily(
        name="multiple_choice",
        module="lmforge.tasks.multiple_choice.module.MultipleChoiceModule",
        data_formats=(DataFormat("lmforge.tasks.multiple_choice.data.MultipleChoiceDataModule"),),
        predictor="lmforge.tasks.multiple_choice.predict.MultipleChoicePredictor",
        auto_class="AutoModelForMultipleChoice",
        auto_class_by=(
            "scorer",
            {"head": "AutoModelForMultipleChoice", "causal": "AutoModelForCausalLM"},
        ),
        pipeline_tag="multiple-choice",
        has_pipeline=False,
        hf_usage=HF_USAGE,
        architecture_suffixes=("ForMultipleChoice",),
        metrics=("loss", "acc"),
        primary_metric="acc",
        baselines=("random_choice", "word_overlap"),
        own_baselines={
            "random_choice": Baseline(
                "lmforge.tasks.multiple_choice.baselines.random_choice",
                "a uniform guess: the mean over questions of 1 / their number of choices",
            ),
            "word_overlap": Baseline(
                "lmforge.tasks.multiple_choice.baselines.word_overlap",
                "the choice sharing the most distinct words with the question (a k-way tie "
                "counts 1/k)",
            ),
        },
        export_formats=("hf",),
        data_schema=MultipleChoiceData,
        model_schema=MultipleChoiceModel,
        experiment="debian_mc_minilm",
        example_inputs=(
            {
                "question": "Which package reads and writes spreadsheet files?",
                "choices": ["a library for spreadsheet files", "a video player", "a chess game"],
            },
            {
                "question": "A tool to back up files over the network",
                "choices": ["remote backup program", "text editor for programmers"],
            },
        ),
    ),
)
