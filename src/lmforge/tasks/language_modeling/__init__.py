"""Language modelling: causal (GPT-style, `model=gpt2`) and masked (BERT-style, `model=mlm`).

Two families over one data module: plain text, grouped into blocks or cut per document. Causal
LMs also train on instructions and chats (`data=instructions`, `data=chat`): another data
format of the same family, with the loss on the answers only. Preference tuning (DPO/IPO on
chosen/rejected pairs, `data=preferences`) is a loss of causal LMs with metrics of its own, so
it has its own spec here over the same model, template and predictor.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from lmforge.config.schema import ABSENT, DataSchema, ModelSchema
from lmforge.tasks.spec import DataFormat, TaskFamily


class LanguageModelingData(DataSchema):
    block_size: int | None = Field(ABSENT, gt=0)
    mlm_probability: float = Field(ABSENT, gt=0, lt=1)
    # Instructions and chats.
    max_length: int = Field(ABSENT, gt=0)
    format: Literal["prompt_completion", "messages", "sharegpt"] = ABSENT
    train_on: Literal["assistant", "last", "all"] = ABSENT
    truncation: Literal["drop_turns", "drop"] = ABSENT
    show_labels: int = Field(ABSENT, ge=0)
    packing: bool = ABSENT
    score_answers: bool = ABSENT
    prompt_template: str | None = ABSENT
    chat_template: str | None = ABSENT
    apply_chat_template: bool = ABSENT
    system_prompt: str | None = ABSENT


class LanguageModelingModel(ModelSchema):
    generate_max_new_tokens: int = Field(ABSENT, gt=0)
    max_generate_samples: int | None = Field(ABSENT, ge=1)
    answer_max_new_tokens: int = Field(ABSENT, gt=0)
    # Preference tuning.
    beta: float = Field(ABSENT, gt=0)
    loss: Literal["dpo", "ipo"] = ABSENT


PLAIN_TEXT = "lmforge.tasks.language_modeling.data.LanguageModelingDataModule"
_SHARED: dict[str, Any] = {
    "lower_is_better": ("loss", "perplexity"),
    "primary_metric": "perplexity",
    "baseline_note": (
        "For language modelling the untouched pretrained model, the 'before' column, is the "
        "baseline."
    ),
    # Language models train on ids and mask; a WordPiece tokenizer's token type ids would
    # add an embedding a GPT-2 never saw.
    "token_type_ids": False,
    "data_schema": LanguageModelingData,
    "model_schema": LanguageModelingModel,
}

FAMILIES = (
    TaskFamily(
        name="causal_lm",
        module="lmforge.tasks.language_modeling.module.CausalLMModule",
        predictor="lmforge.tasks.language_modeling.predict.CausalLMPredictor",
        # Plain text in blocks of data.block_size; instructions and chats up to data.max_length.
        data_formats=(
            DataFormat(PLAIN_TEXT, length_key="data.block_size"),
            DataFormat("lmforge.tasks.language_modeling.instructions.InstructionDataModule"),
        ),
        auto_class="AutoModelForCausalLM",
        pipeline_tag="text-generation",
        architecture_suffixes=("ForCausalLM", "LMHeadModel"),
        peft_task_type="CAUSAL_LM",
        peft_task_wrapper=True,
        prompt_learning=True,
        metrics=(
            "loss",
            "perplexity",
            "answer_exact_match",
            "answer_f1",
            "answer_rouge1",
            "answer_rouge2",
            "answer_rougeL",
        ),
        # Generated answers are scored on instruction and chat data only.
        only_when={
            name: "data.score_answers"
            for name in (
                "answer_exact_match",
                "answer_f1",
                "answer_rouge1",
                "answer_rouge2",
                "answer_rougeL",
            )
        },
        experiment="debian_lm_gpt2_scratch",
        example_inputs=("This package provides",),
        **_SHARED,
    ),
    TaskFamily(
        name="preference_tuning",
        module="lmforge.tasks.language_modeling.module.PreferenceModule",
        predictor="lmforge.tasks.language_modeling.predict.CausalLMPredictor",
        auto_class="AutoModelForCausalLM",
        pipeline_tag="text-generation",
        # An exported preference-tuned model is a causal LM: its architecture name says so.
        architecture_suffixes=(),
        peft_task_type="CAUSAL_LM",
        peft_task_wrapper=True,
        metrics=("loss", "pref_acc", "reward_acc", "reward_margin", "logp_chosen", "logp_rejected"),
        lower_is_better=("loss",),
        primary_metric="pref_acc",
        baseline_note=(
            "The starting model (the 'before' column, also the reference of the loss) is the "
            "baseline: its preference accuracy is what tuning has to raise."
        ),
        token_type_ids=False,
        data_schema=LanguageModelingData,
        model_schema=LanguageModelingModel,
        experiment="debian_dpo_gpt2",
        example_inputs=("What is vim for?",),
        data_formats=(
            DataFormat("lmforge.tasks.language_modeling.preferences.PreferenceDataModule"),
        ),
    ),
    TaskFamily(
        name="masked_lm",
        module="lmforge.tasks.language_modeling.module.MaskedLMModule",
        predictor="lmforge.tasks.language_modeling.predict.MaskedLMPredictor",
        auto_class="AutoModelForMaskedLM",
        pipeline_tag="fill-mask",
        architecture_suffixes=("ForMaskedLM",),
        metrics=("loss", "perplexity", "masked_acc"),
        data_formats=(DataFormat(PLAIN_TEXT, length_key="data.block_size"),),
        experiment="debian_mlm_minilm",
        example_inputs=("This package provides a [MASK] for the terminal.",),
        **_SHARED,
    ),
)
