"""Predictions of sequence-to-sequence models: the generated text for each source."""

from __future__ import annotations

from typing import Any

import torch

from lmforge.errors import LmforgeError
from lmforge.tasks.predictor import InputText, Predictor

# lmforge-predict's `generate` keys that override the run's own settings when given (not null).
OVERRIDABLE = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p")


class Seq2SeqPredictor(Predictor):
    """Per source: `generated`, the model's output text, with the run's generation settings
    (`generate` in its settings) unless lmforge-predict's `generate.*` keys set them. The
    run's `source_prefix` goes before every input; sources over `max_length` tokens are cut,
    as in training."""

    def generation(self) -> dict[str, Any]:
        settings = dict(self.settings.get("generate") or {})
        given = self.options.get("generate") or {}
        for key in OVERRIDABLE:
            value = given.get(key)
            if value is not None:
                settings[key] = value
        if not settings.get("do_sample"):
            for key in ("temperature", "top_k", "top_p"):
                settings.pop(key, None)
        if not settings.get("max_new_tokens"):
            raise LmforgeError(
                "generate.max_new_tokens is not set and the run recorded none: set it "
                "(e.g. generate.max_new_tokens=64)."
            )
        return settings

    def check(self, inputs: list[InputText]) -> None:
        for item in inputs:
            if not str(item.text).strip():
                raise LmforgeError(f"{item.where} is empty: there is nothing to generate from.")

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        prefix = str(self.settings.get("source_prefix") or "")
        texts = [str(item.text) for item in batch]
        encoded = self.tokenizer(
            [prefix + t for t in texts],
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        output = self.model.generate(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            **self.generation(),
        )
        generated = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        return [
            {"text": text, "generated": out.strip()}
            for text, out in zip(texts, generated, strict=True)
        ]

    def describe(self) -> str:
        return f"max_length {self.max_length}, generation {self.generation()}"
