"""Causal (GPT-style) and masked (BERT-style) language modelling."""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.data.labels import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.tasks.base import TaskModule
from lmforge.tasks.language_modeling.metrics import TokenLoss

log = logging.getLogger(__name__)


class LanguageModelingModule(TaskModule):
    """Shared by causal and masked LM: the model's own loss, perplexity over tokens.

    The loss each step is the mean over the predicted tokens of the batch; it is logged with
    the token count as weight, so `val/loss` is the token-weighted mean of the split and
    `val/perplexity` its exponential.
    """

    objective: str = ""

    def __init__(
        self,
        pretrained: str | None,
        tokenizer: str | None = None,
        objective: str | None = None,
        **kwargs: Any,
    ) -> None:
        if objective is not None and objective != self.objective:
            raise LmforgeError(
                f"model.objective={objective!r} does not fit {type(self).__name__}, which "
                f"trains the {self.objective!r} objective."
            )
        self._tokenizer: PreTrainedTokenizerBase | None = None
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def tokenizer_object(self) -> PreTrainedTokenizerBase:
        """The tokenizer (for vocabulary size, special tokens and generation)."""
        if self._tokenizer is None:
            from lmforge.data.datamodule import load_tokenizer_for_batching

            hparams: Any = self.hparams  # an AttributeDict: its keys read as attributes
            name = hparams.tokenizer or hparams.pretrained
            self._tokenizer = load_tokenizer_for_batching(name)
        return self._tokenizer

    def vocabulary_fields(self) -> dict[str, Any]:
        """Config fields that tie a model built from scratch to the tokenizer's vocabulary."""
        if not self.hparams.get("from_config") or self._hf_config is not None:
            return {}
        from lmforge.tasks.language_modeling.data import document_separator

        tokenizer = self.tokenizer_object()
        separator = document_separator(tokenizer)
        return {
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": separator,
            "eos_token_id": separator,
        }

    @staticmethod
    def predicted_tokens(labels: torch.Tensor) -> torch.Tensor:
        return (labels != IGNORE_INDEX).sum()

    # An instance method where the base's is static: it is only ever called on an instance.
    def batch_size_of(self, batch: dict[str, torch.Tensor]) -> int:  # type: ignore[override]
        return max(int(self.predicted_tokens(batch["labels"])), 1)

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        outputs = self.model(**batch)  # the model's own (shifted, for causal) token loss
        return outputs.loss, {"loss": outputs.loss, "logits": outputs.logits}

    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        if stage == "train":
            return nn.ModuleDict()
        return nn.ModuleDict({"tokens": TokenLoss()})

    def update_metrics(self, metrics: Any, outputs: Any, batch: dict) -> None:
        metrics["tokens"].update(outputs["loss"], self.predicted_tokens(batch["labels"]))

    def compute_metrics(self, metrics: Any) -> dict[str, torch.Tensor]:
        values = {"perplexity": metrics["tokens"].compute()["perplexity"]}
        for name, metric in metrics.items():
            if name != "tokens":
                values[name] = metric.compute()
            metric.reset()
        return values


class CausalLMModule(LanguageModelingModule):
    """Next-token prediction (GPT-style): `AutoModelForCausalLM`, pretrained or from scratch.

    With `generate_prompts`, the end of every validation writes a continuation of each prompt
    to the log and to the loggers that take text (W&B, TensorBoard).
    """

    task_name = "causal_lm"
    objective = "causal"

    def __init__(
        self,
        pretrained: str | None,
        tokenizer: str | None = None,
        generate_prompts: list[str] | None = None,
        generate_max_new_tokens: int = 30,
        generate_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.generate_prompts = list(generate_prompts or [])
        self.generate_max_new_tokens = generate_max_new_tokens
        self.generate_kwargs = dict(generate_kwargs or {})
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)

    def build_model(self) -> PreTrainedModel:
        return self.load_pretrained(**self.vocabulary_fields())

    @staticmethod
    def predicted_tokens(labels: torch.Tensor) -> torch.Tensor:
        return (
            labels[:, 1:] != IGNORE_INDEX
        ).sum()  # the model shifts: the first token is no target

    def generate(self, prompts: list[str]) -> list[str]:
        """Continue each prompt with the model's generation settings."""
        tokenizer = self.tokenizer_object()
        texts = []
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(self.device)
            # A causal LM class mixes in `generate`, typed for a host protocol this cannot name.
            output = cast(Any, self.model).generate(
                **ids,
                max_new_tokens=self.generate_max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **self.generate_kwargs,
            )
            # One sequence of ids decodes to one str.
            texts.append(cast(str, tokenizer.decode(output[0], skip_special_tokens=True)))
        return texts

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.generate_prompts or self.trainer.sanity_checking:
            return
        if not self.trainer.is_global_zero:
            return
        texts = self.generate(self.generate_prompts)
        step = self.global_step
        for prompt, text in zip(self.generate_prompts, texts, strict=True):
            log.info("Sample at step %d: %r -> %r", step, prompt, text)
        for logger in self.loggers:
            if hasattr(logger, "log_text"):  # W&B
                logger.log_text(
                    key="val/samples",
                    columns=["step", "prompt", "text"],
                    data=[[step, p, t] for p, t in zip(self.generate_prompts, texts, strict=True)],
                )
            elif hasattr(getattr(logger, "experiment", None), "add_text"):  # TensorBoard
                for i, text in enumerate(texts):
                    cast(Any, logger).experiment.add_text(f"val/sample_{i}", text, step)


class MaskedLMModule(LanguageModelingModule):
    """Masked-token prediction (BERT-style): `AutoModelForMaskedLM`. Starting from an encoder
    without its pretraining head (such as the embedded MiniLM), the head is initialised fresh
    and the run records it. Extra metric: `masked_acc`, accuracy on the masked tokens."""

    task_name = "masked_lm"
    objective = "masked"

    def build_model(self) -> PreTrainedModel:
        return self.load_pretrained(**self.vocabulary_fields())

    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        metrics = super().configure_metrics(stage)
        if stage != "train":
            vocabulary = self.model.config.vocab_size
            metrics["masked_acc"] = MulticlassAccuracy(
                num_classes=vocabulary, average="micro", ignore_index=IGNORE_INDEX
            )
        return metrics

    def update_metrics(self, metrics: Any, outputs: Any, batch: dict) -> None:
        super().update_metrics(metrics, outputs, batch)
        labels = batch["labels"]
        keep = labels != IGNORE_INDEX
        metrics["masked_acc"].update(outputs["logits"].argmax(dim=-1)[keep], labels[keep])
