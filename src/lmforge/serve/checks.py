"""What `lmforge-serve` accepts: the request body checked field by field (in the front end,
before any model), and a checked request turned into a predictor's inputs (in a worker).

Kept apart from LitServe (`lmforge.serve.api`) and from the command (`lmforge.serve.server`):
both use it, and neither needs the other to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError

API_PATH = "/predict"


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_batch_size: int
    max_text_chars: int


class RequestRefused(Exception):
    """A request answered with a 4xx `status` and `message`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Decoded:
    """A request's inputs, and whether they came as a list."""

    inputs: list[Any]
    many: bool


@dataclass
class Refusal:
    """The answer to a request the model refused: its status and message."""

    status: int
    message: str


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def read_inputs(payload: Any, limits: Limits) -> Decoded:
    """The inputs of a decoded JSON request body (each a text or an object of texts), checked;
    raises RequestRefused naming the field at fault."""
    example = '{"inputs": "a text"} or {"inputs": ["one", "two"]}'
    if not isinstance(payload, dict):
        raise RequestRefused(
            422,
            f"The request body must be a JSON object such as {example}; got {_json_type(payload)}.",
        )
    unknown = sorted(set(payload) - {"inputs"})
    if unknown:
        raise RequestRefused(
            422,
            f"Unknown field(s) {', '.join(map(repr, unknown))}: the request body takes "
            "'inputs' only.",
        )
    if "inputs" not in payload:
        raise RequestRefused(422, f"The request body has no 'inputs' field; send {example}.")
    value = payload["inputs"]
    many = isinstance(value, list)
    items = value if many else [value]
    if not items:
        raise RequestRefused(422, "'inputs' is an empty list; send at least one input.")
    if len(items) > limits.max_batch_size:
        raise RequestRefused(
            413,
            f"'inputs' holds {len(items)} inputs, more than serve.max_batch_size="
            f"{limits.max_batch_size}; send at most {limits.max_batch_size} per request.",
        )
    for index, item in enumerate(items):
        field = f"inputs[{index}]" if many else "inputs"
        if isinstance(item, dict):
            if not item:
                raise RequestRefused(422, f"{field} is an empty object.")
            texts = []
            for key, text in item.items():
                if isinstance(text, list):  # a list of texts (a question's choices)
                    if not text:
                        raise RequestRefused(422, f"{field}.{key} is an empty list.")
                    texts += [(f"{field}.{key}[{i}]", t) for i, t in enumerate(text)]
                else:
                    texts.append((f"{field}.{key}", text))
        elif isinstance(item, str):
            texts = [(field, item)]
        else:
            raise RequestRefused(
                422,
                f"{field} must be a text (a JSON string) or an object of texts, got "
                f"{_json_type(item)}.",
            )
        for name, text in texts:
            if not isinstance(text, str):
                raise RequestRefused(
                    422, f"{name} must be a text (a JSON string), got {_json_type(text)}."
                )
            if not text.strip():
                raise RequestRefused(422, f"{name} is empty.")
            if len(text) > limits.max_text_chars:
                raise RequestRefused(
                    413,
                    f"{name} is {len(text)} characters long, more than serve.max_text_chars="
                    f"{limits.max_text_chars}.",
                )
    return Decoded(list(items), many)


def input_texts(decoded: Decoded, predictor: Any) -> list[Any]:
    """The predictor's inputs of a checked request: a text each, or the two texts of a pair."""
    from lmforge.tasks.predictor import InputText

    first, second = predictor.text_column, predictor.text_pair_column
    texts = []
    for index, item in enumerate(decoded.inputs):
        field = f"inputs[{index}]" if decoded.many else "inputs"
        if second is None:
            if isinstance(item, dict):
                raise LmforgeError(
                    f"{field} is an object ({', '.join(map(repr, item))}), but this model reads "
                    "one text per input: send a string."
                )
            texts.append(InputText(item, where=field))
            continue
        example = f'{{"{first}": "...", "{second}": "..."}}'
        if not isinstance(item, dict):
            raise LmforgeError(
                f"{field} is a text, but this model reads a pair of texts per input: send "
                f"{example}."
            )
        missing = [c for c in (first, second) if c not in item]
        extra = [k for k in item if k not in (first, second)]
        if missing or extra:
            raise LmforgeError(
                f"{field} has the keys {', '.join(map(repr, item))}; this model reads {example}"
                + (f" (missing {', '.join(map(repr, missing))})" if missing else "")
                + "."
            )
        texts.append(InputText(item[first], predictor.pair_value(item[second], field), where=field))
    return texts
