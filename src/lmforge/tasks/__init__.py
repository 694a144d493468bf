"""Task families: one LightningModule per family over the shared `TaskModule` base."""

from lmforge.tasks.base import TaskModule
from lmforge.tasks.language_modeling import CausalLMModule, MaskedLMModule
from lmforge.tasks.text_classification import TextClassificationModule
from lmforge.tasks.token_classification import TokenClassificationModule

# Task name (as recorded in checkpoints) -> module class.
TASKS: dict[str, type[TaskModule]] = {
    module.task_name: module
    for module in (
        TextClassificationModule,
        TokenClassificationModule,
        CausalLMModule,
        MaskedLMModule,
    )
}

__all__ = [
    "TASKS",
    "CausalLMModule",
    "MaskedLMModule",
    "TaskModule",
    "TextClassificationModule",
    "TokenClassificationModule",
]
