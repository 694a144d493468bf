"""Fine-tuning strategies: which weights of the pretrained model train (`finetune=` group)."""

from __future__ import annotations

import logging

from torch import nn
from transformers import PreTrainedModel

from lmforge.errors import LmforgeError

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
    found = [m for m in model.base_model.children() if isinstance(m, nn.Embedding)]
    return found or [model.get_input_embeddings()]


def freeze(modules: list[nn.Module]) -> None:
    for module in modules:
        for param in module.parameters():
            param.requires_grad = False


class FinetuneStrategy:
    """Decides which parameters of a freshly built task model train."""

    name = "full"

    def apply(self, model: PreTrainedModel) -> None:
        """Set `requires_grad` on the model's parameters."""

    def describe(self) -> dict:
        return {"name": self.name}


class Full(FinetuneStrategy):
    """Every weight trains."""


class Freeze(FinetuneStrategy):
    """Freeze parts of the pretrained backbone; the task head always trains.

    Args:
        embeddings: freeze the embedding layers.
        layers: freeze the bottom N transformer blocks.
        backbone: freeze the whole backbone (only the head trains: a linear probe).
    """

    name = "freeze"

    def __init__(self, embeddings: bool = False, layers: int = 0, backbone: bool = False):
        if layers < 0:
            raise LmforgeError(f"finetune.layers must be 0 or more, got {layers}.")
        self.embeddings = embeddings
        self.layers = layers
        self.backbone = backbone

    def apply(self, model: PreTrainedModel) -> None:
        if self.backbone:
            freeze([model.base_model])
            return
        if self.embeddings:
            freeze(backbone_embeddings(model))
        if self.layers:
            stack = backbone_layers(model)
            if self.layers > len(stack):
                raise LmforgeError(
                    f"finetune.layers={self.layers}, but the model has {len(stack)} layers."
                )
            freeze(list(stack[: self.layers]))

    def describe(self) -> dict:
        return {
            "name": self.name,
            "embeddings": self.embeddings,
            "layers": self.layers,
            "backbone": self.backbone,
        }


def merged_copy(model: nn.Module) -> PreTrainedModel:
    """A plain Hugging Face model equal to `model`: PEFT adapters merged into a copy."""
    import copy

    from peft import PeftModel

    if not isinstance(model, PeftModel):
        return model
    if not hasattr(model, "merge_and_unload") or model.peft_config["default"].is_prompt_learning:
        raise LmforgeError(
            f"A {model.peft_config['default'].peft_type.value} adapter adds virtual tokens and "
            "cannot be merged into the model's weights; export needs a mergeable adapter "
            "(LoRA, DoRA, IA3) or full/freeze fine-tuning."
        )
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged
