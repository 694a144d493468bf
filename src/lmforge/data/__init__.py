"""Data sources, the shared datamodule and the task datamodules."""

from lmforge.data.datamodule import TextDataModule, prepare_datamodule
from lmforge.data.language_modeling import LanguageModelingDataModule
from lmforge.data.text_classification import TextClassificationDataModule
from lmforge.data.token_classification import TokenClassificationDataModule

__all__ = [
    "LanguageModelingDataModule",
    "TextClassificationDataModule",
    "TextDataModule",
    "TokenClassificationDataModule",
    "prepare_datamodule",
]
