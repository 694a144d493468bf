"""Data sources, the shared datamodule and the task datamodules."""

from lmforge.data.datamodule import TextDataModule
from lmforge.data.text_classification import TextClassificationDataModule

__all__ = ["TextClassificationDataModule", "TextDataModule"]
