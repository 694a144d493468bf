"""Fine-tuning strategies: which weights of the pretrained model train (`finetune=` group)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, cast

from torch import nn
from transformers import PreTrainedModel

from lmforge.config.compatibility import check_strategy_supported
from lmforge.errors import LmforgeError
from lmforge.tasks.spec import TaskFamily

if TYPE_CHECKING:
    from peft import PeftConfig

log = logging.getLogger(__name__)


def backbone_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The stack of transformer blocks of the backbone (BERT `encoder.layer`, GPT-2 `h`, ...):
    the first ModuleList under `base_model` with one entry per hidden layer."""
    expected = getattr(model.config, "num_hidden_layers", None)
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and (expected is None or len(module) == expected):
            return module
    raise LmforgeError(
        f"finetune: could not find the layer stack of {type(model).__name__} to freeze layers of."
    )


def backbone_embeddings(model: PreTrainedModel) -> list[nn.Module]:
    """The embedding modules of the backbone (tokens, positions, token types)."""
    embeddings = getattr(model.base_model, "embeddings", None)
    if isinstance(embeddings, nn.Module):
        return [embeddings]
    found: list[nn.Module] = [m for m in model.base_model.children() if isinstance(m, nn.Embedding)]
    return found or [model.get_input_embeddings()]


def freeze(modules: list[nn.Module]) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad = False


class FinetuneStrategy:
    """Decides which parameters of a freshly built task model train.

    `apply` returns the model to train: the same object for full and frozen fine-tuning, a
    PEFT wrapper for parameter-efficient methods.
    """

    name = "full"
    # Checkpoints hold only the trainable weights (adapters and head), not the frozen base.
    adapter_only = False

    def apply(self, model: PreTrainedModel, family: TaskFamily) -> nn.Module:
        """Set `requires_grad` on the model's parameters; return the model to train."""
        return model

    def on_train_epoch_start(self, epoch: int) -> None:
        """Called at the start of every training epoch (gradual unfreezing)."""

    def pending_parameters(self) -> list[nn.Parameter]:
        """Frozen now, unfrozen later in the run: the optimizer holds them from the start."""
        return []

    def options(self) -> dict[str, Any]:
        """The constructor arguments, so a checkpoint can rebuild the strategy."""
        return {}

    def load_options(self, config: Any, auto_class: Any) -> dict[str, Any]:
        """Keyword arguments of the pretrained model's `from_pretrained` (a quantized load),
        for a model of `config` built by `auto_class`."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options()}


class Full(FinetuneStrategy):
    """Every weight trains."""


class Freeze(FinetuneStrategy):
    """Freeze parts of the pretrained backbone; the task head always trains.

    Args:
        embeddings: freeze the embedding layers.
        layers: freeze the bottom N transformer blocks.
        backbone: freeze the whole backbone (only the head trains: a linear probe).
        unfreeze_every: gradual unfreezing: every this many epochs, unfreeze the next frozen
            part from the top down (top block first, embeddings last); 0 keeps them frozen.
    """

    name = "freeze"

    def __init__(
        self,
        embeddings: bool = False,
        layers: int = 0,
        backbone: bool = False,
        unfreeze_every: int = 0,
    ):
        if layers < 0:
            raise LmforgeError(f"finetune.layers must be 0 or more, got {layers}.")
        if unfreeze_every < 0:
            raise LmforgeError(f"finetune.unfreeze_every must be 0 or more, got {unfreeze_every}.")
        self.embeddings = embeddings
        self.layers = layers
        self.backbone = backbone
        self.unfreeze_every = unfreeze_every
        # The frozen parts, top first: the order gradual unfreezing releases them in.
        self._frozen_parts: list[list[nn.Parameter]] = []

    def apply(self, model: PreTrainedModel, family: TaskFamily) -> nn.Module:
        parts: list[list[nn.Module]] = []  # bottom first
        if self.backbone:
            stack = backbone_layers(model)
            embeddings = backbone_embeddings(model)
            inside = {id(p) for m in [*stack, *embeddings] for p in m.parameters()}
            # Pooler, final norm: what sits above the blocks unfreezes with the top block.
            rest = [p for p in model.base_model.parameters() if id(p) not in inside]
            parts = [embeddings, *[[block] for block in stack]]
            self._frozen_parts = [[p for m in part for p in m.parameters()] for part in parts]
            self._frozen_parts[-1].extend(rest)
        else:
            if self.embeddings:
                parts.append(backbone_embeddings(model))
            if self.layers:
                stack = backbone_layers(model)
                if self.layers > len(stack):
                    raise LmforgeError(
                        f"finetune.layers={self.layers}, but the model has {len(stack)} layers."
                    )
                parts.extend([block] for block in stack[: self.layers])
            self._frozen_parts = [[p for m in part for p in m.parameters()] for part in parts]
        self._frozen_parts.reverse()
        self._set_frozen(released=0)
        return model

    def _set_frozen(self, released: int) -> None:
        for index, part in enumerate(self._frozen_parts):
            for param in part:
                param.requires_grad = index < released

    def on_train_epoch_start(self, epoch: int) -> None:
        if self.unfreeze_every:
            # A function of the epoch alone, so a resumed run is in the same state.
            released = min(epoch // self.unfreeze_every, len(self._frozen_parts))
            self._set_frozen(released)
            if epoch % self.unfreeze_every == 0 and released:
                log.info("Epoch %d: %d frozen parts released from the top", epoch, released)

    def pending_parameters(self) -> list[nn.Parameter]:
        if not self.unfreeze_every:
            return []
        return [p for part in self._frozen_parts for p in part]

    def options(self) -> dict[str, Any]:
        return {
            "embeddings": self.embeddings,
            "layers": self.layers,
            "backbone": self.backbone,
            "unfreeze_every": self.unfreeze_every,
        }


def head_parameters(model: PreTrainedModel) -> dict[str, nn.Parameter]:
    """The task head's own parameters: everything outside the backbone that is not tied to a
    backbone weight (a masked-LM decoder shares the word embeddings; its transform does not)."""
    backbone = {id(p) for p in model.base_model.parameters()}
    return {
        name: param
        for name, param in model.named_parameters(remove_duplicate=False)
        if not name.startswith(f"{model.base_model_prefix}.") and id(param) not in backbone
    }


class PeftStrategy(FinetuneStrategy):
    """A parameter-efficient method of the `peft` library; the task head stays trainable."""

    adapter_only = True
    prompt_learning = False

    def peft_config(self, model: PreTrainedModel, task_type: str | None) -> PeftConfig:
        raise NotImplementedError

    def apply(self, model: PreTrainedModel, family: TaskFamily) -> nn.Module:
        from peft import get_peft_model

        if self.prompt_learning and not family.prompt_learning:
            raise LmforgeError(
                f"finetune={self.name} is not supported for {family.name}: its virtual tokens "
                "shift every position, so per-token labels would no longer line up. Use "
                "finetune=lora, ia3, freeze or full."
            )
        head = head_parameters(model)
        wrapped_as_task = self.prompt_learning or family.peft_task_wrapper
        config = self.peft_config(model, family.peft_task_type if wrapped_as_task else None)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as err:
            raise LmforgeError(
                f"finetune={self.name}: peft could not wrap {type(model).__name__}: {err} "
                f"Linear modules of this model: {', '.join(linear_module_names(model))}."
            ) from err
        if not self.prompt_learning:
            # Prompt-learning wrappers keep the head trainable themselves (modules_to_save).
            for param in head.values():
                param.requires_grad = True
        return wrapped

    def head_exclusions(self, model: PreTrainedModel) -> list[str]:
        names = {n.rsplit(".", 1)[0] for n in head_parameters(model)}
        return sorted(names)


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct short names of the model's linear layers (what target_modules can name)."""
    from transformers.pytorch_utils import Conv1D

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D)
    }
    return sorted(names)


def _target_modules(value: Any) -> Any:
    """`null` (peft's table per architecture), `all-linear`, or a list of module names."""
    if value is None or isinstance(value, str):
        return value
    return list(value)


class Lora(PeftStrategy):
    """LoRA: a trainable low-rank update `B @ A * alpha / r` beside frozen linear weights.

    Args:
        r: rank of the update.
        alpha: scale of the update (`alpha / r` multiplies it).
        dropout: dropout on the LoRA input.
        target_modules: module names to adapt; null takes peft's table for the architecture
            (BERT: query, value; GPT-2: c_attn), `all-linear` every linear layer but the head.
        use_dora: DoRA (weight-decomposed LoRA): magnitude and direction trained apart.
        bias: which biases train: none, all or lora_only.
    """

    name = "lora"

    def __init__(
        self,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.1,
        target_modules: Any = None,
        use_dora: bool = False,
        bias: Literal["none", "all", "lora_only"] = "none",
    ):
        if r < 1:
            raise LmforgeError(f"finetune.r (the LoRA rank) must be 1 or more, got {r}.")
        if not 0 <= dropout < 1:
            raise LmforgeError(f"finetune.dropout must be in [0, 1), got {dropout}.")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules = _target_modules(target_modules)
        self.use_dora, self.bias = use_dora, bias
        if use_dora:
            self.name = "dora"

    def peft_config(self, model: PreTrainedModel, task_type: str | None) -> PeftConfig:
        from peft import LoraConfig

        return LoraConfig(
            task_type=task_type,
            r=self.r,
            # peft declares an int; any number scales the update (alpha / r).
            lora_alpha=self.alpha,  # type: ignore[arg-type]
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            exclude_modules=self.head_exclusions(model) or None,
            use_dora=self.use_dora,
            bias=self.bias,
        )

    def options(self) -> dict[str, Any]:
        return {
            "r": self.r,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "target_modules": self.target_modules,
            "use_dora": self.use_dora,
            "bias": self.bias,
        }


QUANT_TYPES = ("nf4", "fp4")
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


class QLora(Lora):
    """QLoRA: LoRA adapters over a base model loaded in 4 bits (bitsandbytes), so the frozen
    weights take a quarter of their bfloat16 memory; the adapters and the head train in full
    precision, and checkpoints hold only them (the base is loaded and quantized again from
    `model.pretrained`).

    Args (besides LoRA's):
        quant_type: nf4 (NormalFloat, for normally distributed weights) or fp4.
        double_quant: quantize the quantization constants too (about 0.4 bits per weight less).
        compute_dtype: the dtype the 4-bit weights are dequantized to for each matmul.
    """

    name = "qlora"

    def __init__(
        self,
        quant_type: str = "nf4",
        double_quant: bool = True,
        compute_dtype: str = "bfloat16",
        **lora: Any,
    ) -> None:
        super().__init__(**lora)
        self.name = "qlora"  # with use_dora too: the record must rebuild this class
        if quant_type not in QUANT_TYPES:
            raise LmforgeError(f"finetune.quant_type={quant_type!r}; expected nf4 or fp4.")
        if compute_dtype not in COMPUTE_DTYPES:
            raise LmforgeError(
                f"finetune.compute_dtype={compute_dtype!r}; expected one of "
                f"{', '.join(COMPUTE_DTYPES)}."
            )
        self.quant_type, self.double_quant, self.compute_dtype = (
            quant_type,
            double_quant,
            compute_dtype,
        )

    def load_options(self, config: Any, auto_class: Any) -> dict[str, Any]:
        import torch
        from transformers import BitsAndBytesConfig

        device = "cuda" if torch.cuda.is_available() else "cpu"
        quantization_problem(device)
        # The task head stays in full precision (it trains); found on a weightless copy.
        with torch.device("meta"):
            skeleton = auto_class.from_config(config)
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=self.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
                llm_int8_skip_modules=self.head_exclusions(skeleton) or None,
            ),
            "device_map": {"": torch.cuda.current_device() if device == "cuda" else "cpu"},
        }

    def apply(self, model: PreTrainedModel, family: TaskFamily) -> nn.Module:
        from peft import prepare_model_for_kbit_training

        if not getattr(model, "is_loaded_in_4bit", False):
            raise LmforgeError(
                "finetune=qlora needs a pretrained model loaded in 4 bits (model.pretrained); "
                "a model built from model.from_config or from a full checkpoint is not "
                "quantized. Use finetune=lora for it."
            )
        # Layer norms and the head in float32, inputs that carry gradients to the adapters.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for module in model.modules():
            # bitsandbytes (0.50) repacks 4-bit weights for CPU inference at the first
            # eval-mode forward on CPUs with AVX512-BF16, and never back: training after a
            # validation pass then fails. Training runs alternate the two, so no repacking.
            if hasattr(module, "support_avx512bf16_for_cpu"):
                setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010
        return super().apply(model, family)

    def options(self) -> dict[str, Any]:
        return {
            **super().options(),
            "quant_type": self.quant_type,
            "double_quant": self.double_quant,
            "compute_dtype": self.compute_dtype,
        }


def quantization_problem(device: str) -> None:
    """Refuse 4-bit loading where bitsandbytes is missing or cannot quantize on `device` (a
    probe: quantizing a small matrix there)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise LmforgeError(
            "finetune=qlora loads the base model in 4 bits through bitsandbytes, which is not "
            "installed: pip install 'lmforge[qlora]' (or pip install bitsandbytes)."
        )
    import bitsandbytes
    import torch

    try:
        bitsandbytes.functional.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
    except Exception as err:
        raise LmforgeError(
            f"finetune=qlora: bitsandbytes {bitsandbytes.__version__} cannot quantize to 4 bits "
            f"on this {device.upper()} ({type(err).__name__}: {str(err).strip()[:200]}). "
            "Use a CUDA GPU or a bitsandbytes release with a CPU backend, or finetune=lora."
        ) from err
    if device == "cpu" and importlib.util.find_spec("kernels") is None:
        log.info(
            "finetune=qlora on the CPU: bitsandbytes %s runs its built-in 4-bit matmuls; its "
            "faster CPU kernels come from the `kernels` package, which fetches them from the "
            "Hugging Face Hub (not installed).",
            bitsandbytes.__version__,
        )


class IA3(PeftStrategy):
    """IA3: learned vectors that rescale keys, values and feed-forward activations.

    Args:
        target_modules: module names to rescale; null takes peft's table per architecture.
        feedforward_modules: which of them are feed-forward layers (scaled on their input).
    """

    name = "ia3"

    def __init__(self, target_modules: Any = None, feedforward_modules: Any = None):
        self.target_modules = _target_modules(target_modules)
        self.feedforward_modules = _target_modules(feedforward_modules)

    def peft_config(self, model: PreTrainedModel, task_type: str | None) -> PeftConfig:
        from peft import IA3Config

        return IA3Config(
            task_type=task_type,
            target_modules=self.target_modules,
            feedforward_modules=self.feedforward_modules,
            exclude_modules=self.head_exclusions(model) or None,
        )

    def options(self) -> dict[str, Any]:
        return {
            "target_modules": self.target_modules,
            "feedforward_modules": self.feedforward_modules,
        }


class PromptTuning(PeftStrategy):
    """Prompt tuning: trainable virtual-token embeddings prepended to every input.

    Args:
        num_virtual_tokens: how many virtual tokens are prepended.
    """

    name = "prompt_tuning"
    prompt_learning = True

    def __init__(self, num_virtual_tokens: int = 20):
        if num_virtual_tokens < 1:
            raise LmforgeError(
                f"finetune.num_virtual_tokens must be 1 or more, got {num_virtual_tokens}."
            )
        self.num_virtual_tokens = num_virtual_tokens

    def peft_config(self, model: PreTrainedModel, task_type: str | None) -> PeftConfig:
        from peft import PromptTuningConfig

        return PromptTuningConfig(task_type=task_type, num_virtual_tokens=self.num_virtual_tokens)

    def options(self) -> dict[str, Any]:
        return {"num_virtual_tokens": self.num_virtual_tokens}


class PrefixTuning(PromptTuning):
    """Prefix tuning: trainable key/value prefixes in every attention layer."""

    name = "prefix_tuning"

    def peft_config(self, model: PreTrainedModel, task_type: str | None) -> PeftConfig:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=self.num_virtual_tokens)

    def apply(self, model: PreTrainedModel, family: TaskFamily) -> nn.Module:
        check_strategy_supported(self.name)
        return super().apply(model, family)


STRATEGIES: dict[str, type[FinetuneStrategy]] = {
    "full": Full,
    "freeze": Freeze,
    "lora": Lora,
    "dora": Lora,
    "qlora": QLora,
    "ia3": IA3,
    "prompt_tuning": PromptTuning,
    "prefix_tuning": PrefixTuning,
}


def strategy_from_record(record: dict[str, Any] | None) -> FinetuneStrategy:
    """Rebuild a strategy from its `describe()` record (saved in checkpoints)."""
    if not record:
        return Full()
    options = {k: v for k, v in record.items() if k != "name"}
    return STRATEGIES[record["name"]](**options)


def merged_copy(model: nn.Module) -> PreTrainedModel:
    """A plain Hugging Face model equal to `model`: PEFT adapters merged into a copy."""
    import copy

    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return cast(PreTrainedModel, model)  # no adapter: the Hugging Face model itself
    if not hasattr(model, "merge_and_unload") or model.peft_config["default"].is_prompt_learning:
        peft_type: Any = model.peft_config["default"].peft_type  # a PeftType once configured
        raise LmforgeError(
            f"A {peft_type.value} adapter adds virtual tokens and "
            "cannot be merged into the model's weights; export needs a mergeable adapter "
            "(LoRA, DoRA, IA3) or full/freeze fine-tuning."
        )
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged
