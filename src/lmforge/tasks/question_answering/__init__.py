"""Extractive question answering, SQuAD v1.1 and v2.0 style (`model=question_answering`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import Baseline, DataFormat, TaskFamily


class QuestionAnsweringData(DataSchema):
    max_length: int = Field(ABSENT, gt=0)
    doc_stride: int = Field(ABSENT, ge=0)
    version_2_with_negative: bool = ABSENT
    misaligned: Literal["error", "drop", "fix"] = ABSENT
    id_column: str = ABSENT
    question_column: str = ABSENT
    context_column: str = ABSENT
    answers_column: str = ABSENT


class QuestionAnsweringModel(ModelSchema):
    version_2_with_negative: bool = ABSENT
    n_best: int = Field(ABSENT, gt=0)
    max_answer_length: int = Field(ABSENT, gt=0)
    null_threshold: float | None = Field(ABSENT, ge=0, le=1)


# transformers 5.3 removed the question-answering pipeline: an exported folder runs through
# the Auto class, decoded as below (the same rule lmforge-predict applies to one window).
HF_USAGE = """import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{folder}")
model = AutoModelForQuestionAnswering.from_pretrained("{folder}").eval()
question = "What does the package provide?"
context = "This package provides a library for reading spreadsheets."
inputs = tokenizer(question, context, truncation="only_second", max_length=384,
                   return_offsets_mapping=True, return_tensors="pt")
offsets = inputs.pop("offset_mapping")[0]
in_context = torch.tensor([s == 1 for s in inputs.sequence_ids(0)])
with torch.no_grad():
    out = model(**inputs)
start, end = out.start_logits[0], out.end_logits[0]
scores = start[:, None] + end[None, :]  # every (start, end) pair
gap = torch.arange(len(start))[None, :] - torch.arange(len(start))[:, None]
valid = in_context[:, None] & in_context[None, :] & (gap >= 0) & (gap < 30)  # max_answer_length
best = int(scores.masked_fill(~valid, float("-inf")).argmax())
s, e = divmod(best, len(start))
answer = context[int(offsets[s][0]):int(offsets[e][1])]
# v2 models: no answer when sigmoid(null - best) is above lmforge.json's null_threshold
null = start[0] + end[0]  # the [CLS] position
no_answer_probability = float(torch.sigmoid(null - scores[s, e]))"""


FAMILIES = (
    TaskFamily(
        name="question_answering",
        module="lmforge.tasks.question_answering.module.QuestionAnsweringModule",
        data_formats=(
            DataFormat("lmforge.tasks.question_answering.data.QuestionAnsweringDataModule"),
        ),
        predictor="lmforge.tasks.question_answering.predict.QuestionAnsweringPredictor",
        auto_class="AutoModelForQuestionAnswering",
        pipeline_tag="question-answering",
        has_pipeline=False,
        hf_usage=HF_USAGE,
        architecture_suffixes=("ForQuestionAnswering",),
        peft_task_type="QUESTION_ANS",
        metrics=(
            "loss",
            "exact_match",
            "f1",
            "has_ans_exact_match",
            "has_ans_f1",
            "no_ans_exact_match",
            "no_ans_f1",
        ),
        only_when={
            name: "model.version_2_with_negative"
            for name in ("has_ans_exact_match", "has_ans_f1", "no_ans_exact_match", "no_ans_f1")
        },
        primary_metric="f1",
        baselines=("word_overlap", "no_answer"),
        own_baselines={
            "word_overlap": Baseline(
                "lmforge.tasks.question_answering.baselines.word_overlap",
                "the context span with the question's words nearest around it (within 10 "
                "words, each weighted by 1/distance), span length (words) chosen on validation",
            ),
            "no_answer": Baseline(
                "lmforge.tasks.question_answering.baselines.no_answer",
                "no answer to every question",
            ),
        },
        export_outputs=("start_logits", "end_logits"),
        data_schema=QuestionAnsweringData,
        model_schema=QuestionAnsweringModel,
        experiment="debian_qa_minilm",
        example_inputs=(
            {
                "question": "What is pngcrush?",
                "context": "pngcrush is an optimizer for PNG files. It reads a PNG image and "
                "writes a smaller one with the same pixels.",
            },
            {
                "question": "What language is the viewer written in?",
                "context": "The viewer shows maps offline and prints them.",
            },
        ),
    ),
)
