"""Prompt-based classification: a pretrained language model classifies by filling a pattern.

The text goes into `pattern` and each label is scored by its verbalizer word:
- `scorer=masked`: a masked LM reads the pattern, whose `[MASK]` stands where the word goes;
  a label's score is the logit of its word at the mask (each word must be one token).
- `scorer=causal`: a causal LM reads the pattern (through its chat template, as a user turn
  followed by the assistant's start, with `chat_template=true`); a label's score is the
  log-probability of its word as the continuation, the mean over its tokens (`normalize=mean`)
  or their sum (`sum`).

Training minimises the cross-entropy of those scores (pattern-exploiting training, PET-style:
the language-model head is the classifier, no new weights), so the starting model already
classifies: its zero-shot accuracy is the 'before' column. `calibrate=true` divides each
label's probability by the one the model gives it for content-free inputs ("N/A" and an empty
text), measured again before every evaluation (contextual calibration).

The datamodule tokenizes texts as for any classifier; the pattern is put around the text's
tokens here, after the text is cut to leave room for the pattern and the longest label word,
so the pattern (and its mask) is never truncated away.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.errors import LmforgeError
from lmforge.evaluation.continuations import NORMALIZE, chat_pattern, continuation_scores
from lmforge.tasks.predictor import InputText
from lmforge.tasks.text_classification.module import TextClassificationModule
from lmforge.tasks.text_classification.predict import TextClassificationPredictor

log = logging.getLogger(__name__)

SCORERS = ("masked", "causal")
TEXT_FIELD = "text"
MASK = "[MASK]"
# Inputs that say nothing, whose label probabilities measure the model's prior for
# contextual calibration.
CONTENT_FREE = ("N/A", "")


def check_pattern(pattern: str, scorer: str) -> None:
    """A pattern holds `{text}` once and no other field; a masked one holds one `[MASK]`."""
    fields = [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    if fields != [TEXT_FIELD]:
        raise LmforgeError(
            f"model.pattern={pattern!r} must hold the field {{{TEXT_FIELD}}} exactly once and "
            f"no other (found {', '.join('{' + f + '}' for f in fields) or 'none'}), e.g. "
            "'{text} All in all, it was [MASK].'"
        )
    masks = pattern.count(MASK)
    if scorer == "masked" and masks != 1:
        raise LmforgeError(
            f"model.pattern={pattern!r}: model.scorer=masked needs exactly one {MASK} where "
            f"the label word goes; it has {masks}."
        )
    if scorer == "causal" and masks:
        raise LmforgeError(
            f"model.pattern={pattern!r}: model.scorer=causal continues the pattern with the "
            f"label word, so it holds no {MASK}; put the words the answer follows at its end."
        )


@dataclass
class PromptScorer:
    """The token pieces of a pattern and the label words, and the scoring of texts with them.

    Args:
        tokenizer: the model's tokenizer.
        pattern: the pattern (checked by `check_pattern`).
        words: the verbalizer word of each label, in label id order.
        scorer: masked or causal.
        chat_template: render the pattern as a user turn through the tokenizer's chat
            template (causal).
        normalize: mean or sum of a causal label word's token log-probabilities.
        max_length: the longest sequence the model is given.
    """

    tokenizer: PreTrainedTokenizerBase
    pattern: str
    words: list[str]
    scorer: str
    chat_template: bool
    normalize: str
    max_length: int
    device: Any = "cpu"

    def __post_init__(self) -> None:
        tokenizer = self.tokenizer
        pattern = self.pattern
        if self.scorer == "masked":
            if tokenizer.mask_token is None:
                raise LmforgeError(
                    "model.scorer=masked, but the tokenizer has no mask token: use a masked LM "
                    "(BERT, RoBERTa) or model.scorer=causal."
                )
            pattern = pattern.replace(MASK, str(tokenizer.mask_token))
        if self.chat_template:
            before, after = chat_pattern(tokenizer, pattern, TEXT_FIELD)
            self.prefix = self._ids(before)
            self.suffix = self._ids(after)
            self.front: list[int] = []  # the template writes any BOS itself
            self.back: list[int] = []
        else:
            before, _, after = pattern.partition("{text}")
            self.prefix, self.suffix = self._ids(before), self._ids(after)
            # The special tokens the tokenizer adds around one sequence ([CLS] ... [SEP], a BOS).
            marker = self._ids("a")
            full = list(tokenizer("a")["input_ids"])
            start = next(i for i in range(len(full)) if full[i : i + len(marker)] == marker)
            self.front, self.back = full[:start], full[start + len(marker) :]
            if self.scorer == "causal":
                self.back = []  # nothing follows the answer
        # Looked up once, not per batch: the padding id, and the special tokens the datamodule
        # put around each text (stripped before the pattern goes around it).
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.special_ids = set(tokenizer.all_special_ids)
        self.label_ids = [self._word_ids(word) for word in self.words]
        if self.scorer == "masked":
            long = [
                f"{word!r} -> {tokenizer.convert_ids_to_tokens(ids)}"
                for word, ids in zip(self.words, self.label_ids, strict=True)
                if len(ids) != 1
            ]
            if long:
                raise LmforgeError(
                    "model.verbalizer: with model.scorer=masked every label word must be one "
                    f"token of the tokenizer, but {'; '.join(long)}. Choose words the "
                    "vocabulary holds whole, or model.scorer=causal (which scores words of "
                    "several tokens)."
                )
        room = len(self.front) + len(self.prefix) + len(self.suffix) + len(self.back)
        room += max(len(ids) for ids in self.label_ids) if self.scorer == "causal" else 0
        self.text_room = self.max_length - room
        if self.text_room < 1:
            raise LmforgeError(
                f"model.pattern and the label words take {room} tokens, leaving no room for "
                f"the text in {self.max_length} (data.max_length); shorten the pattern or raise "
                "data.max_length."
            )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _word_ids(self, word: str) -> list[int]:
        """A label word's tokens where it stands: after a space unless the pattern puts it
        straight after other text or a line break (a chat answer starts bare; a masked word
        takes the mask's place, so the character before the mask decides)."""
        if self.scorer == "masked":
            before = self.pattern.split(MASK)[0]
            spaced = before.endswith(" ") or not before
        else:
            spaced = not self.chat_template and not self.pattern[-1:].isspace()
        return self._ids((" " if spaced else "") + word.strip())

    # ----- sequences ------------------------------------------------------------------------
    def sequences(self, texts: list[list[int]]) -> list[list[int]]:
        """The model input of each text's tokens in the pattern (texts cut to fit)."""
        return [
            [*self.front, *self.prefix, *ids[: self.text_room], *self.suffix, *self.back]
            for ids in texts
        ]

    def text_tokens(self, text: str) -> list[int]:
        return self._ids(text)

    def scores(self, model: Any, texts: list[list[int]]) -> torch.Tensor:
        """(texts, labels) scores: mask logits of the label words (masked) or their mean or
        summed log-probabilities as continuations (causal)."""
        sequences = self.sequences(texts)
        if self.scorer == "masked":
            mask_id = self.tokenizer.mask_token_id
            input_ids, attention = self._padded(sequences)
            logits = model(input_ids=input_ids, attention_mask=attention).logits
            positions = (input_ids == mask_id).int().argmax(dim=1)
            at_mask = logits[torch.arange(len(sequences)), positions]  # (texts, vocab)
            words = torch.tensor([ids[0] for ids in self.label_ids], device=at_mask.device)
            return at_mask[:, words]
        return self._continuation_scores(model, sequences)

    def _continuation_scores(self, model: Any, sequences: list[list[int]]) -> torch.Tensor:
        """Causal: each label word's log-probability after each text (the texts run once and
        their cache serves every label; see `continuation_scores`)."""
        return continuation_scores(
            model,
            sequences,
            [self.label_ids] * len(sequences),
            self.pad_id,
            self.device,
            self.normalize,
        )

    def _padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and attention mask (positions then count from each start)."""
        width = max(len(s) for s in sequences)
        pad, device = self.pad_id, self.device
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
        mask = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device
        )
        return ids, mask

    def prior(self, model: Any) -> torch.Tensor:
        """The mean label probabilities of the content-free inputs (contextual calibration)."""
        scores = self.scores(model, [self._ids(text) for text in CONTENT_FREE])
        return scores.softmax(dim=-1).mean(dim=0)


def calibrated(scores: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
    """Scores as log-probabilities over the labels, divided by the prior where there is one."""
    logp = scores.log_softmax(dim=-1)
    return logp if prior is None else logp - prior.clamp_min(1e-12).log()


def verbalizer_words(verbalizer: dict[str, str] | None, label_names: list[str]) -> list[str]:
    """The word of each label in id order: the verbalizer's, else the label name itself."""
    verbalizer = {str(k): str(v) for k, v in (verbalizer or {}).items()}
    unknown = sorted(set(verbalizer) - set(label_names))
    if unknown:
        raise LmforgeError(
            f"model.verbalizer names {', '.join(repr(u) for u in unknown)}, which the data's "
            f"labels ({', '.join(label_names)}) do not hold."
        )
    words = [verbalizer.get(name, name) for name in label_names]
    empty = [name for name, word in zip(label_names, words, strict=True) if not word.strip()]
    if empty:
        raise LmforgeError(f"model.verbalizer: the label(s) {', '.join(empty)} have no word.")
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise LmforgeError(
            f"model.verbalizer gives the word(s) {', '.join(map(repr, repeated))} to more than "
            "one label; each label needs its own word."
        )
    return words


def strip_special(ids: list[int], special: set[int]) -> list[int]:
    """A text's tokens without the special tokens its tokenizer put around it."""
    start, end = 0, len(ids)
    while start < end and ids[start] in special:
        start += 1
    while end > start and ids[end - 1] in special:
        end -= 1
    return ids[start:end]


class PromptClassificationModule(TextClassificationModule):
    """A pretrained masked or causal LM classifying through a pattern and a verbalizer.

    Same data, metrics (`acc`, `f1_macro`, `f1_<label>`), predictions and comparison as text
    classification; no head is added, so the untouched model's zero-shot accuracy is the
    'before' column, and `train=false` evaluates it alone.

    Args:
        scorer: masked (the word's logit at `[MASK]`) or causal (the word's log-probability
            as the continuation).
        pattern: the text around `{text}`; a masked pattern holds one `[MASK]`.
        verbalizer: label -> word; a label left out is its own word.
        chat_template: causal: the pattern is a user turn of the tokenizer's chat template and
            the word the start of the answer.
        normalize: causal: a word's score is the mean (`mean`) or sum (`sum`) of its tokens'
            log-probabilities.
        calibrate: divide the label probabilities by those of content-free inputs, measured
            before each evaluation (training uses the plain scores).
        max_length: the longest input the model is given (the data's max_length).
    """

    task_name = "prompt_classification"

    def __init__(
        self,
        pretrained: str,
        label_names: list[str],
        tokenizer: str | None = None,
        scorer: str = "causal",
        pattern: str = "{text}",
        verbalizer: dict[str, str] | None = None,
        chat_template: bool = False,
        normalize: str = "mean",
        calibrate: bool = False,
        max_length: int = 128,
        **kwargs: Any,
    ) -> None:
        for key, value, allowed in (
            ("scorer", scorer, SCORERS),
            ("normalize", normalize, NORMALIZE),
        ):
            if value not in allowed:
                raise LmforgeError(f"model.{key}={value!r}; expected one of {', '.join(allowed)}.")
        check_pattern(pattern, scorer)
        if kwargs.get("multi_label"):
            raise LmforgeError(
                "model.multi_label=true: prompt-based classification picks one label word per "
                "text; use model=text_classification for multi-label data."
            )
        self.words = verbalizer_words(verbalizer, list(label_names))
        self.verbalizer = dict(zip(label_names, self.words, strict=True))
        self.prompt: dict[str, Any] = {
            "scorer": scorer,
            "pattern": pattern,
            "verbalizer": self.verbalizer,
            "chat_template": bool(chat_template),
            "normalize": normalize,
            "calibrate": bool(calibrate),
        }
        self.prompt_max_length = max_length
        self._scorer: PromptScorer | None = None
        self.prior: torch.Tensor | None = None
        super().__init__(
            pretrained=pretrained, label_names=label_names, tokenizer=tokenizer, **kwargs
        )
        log.info(
            "Prompt: %s scoring of %r; verbalizer %s",
            scorer,
            pattern,
            ", ".join(f"{k} -> {v!r}" for k, v in self.verbalizer.items()),
        )

    def build_model(self) -> PreTrainedModel:
        return self.load_pretrained()  # the language-model head is the classifier

    def supports_distillation(self) -> bool:
        return False

    def run_settings(self) -> dict[str, Any]:
        return {**super().run_settings(), **self.prompt}

    def attach_data(self, datamodule: Any) -> None:
        if getattr(datamodule, "text_pair_column", None):
            raise LmforgeError(
                f"data.text_pair_column={datamodule.text_pair_column!r}: prompt-based "
                "classification puts one text into model.pattern; sentence pairs are not "
                "supported (join the two texts into one column, or use model=text_classification)."
            )

    @property
    def scorer(self) -> PromptScorer:
        if self._scorer is None:
            from lmforge.data.datamodule import load_tokenizer_for_batching

            hparams: Any = self.hparams
            tokenizer = load_tokenizer_for_batching(hparams.tokenizer or hparams.pretrained)
            self._scorer = prompt_scorer(tokenizer, self.prompt, self.words, self.prompt_max_length)
        self._scorer.device = self.device
        return self._scorer

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        special = self.scorer.special_ids
        texts = [
            strip_special(row[mask.bool()].tolist(), special)
            for row, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)
        ]
        scores = self.scorer.scores(self.model, texts)
        loss = F.cross_entropy(scores.float(), batch["labels"])
        if self.training:
            return loss, scores
        return loss, calibrated(scores.float(), self.prior)

    def _measure_prior(self) -> None:
        if self.prompt["calibrate"]:
            with torch.no_grad():
                self.prior = self.scorer.prior(self.model)
            log.info(
                "Calibration: content-free label probabilities %s",
                ", ".join(
                    f"{n} {p:.3f}"
                    for n, p in zip(self.label_names, self.prior.tolist(), strict=True)
                ),
            )

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._measure_prior()

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._measure_prior()


def prompt_scorer(
    tokenizer: PreTrainedTokenizerBase, prompt: dict[str, Any], words: list[str], max_length: int
) -> PromptScorer:
    return PromptScorer(
        tokenizer=tokenizer,
        pattern=str(prompt["pattern"]),
        words=words,
        scorer=str(prompt["scorer"]),
        chat_template=bool(prompt["chat_template"]),
        normalize=str(prompt["normalize"]),
        max_length=max_length,
    )


class PromptClassificationPredictor(TextClassificationPredictor):
    """Per text: the label whose word the model scores highest in the run's pattern, and every
    label's probability (calibrated where the run was)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.text_pair_column:
            raise LmforgeError("A prompt-based classifier reads one text per input, not pairs.")
        verbalizer = dict(self.settings.get("verbalizer") or {})
        words = [str(verbalizer.get(name, name)) for name in self.label_names]
        self.scorer = prompt_scorer(self.tokenizer, self.settings, words, self.max_length)
        self.scorer.device = self.device
        self.prior = None
        if self.settings.get("calibrate"):
            with torch.inference_mode():
                self.prior = self.scorer.prior(self.model)

    @torch.inference_mode()
    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        texts = [self.scorer.text_tokens(str(item.text)) for item in batch]
        probabilities = calibrated(self.scorer.scores(self.model, texts).float(), self.prior)
        probabilities = probabilities.softmax(dim=-1)
        names = self.label_names
        return [
            {
                "text": str(item.text),
                "label": names[int(row.argmax())],
                "probabilities": dict(zip(names, row.tolist(), strict=True)),
            }
            for item, row in zip(batch, probabilities, strict=True)
        ]
