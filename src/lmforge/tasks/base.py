"""The shared base of every task module: backbone loading, optimization, metric plumbing.

A task family subclasses `TaskModule`, builds its Hugging Face model in `build_model`, computes
its loss in `forward_loss`, and declares its metrics in `configure_metrics` /
`update_metrics`. Nothing here knows about labels, tokens or text.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any, ClassVar, cast

import lightning.pytorch as pl
import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel

from lmforge.config.embedded import model_source, source_record
from lmforge.data.splits import Stage
from lmforge.errors import LmforgeError
from lmforge.finetune.optim import OptimizerFactory, SchedulerFactory, parameter_groups
from lmforge.finetune.strategies import FinetuneStrategy, Full
from lmforge.tasks import FAMILIES
from lmforge.tasks.spec import TaskFamily

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import OptimizerLRScheduler

    from lmforge.data.datamodule import TextDataModule

log = logging.getLogger(__name__)


def sample_cap(value: int | None) -> int | None:
    """`model.max_generate_samples` checked: the validation examples a family generates on
    each pass (None: all of them)."""
    if value is not None and value < 1:
        raise LmforgeError(
            f"model.max_generate_samples must be 1 or more (or null: every validation "
            f"example), got {value}."
        )
    return value


class TaskModule(pl.LightningModule):
    """A pretrained Hugging Face model with a task head, trained by Lightning.

    Args:
        pretrained: hub name or local folder of the pretrained model.
        tokenizer: the tokenizer's name or folder (recorded so checkpoints know it).
        optimizer: a partial optimizer (`torch.optim.AdamW(lr=...)` minus the parameters).
        scheduler: a partial `lmforge.finetune.optim.build_scheduler`, or None for a constant lr.
        config_overrides: fields set on the pretrained model's config before loading.
        from_config: build a randomly initialised model from these config fields (with
            `model_type`) instead of loading `pretrained`: training from scratch.
        hf_config: the model's full config as saved in a checkpoint; when given, the model is
            built from it with fresh weights (the checkpoint's state dict fills them), so
            loading a checkpoint needs neither the hub nor the original folder.
        finetune: the strategy choosing which weights train (default: all).
        init_from: an lmforge checkpoint whose weights replace the loaded ones where names and
            shapes match (continued fine-tuning; no optimizer or trainer state is taken).
        gradient_checkpointing: recompute activations in the backward pass (Hugging Face's
            gradient checkpointing, non-reentrant) to save activation memory.

    A distillation teacher is attached after construction (`lmforge.finetune.distillation`), by the
    training recipe; checkpoints never hold it.
    """

    # The family's name (its spec in `lmforge.tasks.FAMILIES`); checkpoints record it.
    task_name: ClassVar[str] = ""
    # One prediction per example (`predicted_labels`): confusion matrix, flipped examples and
    # test_predictions.jsonl are made from them.
    labels_per_example: ClassVar[bool] = False
    # The label names in id order: set by the families with labels (a declaration only, so
    # code that reads it for those families type-checks; no value is set here).
    label_names: list[str]

    def __init__(
        self,
        pretrained: str | None,
        tokenizer: str | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        config_overrides: dict[str, Any] | None = None,
        from_config: dict[str, Any] | None = None,
        hf_config: dict[str, Any] | None = None,
        finetune: FinetuneStrategy | None = None,
        init_from: str | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["optimizer", "scheduler", "hf_config", "finetune", "init_from"]
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self._hf_config = hf_config
        self.init_from = init_from
        # What the model starts from, for before/after records: set by load_pretrained.
        self.start: dict[str, Any] = {}
        self.finetune = finetune or Full()
        self.model: PreTrainedModel = self.build_model()
        if init_from and hf_config is None:
            self._load_weights_from(init_from)
        if gradient_checkpointing:
            self._checkpoint_activations()
        # from_pretrained returns the model in eval mode; training needs dropout on.
        self.model.train()
        # A PEFT wrapper stands in for the Hugging Face model (it forwards its attributes).
        self.model = cast(PreTrainedModel, self.finetune.apply(self.model, self.family))
        # A PEFT checkpoint holds adapters and head only; the frozen base comes from `pretrained`.
        self.adapter_only = self.finetune.adapter_only and not self._built_from_scratch()
        self.strict_loading = not self.adapter_only
        # A `lmforge.finetune.distillation.Distillation` with its teacher loaded, or None.
        self.distill: Any = None
        # Set to {} by `comparison.run_test_with_predictions`: the test loop then keeps each batch's
        # predicted labels (batch index -> labels), so one pass gives metrics and predictions.
        self.recorded_test_predictions: dict[int, list[Any] | None] | None = None
        # A separate metric set per stage, so validation and test never share state.
        self.train_metrics = self.configure_metrics("train")
        self.val_metrics = self.configure_metrics("val")
        self.test_metrics = self.configure_metrics("test")

    def _checkpoint_activations(self) -> None:
        """Turn on the model's gradient checkpointing (non-reentrant: it needs no input that
        requires grad, so it works under frozen embeddings and PEFT adapters too)."""
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            raise LmforgeError(
                f"model.gradient_checkpointing=true, but the {self.model.config.model_type} model "
                f"({type(self.model).__name__}) does not support gradient checkpointing in "
                "transformers; set it to false."
            )
        self.model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    @property
    def family(self) -> TaskFamily:
        """The spec of this module's task family."""
        return FAMILIES[self.task_name]

    # ----- hooks for task modules ---------------------------------------------------------------
    def build_model(self) -> PreTrainedModel:
        """Create the Hugging Face model (usually through `load_pretrained`)."""
        raise NotImplementedError

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """Run the model on a batch; return the loss and what `update_metrics` needs."""
        raise NotImplementedError

    # A metric set is an nn.ModuleDict of torchmetrics metrics; the hooks that read it take
    # `Any`, since ModuleDict types its items as plain modules (no update/compute/reset).
    def configure_metrics(self, stage: str) -> nn.ModuleDict:
        """The metric objects of one stage (a separate set per stage)."""
        return nn.ModuleDict()

    def update_metrics(self, stage: Stage, metrics: Any, outputs: Any, batch: dict) -> None:
        """Feed one batch's outputs to the metrics of `stage` (`metrics`: its metric set)."""

    def compute_metrics(self, stage: Stage, metrics: Any) -> dict[str, torch.Tensor]:
        """Compute (and reset) the metrics of `stage`; keys without the stage prefix."""
        return {}

    def predicted_labels(self, outputs: Any) -> list[Any] | None:
        """The predicted label id of each example from `forward_loss`'s outputs, for tasks with
        one label per example (multi-label: the list of ids); None for the others."""
        return None

    # What the `score` of a test record measures (comparison.md's best and worst examples).
    example_metric: ClassVar[str] = ""

    def test_records(self) -> list[dict[str, Any]] | None:
        """The last test pass's records for test_predictions.jsonl, for families whose
        predictions are not labels (generated text); None for the others."""
        return None

    def evaluation_details(self) -> dict[str, Any]:
        """Figures of the last evaluation passes for metrics.json (e.g. generation time)."""
        return {}

    def run_settings(self) -> dict[str, Any]:
        """What prediction and export need to know of this model beyond its weights (label
        names, thresholds), saved in an export's lmforge.json."""
        return {}

    def export_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model inputs of an export's example and parity checks made of a batch of
        encoded texts, one row per text (as they are for most families)."""
        return batch

    def baseline_problem(self, name: str) -> str | None:
        """Why the baseline `name` (one the family lists) cannot run for this model, or None."""
        return None

    def data_settings(self) -> dict[str, Any]:
        """Data config values that must match this model for data to be encoded as in its
        training (label names in id order): the inverse of the datamodule's `model_inputs`."""
        return {}

    def stage_metrics(self, stage: str) -> nn.ModuleDict:
        """The metric set of `train`, `val` or `test`."""
        return getattr(self, f"{stage}_metrics")

    # ----- model loading ------------------------------------------------------------------------
    def load_pretrained(self, **config_fields: Any) -> PreTrainedModel:
        """Load `pretrained` through the family's Auto class, or rebuild it from a checkpoint's
        config (or `from_config`)."""
        auto_class = self.family.auto_model_class(dict(self.hparams))
        if self._hf_config is not None:
            config = AutoConfig.for_model(**{**self._hf_config, **config_fields})
            self.start = {"from": "checkpoint"}
            return auto_class.from_config(config)
        hparams: Any = self.hparams  # an AttributeDict: its keys read as attributes
        from_config = hparams.get("from_config")
        if from_config:
            fields = {**from_config, **(hparams.config_overrides or {}), **config_fields}
            if "model_type" not in fields:
                raise LmforgeError("model.from_config needs a model_type (e.g. gpt2).")
            try:
                config = AutoConfig.for_model(**fields)
            except Exception as err:
                raise LmforgeError(f"model.from_config could not build a config: {err}") from err
            self.start = {"from": "random initialisation (model.from_config)", "fresh": True}
            return auto_class.from_config(config)
        name = hparams.pretrained
        if not name:
            raise LmforgeError("Set model.pretrained (hub name or folder) or model.from_config.")
        overrides = dict(hparams.config_overrides or {})
        folder = model_source(name)  # an embedded model's name: its local folder
        try:
            config = AutoConfig.from_pretrained(folder)
        except Exception as err:
            raise LmforgeError(
                f"model.pretrained={name!r} is not a model this run can load (expected a hub "
                f"name or a folder with config.json and weights): {err}"
            ) from err
        for key, value in {**overrides, **config_fields}.items():
            if key in overrides and not hasattr(config, key):
                raise LmforgeError(
                    f"model.config_overrides.{key}: the {config.model_type} config has no field "
                    f"{key!r}."
                )
            setattr(config, key, value)
        # A quantized load (finetune=qlora) refuses here where it cannot run.
        load_options = self.finetune.load_options(config, auto_class)
        try:
            model, info = auto_class.from_pretrained(
                folder, config=config, output_loading_info=True, **load_options
            )
        except Exception as err:
            raise LmforgeError(
                f"model.pretrained={name!r} could not be loaded as {auto_class.__name__}: {err}"
            ) from err
        missing = sorted(info.get("missing_keys", []))
        self.start = {"from": f"pretrained {name}", "newly_initialised": missing}
        converted = source_record(folder)
        if converted is not None:  # converted from a GGUF file: say which and how
            self.start["converted_from"] = {k: v for k, v in converted.items() if k != "files"}
        if missing:
            log.info("Newly initialised (not in %s): %s", name, ", ".join(missing))
        return model

    def _load_weights_from(self, path: str) -> None:
        """Copy the model weights of another run's checkpoint where names and shapes match."""
        from lmforge.runtime.checkpoints import read_checkpoint

        state = {
            k.removeprefix("model."): v
            for k, v in read_checkpoint(path)["state_dict"].items()
            if k.startswith("model.")
        }
        own = self.model.state_dict()
        taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not taken:
            raise LmforgeError(
                f"model.init_from={path!r}: no weight of that checkpoint fits this model "
                f"({type(self.model).__name__}); was it trained with another architecture?"
            )
        self.model.load_state_dict(taken, strict=False)
        fresh = sorted(set(own) - set(taken))
        self.start = {"from": f"checkpoint {path}", "newly_initialised": fresh}
        log.info("Initialised %d of %d tensors from %s", len(taken), len(own), path)
        if fresh:
            log.info("Not in %s (or another shape), left as loaded: %s", path, ", ".join(fresh))

    @staticmethod
    def label_fields(label_names: list[str], classifier_dropout: float | None) -> dict[str, Any]:
        """Config fields of a classification-style head over `label_names`."""
        fields: dict[str, Any] = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {name: i for i, name in enumerate(label_names)},
        }
        if classifier_dropout is not None:
            fields["classifier_dropout"] = classifier_dropout
        return fields

    def export_model(self) -> PreTrainedModel:
        """A plain Hugging Face model of the current weights, for saving and export: a copy with
        any adapter merged into the weights (the training module is left as it is)."""
        from lmforge.finetune.strategies import merged_copy

        return merged_copy(self.model)

    def _built_from_scratch(self) -> bool:
        return self._hf_config is not None or bool(self.hparams.get("from_config"))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lmforge"] = {
            "task": self.task_name,
            # Without the quantization settings of a 4-bit base (finetune=qlora): the strategy
            # quantizes again on load, and their enum would not pass torch's safe loading.
            "hf_config": {
                k: v for k, v in self.model.config.to_dict().items() if k != "quantization_config"
            },
            "finetune": self.finetune.describe(),
            "adapter_only": self.adapter_only,
            "init_from": self.init_from,
        }
        if self.adapter_only:
            trainable = {n for n, p in self.named_parameters() if p.requires_grad}
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if k in trainable}

    # ----- distillation ---------------------------------------------------------------------------
    def supports_distillation(self) -> bool:
        """Whether `forward_loss` returns logits a teacher's can be compared with."""
        return self.family.distillation

    def distillation_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Where the distillation term counts (None: every example)."""
        return None

    # ----- parameters and optimization -------------------------------------------------------
    def parameter_counts(self) -> dict[str, float]:
        """Trainable and total parameter counts, and the trainable share in percent."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {
            "trainable": trainable,
            "total": total,
            "trainable_percent": round(100 * trainable / max(total, 1), 4),
        }

    def configure_optimizers(self) -> OptimizerLRScheduler:
        if self.optimizer_factory is None:
            raise LmforgeError("No optimizer configured: set the `optimizer` config group.")
        factory = self.optimizer_factory
        options = dict(getattr(factory, "keywords", {}))
        # layer_decay is lmforge's option, not the torch optimizer's.
        layer_decay = options.pop("layer_decay", None)
        if isinstance(factory, functools.partial):
            factory = functools.partial(factory.func, *factory.args, **options)
        if options.get("fused") and self._clips_scaled_gradients():
            # Under float16 a fused optimizer unscales inside its step, after clipping would have
            # seen the scaled gradients; Lightning refuses the pair.
            factory = functools.partial(factory, fused=False)
            log.info("Fused optimizer steps are off: gradient clipping under float16 scaling.")
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise LmforgeError(f"optimizer.layer_decay must be in (0, 1], got {layer_decay}.")
        depth_of, depth = self._layer_depths() if layer_decay else (None, 0)
        groups = parameter_groups(
            self.named_parameters(),
            options.get("lr"),
            layer_decay,
            depth_of,
            depth,
            pending=self.finetune.pending_parameters(),
        )
        optimizer = factory(groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(
            optimizer, num_training_steps=int(self.trainer.estimated_stepping_batches)
        )
        # Stepped once per optimizer step, not per epoch.
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _layer_depths(self) -> tuple[Any, int]:
        """Depth of each parameter for layer-wise lr decay: embeddings 0, transformer block i
        at i + 1, everything else (the head) at the top."""
        from lmforge.finetune.strategies import backbone_embeddings, backbone_layers

        stack = backbone_layers(self.model)
        depth = len(stack) + 1
        levels: dict[int, int] = {}
        for module in backbone_embeddings(self.model):
            levels.update({id(p): 0 for p in module.parameters()})
        for index, block in enumerate(stack):
            levels.update({id(p): index + 1 for p in block.parameters()})
        return (lambda param: levels.get(id(param), depth)), depth

    def _clips_scaled_gradients(self) -> bool:
        """Gradients are clipped and a float16 grad scaler multiplies them."""
        trainer = self.trainer
        return bool(trainer.gradient_clip_val) and str(trainer.precision).startswith("16")

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, except under bfloat16 autocast with a fused optimizer.

        Lightning's mixed-precision plugin refuses to clip for any optimizer that unscales
        inside its step (fused AdamW), although only float16 scales gradients; under bf16 the
        gradients are plain float32, so they are clipped here directly and the fused step,
        much faster on a CPU, stays on.
        """
        unscaled = getattr(self.trainer.precision_plugin, "scaler", None) is None
        if (
            gradient_clip_val
            and unscaled
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # ----- loops ----------------------------------------------------------------------------------
    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs)

    def setup(self, stage: str) -> None:
        # Lightning gives the trainer the loop's datamodule (None for bare dataloaders).
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None:
            self.attach_data(datamodule)

    def attach_data(self, datamodule: TextDataModule) -> None:
        """Hook: the datamodule a trainer loop (fit, validate, test) runs this module on, told
        when the loop sets up. A family whose metrics need more of a split than its batches
        (reference texts, contexts, a reference model's log-probabilities) keeps what it
        needs here; the shared base needs nothing."""

    def on_fit_start(self) -> None:
        if self.finetune.pending_parameters() and self.trainer.world_size > 1:
            # DDP registers its gradient hooks once, on the parameters trainable at the start.
            raise LmforgeError(
                "finetune.unfreeze_every (gradual unfreezing) needs a single-process run; "
                f"this trainer runs {self.trainer.world_size} processes."
            )
        if self.distill is not None:
            self.distill.teacher.to(self.device)

    def on_train_epoch_start(self) -> None:
        self.finetune.on_train_epoch_start(self.current_epoch)

    @staticmethod
    def batch_size_of(batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, outputs = self.forward_loss(batch)
        if self.distill is not None:
            loss = self.distill.combined_loss(self, loss, outputs, batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=self.batch_size_of(batch),
        )
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: Stage) -> Any:
        loss, outputs = self.forward_loss(batch)
        self.update_metrics(stage, self.stage_metrics(stage), outputs, batch)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=self.batch_size_of(batch),
            sync_dist=True,
        )
        return outputs

    def _log_epoch_metrics(self, stage: Stage) -> None:
        values = self.compute_metrics(stage, self.stage_metrics(stage))
        # torchmetrics already reduced the values across processes.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        outputs = self._eval_step(batch, "test")
        if self.recorded_test_predictions is not None:
            self.recorded_test_predictions[batch_idx] = self.predicted_labels(outputs)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")
