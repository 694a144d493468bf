"""Serving: an HTTP server over a trained model (`lmforge-serve`), on LitServe.

LitServe (Lightning's serving library) runs the HTTP front end (FastAPI and uvicorn) and one
inference worker process per device slot, and gathers concurrent requests into batches
(`serve.max_batch_size`, `serve.batch_timeout`). lmforge adds the glue: the model loads through
`lmforge-predict`'s loader and answers through its family's predictor, so a served record is
the record `lmforge-predict` writes for the same input.

- `POST /predict` with `{"inputs": <input>}` answers `{"prediction": <record>}`; with
  `{"inputs": [<input>, ...]}` it answers `{"predictions": [<record>, ...]}`. An input is a text,
  or for models that read two texts (question answering) an object of the two columns.
- `GET /health` answers 200 `ok` once the model is loaded (503 before).
- A bad request gets a 4xx status and `{"error": "<message naming the field>"}`: 400 for a body
  that is not JSON, 422 for a missing or mistyped field or an input the model refuses, 413 for
  a text over `serve.max_text_chars` or more inputs than `serve.max_batch_size`. Malformed
  requests are refused by the front end before they reach a worker; an input the model
  refuses fails its own request only, never the others batched with it.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError

log = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "cuda")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
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
            texts = [(f"{field}.{key}", text) for key, text in item.items()]
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
        texts.append(InputText(item[first], item[second], where=field))
    return texts


def check_serve_settings(cfg: DictConfig) -> None:
    """Refuse impossible serve settings before any model is loaded."""
    from lmforge.predict import is_number, is_whole

    serve = cfg.serve
    problems = []
    if serve.host not in HOSTS:
        problems.append(f"serve.host={serve.host!r}; expected one of {', '.join(HOSTS)}.")
    if not (is_whole(serve.port, 1024) and serve.port <= 65535):
        problems.append(
            f"serve.port must be a whole number from 1024 to 65535, got {serve.port!r}."
        )
    for key in ("max_batch_size", "workers", "max_text_chars"):
        if not is_whole(serve[key], 1):
            problems.append(
                f"serve.{key} must be a whole number of at least 1, got {serve[key]!r}."
            )
    if not (is_number(serve.batch_timeout) and serve.batch_timeout >= 0):
        problems.append(
            f"serve.batch_timeout must be 0 or more seconds, got {serve.batch_timeout!r}."
        )
    if not (is_number(serve.timeout) and serve.timeout > 0):
        problems.append(f"serve.timeout must be above 0 seconds, got {serve.timeout!r}.")
    if serve.device not in ACCELERATORS:
        problems.append(
            f"serve.device={serve.device!r}; expected one of {', '.join(ACCELERATORS)}."
        )
    if problems:
        raise LmforgeError(" ".join(problems))


def worker_options(cfg: DictConfig) -> dict[str, Any]:
    """What a worker needs to load and run the model, as plain data (it travels to the worker
    process): the prediction settings, without the run's paths."""
    options = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k not in ("paths", "hydra")]),
        resolve=True,
    )
    assert isinstance(options, dict)
    return {str(k): v for k, v in options.items()}


def build_server(cfg: DictConfig) -> Any:
    """The LitServer of `cfg` (not started)."""
    import importlib.util

    from lmforge.predict import check_settings, choose_device

    check_serve_settings(cfg)
    check_settings(cfg)
    if importlib.util.find_spec("litserve") is None:
        raise LmforgeError(
            "lmforge-serve needs LitServe, which is not installed: pip install 'lmforge[serve]' "
            "(or pip install litserve)."
        )
    import litserve as ls

    from lmforge.serve_api import ModelAPI, RequestChecks

    serve = cfg.serve
    limits = Limits(int(serve.max_batch_size), int(serve.max_text_chars))
    api = ModelAPI(
        worker_options(cfg),
        limits,
        int(serve.max_batch_size) if serve.batching else 1,
        float(serve.batch_timeout),
    )
    return ls.LitServer(
        api,
        accelerator=choose_device(str(serve.device)).type,
        devices=1,
        workers_per_device=int(serve.workers),
        timeout=float(serve.timeout),
        middlewares=[(RequestChecks, {"limits": limits})],
    )


def serve(cfg: DictConfig) -> None:
    """Start the server of `cfg` and block until SIGTERM or Ctrl-C stops it (cleanly: its
    workers are shut down too)."""
    server = build_server(cfg)

    def stop(signum: int, frame: Any) -> None:
        # LitServe shuts its workers and front end down on KeyboardInterrupt.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("Serving on http://%s:%d%s", cfg.serve.host, cfg.serve.port, API_PATH)
    server.run(
        host=str(cfg.serve.host),
        port=int(cfg.serve.port),
        generate_client_file=False,
        num_api_servers=1,
        log_level=str(cfg.serve.log_level),
    )
