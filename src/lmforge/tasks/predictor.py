"""The shared base of the families' predictors: inputs in, prediction records out.

`lmforge-predict` reads the inputs and writes the records; a family's predictor (named in its
spec) turns a batch of inputs into records for a Hugging Face model and tokenizer, whether the
model came from a checkpoint or from an exported folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError


@dataclass
class InputText:
    """One input: its text (a word list for rows that hold one), the second text of a sentence
    pair, and where it came from (for error messages)."""

    text: str | list[str]
    # The second text of a pair, or a question's choices (multiple choice).
    text_pair: str | list[str] | None = None
    where: str = "input"


class Predictor:
    """Predicts with one family's model.

    Args:
        model: the Hugging Face model (or a peft model around one), on `device`, in eval mode.
        tokenizer: the run's tokenizer (it pads).
        settings: the run's settings (`max_length`, `text_column`, `labels`, ...), as a
            checkpoint's run or an export's lmforge.json gives them.
        options: the prediction command's options (`lmforge-predict`'s config).
        device: where the model is.
    """

    # Whether a table row's text may be a list of words (read as such, not as one string).
    reads_words = False
    # Whether it predicts from the exported outputs of one forward pass (an ONNX graph can
    # stand in for the model); a predictor that generates token by token does not.
    runs_on_graphs = True

    def __init__(
        self, model: Any, tokenizer: Any, settings: Mapping[str, Any], options: Any, device: Any
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = dict(settings)
        self.options = options
        self.device = device
        self.max_length: int = int(self.settings["max_length"])

    @property
    def text_column(self) -> str:
        return str(self.settings.get("text_column") or "text")

    @property
    def text_pair_column(self) -> str | None:
        return self.settings.get("text_pair_column")

    @property
    def label_names(self) -> list[str]:
        return list(self.settings.get("labels") or [])

    def pair_value(self, value: Any, where: str) -> Any:
        """The second input of a pair as this model reads it (a text here; a family whose
        second input is a list, such as a question's choices, parses and checks it)."""
        if isinstance(value, list | tuple | dict):
            raise LmforgeError(
                f"{where}: the {self.text_pair_column!r} of this model is one text, not "
                f"a {type(value).__name__}."
            )
        return str(value)

    def check(self, inputs: list[InputText]) -> None:
        """Refuse inputs this model cannot predict on, before any prediction runs."""

    def predict(self, batch: list[InputText]) -> list[dict[str, Any]]:
        """One record per input."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: what this predictor reads."""
        return f"max_length {self.max_length}, text column {self.text_column!r}"
