"""Sequence-to-sequence: summarization and translation (`model=seq2seq`, `model=bert2bert`).

Two families over one data module and one module: a source text in, a target text out, trained
on the token loss and scored on generated text (ROUGE for summaries, sacreBLEU and chrF for
translations).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import Baseline, DataFormat, TaskFamily


class Seq2SeqData(DataSchema):
    source_column: str = ABSENT
    target_column: str = ABSENT
    translation_column: str = ABSENT
    source_lang: str | None = ABSENT
    target_lang: str | None = ABSENT
    source_prefix: str | None = ABSENT
    max_source_length: int = Field(ABSENT, gt=0)
    max_target_length: int = Field(ABSENT, gt=0)


class Seq2SeqModel(ModelSchema):
    warm_start: bool = ABSENT
    tie_encoder_decoder: bool = ABSENT
    max_generate_samples: int | None = Field(ABSENT, gt=0)
    generate_every_n_epochs: int = Field(ABSENT, gt=0)


_SHARED: dict[str, Any] = {
    "data_formats": (
        DataFormat("lmforge.tasks.seq2seq.data.Seq2SeqDataModule", "data.max_source_length"),
    ),
    "predictor": "lmforge.tasks.seq2seq.predict.Seq2SeqPredictor",
    "auto_class": "AutoModelForSeq2SeqLM",
    "peft_task_type": "SEQ_2_SEQ_LM",
    "peft_task_wrapper": True,
    # An encoder-decoder's decoder reads its own inputs; token type ids are the encoder's only,
    # and T5/BART have none.
    "token_type_ids": False,
    # Generated-text metrics come every model.generate_every_n_epochs; the loss every epoch.
    "optimized_metric": "loss",
    "decoder_inputs": True,
    "export_formats": ("hf",),
    "has_pipeline": False,
    "hf_usage": (
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        'tokenizer = AutoTokenizer.from_pretrained("{folder}")\n'
        'model = AutoModelForSeq2SeqLM.from_pretrained("{folder}")\n'
        'inputs = tokenizer(["some text"], return_tensors="pt")\n'
        "# generate() follows generation_config.json (the run's generation settings)\n"
        "text = tokenizer.batch_decode(model.generate(**inputs), skip_special_tokens=True)"
    ),
    "data_schema": Seq2SeqData,
    "model_schema": Seq2SeqModel,
}

FAMILIES = (
    TaskFamily(
        name="summarization",
        module="lmforge.tasks.seq2seq.module.SummarizationModule",
        pipeline_tag="summarization",
        # Seq2seq architectures name no task (BartForConditionalGeneration summarizes and
        # translates alike): an exported folder says which in its lmforge.json.
        architecture_suffixes=(),
        metrics=("loss", "rouge1", "rouge2", "rougeL", "rougeLsum", "gen_len"),
        lower_is_better=("loss",),
        primary_metric="rougeL",
        baselines=("lead",),
        own_baselines={
            "lead": Baseline(
                "lmforge.tasks.seq2seq.baselines.lead",
                "the first k sentences of the source as the output, k (1-3) chosen on validation",
            )
        },
        experiment="debian_summarize_minilm",
        example_inputs=(
            "This package provides a command-line tool to convert between image formats. It "
            "reads and writes PNG, JPEG and GIF files and can resize them.",
        ),
        **_SHARED,
    ),
    TaskFamily(
        name="translation",
        module="lmforge.tasks.seq2seq.module.TranslationModule",
        pipeline_tag="translation",
        architecture_suffixes=(),
        metrics=("loss", "bleu", "chrf", "gen_len"),
        lower_is_better=("loss",),
        primary_metric="bleu",
        baselines=("copy_source",),
        own_baselines={
            "copy_source": Baseline(
                "lmforge.tasks.seq2seq.baselines.copy_source",
                "the source text itself as the output",
            )
        },
        experiment="debian_translate_en_de",
        example_inputs=("library for reading and writing image files",),
        **_SHARED,
    ),
)
