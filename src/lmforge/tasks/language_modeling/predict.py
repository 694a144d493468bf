"""Predictions of language models: continuations of prompts (causal), mask fills (masked)."""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from lmforge.config.positions import usable_positions
from lmforge.errors import LmforgeError
from lmforge.tasks.predictor import InputText, Predictor

# Tokens a causal LM continues a prompt by when generate.max_new_tokens is null.
DEFAULT_NEW_TOKENS = 30


def decode_generation(
    tokenizer: PreTrainedTokenizerBase, prompt: list[int], new: list[int]
) -> dict[str, str]:
    """The decoded prompt + continuation, and the continuation alone (cut from the full text,
    so a continued word such as WordPiece's `##s` reads right)."""
    # One sequence of ids decodes to one str (a batch of them would give a list).
    full = cast(str, tokenizer.decode(prompt + new, skip_special_tokens=True))
    head = cast(str, tokenizer.decode(prompt, skip_special_tokens=True))
    tail = (
        full[len(head) :]
        if full.startswith(head)
        else cast(str, tokenizer.decode(new, skip_special_tokens=True))
    )
    return {"text": full, "continuation": tail.strip()}


def prompt_room(model: Any, max_length: int, max_new_tokens: int) -> int:
    """How many prompt tokens fit: `max_length`, less where the model's positions must also
    hold `max_new_tokens` generated ones (longer prompts keep their end)."""
    room = max_length
    positions = usable_positions(model.config.to_dict())
    if positions:
        room = min(room, positions - max_new_tokens)
    if room < 1:
        raise LmforgeError(
            f"generate.max_new_tokens={max_new_tokens} leaves no room for the prompt "
            f"in the model's {positions} positions."
        )
    return room


def continue_prompts(
    model: Any, prompts: list[list[int]], pad_token_id: int | None, **generate: Any
) -> list[list[int]]:
    """The new tokens `model.generate` adds to each prompt (`num_return_sequences` per prompt,
    in order), the prompts left-padded into one batch so each ends where generation starts."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = pad_token_id if pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device
    )
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad, **generate
    )  # (batch * num_return_sequences, width + new)
    return cast(list[list[int]], output[:, width:].tolist())


class CausalLMPredictor(Predictor):
    """Per prompt: `generate.num_return_sequences` generations, each the decoded prompt +
    continuation and the continuation alone. Prompts longer than the model can take keep
    their end. A model fine-tuned on chats gets each input as a user turn rendered with the
    run's chat template (saved with its tokenizer) and the generation prompt; one fine-tuned
    on instructions gets its prompt template filled with the input (then rendered as a user
    turn when the run had `data.apply_chat_template`)."""

    runs_on_graphs = False  # it calls `generate`, a loop over the PyTorch model

    def prompt_ids(self, text: str, where: str) -> list[int]:
        """The tokens of one input as the run's training rendered prompts."""
        from lmforge.tasks.language_modeling.chat import encode_spans, render
        from lmforge.tasks.language_modeling.instructions import template_fields

        tokenizer = self.tokenizer
        data_format = self.settings.get("data_format")
        prompt_template = self.settings.get("prompt_template")
        if data_format == "prompt_completion" and prompt_template:
            template = str(prompt_template)
            fields = template_fields(template)
            if len(fields) != 1:
                raise LmforgeError(
                    f"{where}: the run's prompt template names {len(fields)} columns "
                    f"({', '.join(fields)}); typed or .txt inputs fill a template of one column."
                )
            text = template.format(**{fields[0]: text})
        if data_format in ("messages", "sharegpt") or (
            data_format == "prompt_completion" and self.settings.get("apply_chat_template")
        ):
            system = self.settings.get("system_prompt")
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": text})
            chat_template = str(tokenizer.chat_template or "")
            if not chat_template:
                raise LmforgeError(
                    "The model was fine-tuned on chat-rendered examples but its tokenizer "
                    "carries no chat template; predict from the run's checkpoint or an lmforge "
                    "export."
                )
            rendered = render(tokenizer, messages, chat_template, add_generation_prompt=True)
            return encode_spans(tokenizer, rendered, []).input_ids
        if data_format == "prompt_completion":
            return encode_spans(tokenizer, text, []).input_ids
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        options = self.options.generate
        max_new = options.max_new_tokens or DEFAULT_NEW_TOKENS
        room = prompt_room(self.model, self.max_length, max_new)
        prompts = [self.prompt_ids(str(item.text), item.where)[-room:] for item in batch]
        for item, prompt in zip(batch, prompts, strict=True):
            if not prompt:
                raise LmforgeError(f"{item.where} gives no tokens to continue: {item.text!r}.")
        sampling = (
            {"temperature": options.temperature, "top_k": options.top_k, "top_p": options.top_p}
            if options.do_sample
            else {}
        )
        new_tokens = continue_prompts(
            self.model,
            prompts,
            self.tokenizer.pad_token_id,
            max_new_tokens=max_new,
            do_sample=options.do_sample,
            num_return_sequences=options.num_return_sequences,
            **sampling,
        )
        records = []
        count = options.num_return_sequences
        for index, (item, prompt) in enumerate(zip(batch, prompts, strict=True)):
            generations = [
                decode_generation(self.tokenizer, prompt, new)
                for new in new_tokens[index * count : (index + 1) * count]
            ]
            records.append({"text": str(item.text), "generations": generations})
        return records


class MaskedLMPredictor(Predictor):
    """Per text: for each mask token, in order, the `fill_top_k` most likely tokens and their
    probabilities (special tokens left out)."""

    def check(self, inputs: list[InputText]) -> None:
        mask = self.tokenizer.mask_token
        if mask is None:
            raise LmforgeError("The masked LM's tokenizer has no mask token to fill.")
        for item in inputs:
            if mask not in str(item.text):
                raise LmforgeError(
                    f"{item.where} has no mask token: write {mask} where the model should fill "
                    f"in a word (e.g. 'the {mask} was won'). Got {str(item.text)[:80]!r}."
                )

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        tokenizer = self.tokenizer
        top_k = int(self.options.fill_top_k)
        texts = [str(item.text) for item in batch]
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        lengths = encoded["attention_mask"].sum(dim=1).tolist()
        for item, length in zip(batch, lengths, strict=True):
            if length > self.max_length:
                raise LmforgeError(
                    f"{item.where} is {length} tokens long, over max_length={self.max_length}; "
                    "shorten it to the sentence around its mask(s)."
                )
        encoded = encoded.to(self.device)
        logits = self.model(**encoded).logits  # (batch, seq, vocab)
        masks = encoded["input_ids"] == tokenizer.mask_token_id  # (batch, seq)
        probabilities = logits[masks].softmax(dim=-1)  # (masks, vocab), row by row
        probabilities[:, tokenizer.all_special_ids] = 0.0
        scores, ids = probabilities.topk(top_k, dim=-1)  # (masks, top_k)
        candidates = [
            [
                {"token": tokenizer.decode([token]).strip(), "score": score}
                for score, token in zip(row_scores, row_ids, strict=True)
            ]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True)
        ]
        records, taken = [], 0
        for text, count in zip(texts, masks.sum(dim=1).tolist(), strict=True):
            records.append({"text": text, "fills": candidates[taken : taken + count]})
            taken += count
        return records
