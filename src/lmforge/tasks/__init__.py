"""Task families: one LightningModule per family over the shared `TaskModule` base."""

from lmforge.tasks.base import TaskModule
from lmforge.tasks.text_classification import TextClassificationModule

# Task name (as recorded in checkpoints) -> module class.
TASKS: dict[str, type[TaskModule]] = {
    TextClassificationModule.task_name: TextClassificationModule,
}

__all__ = ["TASKS", "TaskModule", "TextClassificationModule"]
