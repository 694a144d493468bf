"""Sequence-to-sequence fine-tuning: summarization and translation.

Models: any `AutoModelForSeq2SeqLM` (T5, BART, Marian, mBART...) by name or folder, one built
from a config (`model.from_config`), or an encoder-decoder warm-started from a BERT-style
encoder checkpoint (`model.warm_start=true`: encoder and decoder both start from
`model.pretrained`, the decoder's cross-attention fresh).

Validation computes the loss every epoch and generates on the first `max_generate_samples`
validation rows every `generate_every_n_epochs` epochs; test generates on the whole split.
Generated texts are scored against the raw target texts of the data (not decoded labels, which
an uncased tokenizer would have lowercased).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, ClassVar, cast

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmforge.data.datamodule import TextDataModule
from lmforge.data.labels import IGNORE_INDEX
from lmforge.data.splits import SPLIT_OF_STAGE, Stage
from lmforge.errors import LmforgeError
from lmforge.evaluation.answers import GeneratedTexts, rouge_scores, unscorable_by_rouge
from lmforge.tasks.base import TaskModule, sample_cap
from lmforge.tasks.seq2seq.data import Seq2SeqDataModule
from lmforge.tasks.seq2seq.metrics import bleu_scores, sentence_chrf

log = logging.getLogger(__name__)

# The generation settings a config may give (transformers' `generate` keywords).
GENERATE_KEYS = (
    "max_new_tokens",
    "min_new_tokens",
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "repetition_penalty",
    "early_stopping",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
)


def generation_settings(generate: dict[str, Any] | None) -> dict[str, Any]:
    """The `generate` keywords of a config, checked: `max_new_tokens` must be set (transformers
    would otherwise stop every output at its silent default of 20 tokens)."""
    settings = {k: v for k, v in dict(generate or {}).items() if v is not None}
    unknown = sorted(set(settings) - set(GENERATE_KEYS))
    if unknown:
        raise LmforgeError(
            f"model.generate.{unknown[0]} is not a generation setting lmforge passes on; expected "
            f"some of {', '.join(GENERATE_KEYS)}."
        )
    new = settings.get("max_new_tokens")
    if isinstance(new, bool) or not isinstance(new, int) or new < 1:
        raise LmforgeError(
            "model.generate.max_new_tokens must be set to a whole number of 1 or more (the "
            f"longest output, in tokens), got {new!r}: without it transformers stops every "
            "output at 20 tokens."
        )
    return settings


def tie_encoder_decoder(model: PreTrainedModel) -> int:
    """Share every encoder weight with the decoder's same-named one (an encoder-decoder warm-
    started from one checkpoint); returns how many are shared. Written here because
    transformers 5's EncoderDecoderModel records `tie_encoder_decoder` but no longer ties."""
    encoder: Any = getattr(model, "encoder", None)
    decoder: Any = getattr(model, "decoder", None)
    if encoder is None or decoder is None:
        return 0
    base = decoder.base_model
    own = dict(base.named_parameters())
    shared = 0
    for name, parameter in encoder.named_parameters():
        if name in own and own[name].shape == parameter.shape:
            path, _, attribute = name.rpartition(".")
            setattr(base.get_submodule(path) if path else base, attribute, parameter)
            shared += 1
    # The decoder's output layer was tied to its own input embeddings: tie it to the shared ones.
    decoder.tie_weights()
    log.info("Encoder and decoder share %d weight tensors (model.tie_encoder_decoder).", shared)
    return shared


def untie_encoder_decoder(model: PreTrainedModel) -> None:
    """Give the decoder its own copy of every weight it shares with the encoder (the weights
    keep their values; `config.tie_encoder_decoder` becomes false)."""
    encoder: Any = model.encoder
    base = cast(Any, model.decoder).base_model
    shared = {id(p) for p in encoder.parameters()}
    for name, parameter in list(base.named_parameters()):
        if id(parameter) in shared:
            path, _, attribute = name.rpartition(".")
            copy = nn.Parameter(parameter.detach().clone(), requires_grad=parameter.requires_grad)
            setattr(base.get_submodule(path) if path else base, attribute, copy)
    cast(Any, model.decoder).tie_weights()
    cast(Any, model.config).tie_encoder_decoder = False


class Seq2SeqModule(TaskModule):
    """A source -> target model trained on the token loss, scored on generated text.

    Args:
        warm_start: build an encoder-decoder whose encoder and decoder both start from
            `pretrained` (a BERT-style encoder checkpoint).
        tie_encoder_decoder: with `warm_start`, share the encoder's and decoder's weights.
        generate: generation settings for validation, test, predict and export
            (`max_new_tokens` required; `num_beams`, `length_penalty`, ...).
        max_generate_samples: validation rows generated on (None: all); test uses all rows.
        generate_every_n_epochs: generate at the end of every n-th training epoch's
            validation (the loss is computed every epoch).
        source_prefix: the data's source prefix (from the datamodule), checked against the
            model: pretrained T5 checkpoints expect one.
    """

    # The names of the generated-text metrics this family computes (set by subclasses).
    text_metrics: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        pretrained: str | None,
        tokenizer: str | None = None,
        warm_start: bool = False,
        tie_encoder_decoder: bool = False,
        generate: dict[str, Any] | None = None,
        max_generate_samples: int | None = 64,
        generate_every_n_epochs: int = 1,
        source_prefix: str = "",
        **kwargs: Any,
    ) -> None:
        self.generate_settings = generation_settings(generate)
        sample_cap(max_generate_samples)
        if generate_every_n_epochs < 1:
            raise LmforgeError(
                f"model.generate_every_n_epochs must be 1 or more, got {generate_every_n_epochs}."
            )
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._data: Seq2SeqDataModule | None = None
        self._texts: dict[str, dict[int, tuple[str, str]]] = {}
        # The validation rows generated on (the first max_generate_samples by row id).
        self._capped_rows: set[int] | None = None
        self.last_test_records: list[dict[str, Any]] | None = None
        # Seconds spent generating, and outputs generated, in the last pass of each stage.
        self.generation_time: dict[str, dict[str, float]] = {}
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, **kwargs)
        if warm_start and self._hf_config is None:
            # The fresh cross-attention is part of no adapter: a checkpoint keeps every weight.
            self.adapter_only = False
            self.strict_loading = True

    # ----- the model ----------------------------------------------------------------------------
    def tokenizer_object(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            from lmforge.data.datamodule import load_tokenizer_for_batching

            hparams: Any = self.hparams
            self._tokenizer = load_tokenizer_for_batching(hparams.tokenizer or hparams.pretrained)
        return self._tokenizer

    def special_token_fields(self) -> dict[str, Any]:
        """Start, end and pad ids from the tokenizer, for a model that lacks them: BERT-style
        vocabularies start with [CLS] and end with [SEP]."""
        tokenizer = self.tokenizer_object()
        start = tokenizer.bos_token_id
        start = start if start is not None else tokenizer.cls_token_id
        end = tokenizer.eos_token_id
        end = end if end is not None else tokenizer.sep_token_id
        return {
            "decoder_start_token_id": start,
            "bos_token_id": start,
            "eos_token_id": end,
            "pad_token_id": tokenizer.pad_token_id,
        }

    def build_model(self) -> PreTrainedModel:
        hparams: Any = self.hparams
        if self._hf_config is not None:
            model = self.load_pretrained()  # the checkpoint's config holds the token ids
        elif hparams.warm_start:
            if hparams.from_config:
                raise LmforgeError(
                    "model.warm_start=true starts from model.pretrained's weights; it does not "
                    "go with model.from_config (a model from scratch)."
                )
            model = self._warm_started()
        else:
            fields = self.special_token_fields() if hparams.from_config else {}
            if hparams.from_config:
                fields["vocab_size"] = len(self.tokenizer_object())
            model = self.load_pretrained(**fields)
            self._fill_missing_token_ids(model)
            prefix = hparams.get("source_prefix")
            if model.config.model_type == "t5" and hparams.pretrained and not prefix:
                log.warning(
                    "model.pretrained=%r is a T5 checkpoint and data.source_prefix is empty: "
                    "T5 was pretrained with task prefixes ('summarize: ', 'translate English "
                    "to German: '); set one, or expect a weaker start.",
                    hparams.pretrained,
                )
        if getattr(model.config, "tie_encoder_decoder", False):
            tie_encoder_decoder(model)
        model.generation_config.update(**self.generate_settings)
        return model

    def _warm_started(self) -> PreTrainedModel:
        from transformers import EncoderDecoderModel

        hparams: Any = self.hparams
        name = hparams.pretrained
        if not name:
            raise LmforgeError("model.warm_start=true needs model.pretrained (an encoder).")
        from lmforge.config.embedded import model_source

        folder = model_source(name)  # an embedded model's name: its local folder
        try:
            model = EncoderDecoderModel.from_encoder_decoder_pretrained(
                folder, folder, tie_encoder_decoder=bool(hparams.tie_encoder_decoder)
            )
        except Exception as err:
            raise LmforgeError(
                f"model.pretrained={name!r} could not warm-start an encoder-decoder (expected a "
                f"BERT-style encoder checkpoint): {err}"
            ) from err
        for key, value in {**(hparams.config_overrides or {})}.items():
            setattr(model.config, key, value)
        fields = self.special_token_fields()
        for key, value in fields.items():
            setattr(model.config, key, value)
            setattr(model.generation_config, key, value)
        model.config.vocab_size = model.config.decoder.vocab_size
        decoder: Any = model.decoder
        fresh = sorted(n for n, _ in decoder.named_parameters() if "crossattention" in n)
        self.start = {
            "from": f"pretrained {name} (encoder and decoder, warm-started)",
            "newly_initialised": [f"decoder.{n}" for n in fresh],
        }
        log.info(
            "Warm-started an encoder-decoder from %s; %d cross-attention tensors start fresh.",
            name,
            len(fresh),
        )
        return model

    def _fill_missing_token_ids(self, model: PreTrainedModel) -> None:
        """A pretrained seq2seq model without a decoder start id gets one from the tokenizer
        (generation cannot start without it)."""
        config: Any = model.config
        if getattr(config, "decoder_start_token_id", None) is not None:
            return
        fields = self.special_token_fields()
        if fields["decoder_start_token_id"] is None:
            raise LmforgeError(
                f"The model {config.model_type} has no decoder_start_token_id and its tokenizer "
                "no BOS or CLS token to take it from: set "
                "model.config_overrides.decoder_start_token_id."
            )
        for key, value in fields.items():
            if getattr(config, key, None) is None:
                setattr(config, key, value)
                setattr(model.generation_config, key, value)

    def export_model(self) -> PreTrainedModel:
        """The base's copy, with encoder-decoder weights shared by `tie_encoder_decoder` given
        copies of their own: transformers 5 cannot save tensors shared that way (it saves
        only the ties it declares), and the saved folder must load anywhere."""
        model = super().export_model()
        if getattr(model.config, "tie_encoder_decoder", False):
            model = copy.deepcopy(model)  # the training module keeps its shared weights
            untie_encoder_decoder(model)
        return model

    # ----- loss ---------------------------------------------------------------------------------
    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        outputs = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
        )
        return outputs.loss, {"loss": outputs.loss}

    # An instance method where the base's is static: it is only ever called on an instance.
    def batch_size_of(self, batch: dict[str, torch.Tensor]) -> int:  # type: ignore[override]
        # The loss is a mean over target tokens: weighting it by them makes val/loss the
        # token-weighted mean of the split.
        return max(int((batch["labels"] != IGNORE_INDEX).sum()), 1)

    # ----- generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Generated text for a batch of sources, with the configured settings (the encoder
        runs once per batch; the decoder keeps its key/value cache)."""
        tokenizer = self.tokenizer_object()
        output = cast(Any, self.model).generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=True,
            **self.generate_settings,
        )
        texts = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def _generates(self, stage: str) -> bool:
        trainer = self.trainer
        if stage == "test":
            return True
        if trainer.sanity_checking:
            return False
        fitting = trainer.state.fn == "fit"
        every = int(self.hparams.get("generate_every_n_epochs") or 1)
        return not fitting or (self.current_epoch + 1) % every == 0

    def attach_data(self, datamodule: TextDataModule) -> None:
        if datamodule is not self._data and isinstance(datamodule, Seq2SeqDataModule):
            self._data, self._texts = datamodule, {}

    def _split_texts(self, stage: str) -> dict[int, tuple[str, str]]:
        """Row id -> the raw source and target text, of a stage's split."""
        split = SPLIT_OF_STAGE[stage]
        if split not in self._texts:
            if self._data is None:
                raise LmforgeError(
                    f"{type(self).__name__} scores generated text against the references of "
                    "its datamodule; run it through a trainer loop given a Seq2SeqDataModule."
                )
            self._texts[split] = self._data.texts(split)
        return self._texts[split]

    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        if stage == "train":
            return nn.ModuleDict()
        return nn.ModuleDict({"texts": GeneratedTexts()})

    def update_metrics(self, stage: Stage, metrics: Any, outputs: Any, batch: dict) -> None:
        if not self._generates(stage):
            return
        gathered: GeneratedTexts = metrics["texts"]
        cap = self.hparams.get("max_generate_samples") if stage == "val" else None
        rows = batch["row"].tolist()
        if cap is not None:
            # The same rows every epoch: the first `cap` of the split (by row id), whatever
            # order the length-sorted batches come in.
            if self._capped_rows is None:  # chosen once, not per batch
                self._capped_rows = set(sorted(self._split_texts(stage))[:cap])
            keep = [i for i, row in enumerate(rows) if row in self._capped_rows]
            if not keep:
                return
        else:
            keep = list(range(len(rows)))
        started = time.perf_counter()
        index = torch.tensor(keep, device=batch["input_ids"].device)
        generated = self.generate_texts(batch["input_ids"][index], batch["attention_mask"][index])
        timing = self.generation_time.setdefault(stage, {"seconds": 0.0, "outputs": 0})
        timing["seconds"] += time.perf_counter() - started
        timing["outputs"] += len(keep)
        texts = self._split_texts(stage)
        pairs = [texts[rows[i]] for i in keep]
        gathered.update([s for s, _ in pairs], generated, [t for _, t in pairs])

    def on_validation_epoch_start(self) -> None:
        self.generation_time.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self.generation_time.pop("test", None)

    def compute_metrics(self, stage: Stage, metrics: Any) -> dict[str, torch.Tensor]:
        gathered: GeneratedTexts = metrics["texts"]
        if not len(gathered):
            return {}
        values = self.text_scores(gathered.predictions, gathered.references)
        tokenizer = self.tokenizer_object()
        lengths = [
            len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in gathered.predictions
        ]
        values["gen_len"] = sum(lengths) / len(lengths)
        if stage == "test":
            self.last_test_records = [
                {
                    "source": s,
                    "reference": r,
                    "generated": p,
                    "score": round(self.example_score(p, r), 4),
                }
                for s, p, r in zip(
                    gathered.sources, gathered.predictions, gathered.references, strict=True
                )
            ]
        gathered.reset()
        return {k: torch.tensor(float(v)) for k, v in values.items()}

    def text_scores(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        """The family's generated-text metrics of predictions against references."""
        raise NotImplementedError

    def example_score(self, prediction: str, reference: str) -> float:
        """One example's score (`example_metric`), for the best and worst test examples."""
        raise NotImplementedError

    def test_records(self) -> list[dict[str, Any]] | None:
        return self.last_test_records

    def evaluation_details(self) -> dict[str, Any]:
        """Generation time of the last validation and test passes, per 100 outputs."""
        return {
            f"{stage}_generation": {
                "outputs": int(t["outputs"]),
                "seconds": round(t["seconds"], 2),
                "seconds_per_100": round(100 * t["seconds"] / max(t["outputs"], 1), 2),
            }
            for stage, t in self.generation_time.items()
        }

    def run_settings(self) -> dict[str, Any]:
        return {"generate": dict(self.generate_settings)}


class SummarizationModule(Seq2SeqModule):
    """Summarization: ROUGE-1/2/L/Lsum F-measures (0-100, Porter stemming)."""

    task_name = "summarization"
    example_metric = "rougeL"

    def example_score(self, prediction: str, reference: str) -> float:
        return 100 * rouge_scores([prediction], [reference])["rougeL"]

    def text_scores(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        lost = unscorable_by_rouge(references)
        if lost:
            log.warning(
                "%d of %d reference texts have no letter or digit ROUGE's tokenizer keeps "
                "(a-z, 0-9): ROUGE scores non-Latin text as empty; use a translation-style "
                "metric (chrF) for such data.",
                lost,
                len(references),
            )
        return {k: 100 * v for k, v in rouge_scores(predictions, references).items()}


class TranslationModule(Seq2SeqModule):
    """Translation: corpus sacreBLEU and chrF (0-100); their signatures are logged once."""

    task_name = "translation"
    example_metric = "chrf"

    def example_score(self, prediction: str, reference: str) -> float:
        return sentence_chrf(prediction, reference)

    _signatures_logged = False

    def text_scores(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        scores = bleu_scores(predictions, references)
        if not self._signatures_logged:
            log.info("sacrebleu signatures: %s", scores["signatures"])
            self._signatures_logged = True
        self.metric_signatures = scores["signatures"]
        return {"bleu": scores["bleu"], "chrf": scores["chrf"]}

    def evaluation_details(self) -> dict[str, Any]:
        details = super().evaluation_details()
        signatures = getattr(self, "metric_signatures", None)
        if signatures:
            details["metric_signatures"] = signatures
        return details
