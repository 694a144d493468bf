"""Loading tokenizers, kept apart from the data modules so config checks can read a tokenizer
without importing Lightning."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmforge.errors import LmforgeError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained` with an error that names the config key."""
    from transformers import AutoTokenizer

    from lmforge.config.embedded import model_source

    source = model_source(name_or_path)  # an embedded model's name: its local folder
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:
        raise LmforgeError(
            f"model.tokenizer={name_or_path!r} could not be loaded as a tokenizer (expected a hub "
            f"name or a folder with tokenizer files): {err}"
        ) from err
