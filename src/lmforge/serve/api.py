"""The LitServe side of `lmforge-serve` (see `lmforge.serve.server`): the API that answers requests
with a family's predictor, and the front end's request checks.

In a module of its own because LitServe sends the API object to each inference worker
process by pickling it, so its class must be importable by name, and because only this
module needs the `serve` extra (litserve).
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import litserve as ls
from omegaconf import OmegaConf
from starlette.responses import JSONResponse

from lmforge.errors import LmforgeError
from lmforge.serve.checks import (
    API_PATH,
    Decoded,
    Limits,
    Refusal,
    RequestRefused,
    input_texts,
    read_inputs,
)

log = logging.getLogger(__name__)


class RequestChecks:
    """Answers malformed POST /predict requests in the front end, before they could join a
    batch, with a 4xx status and a JSON message.

    A plain ASGI middleware (the body read once, checked, then handed on as it came): Starlette's
    BaseHTTPMiddleware wraps every request and response of the app in streams and a task group,
    which costs the front end time on every request, the good ones included.
    """

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != API_PATH:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            try:
                payload = json.loads(body)
            except ValueError as err:
                raise RequestRefused(400, f"The request body is not JSON: {err}.") from None
            read_inputs(payload, self.limits)
        except RequestRefused as refused:
            response = JSONResponse({"error": refused.message}, status_code=refused.status)
            await response(scope, receive, send)
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return cast(dict[str, Any], await receive())  # waits for a disconnect

        await self.app(scope, replay, send)


# litserve ships no type information: its LitAPI is `Any` to mypy.
class ModelAPI(ls.LitAPI):  # type: ignore[misc]
    """A trained model behind POST /predict.

    Args:
        options: the serve config as plain data; each worker loads the model from it in `setup`.
        limits: what one request may hold.
        max_batch_size, batch_timeout: LitServe's batching of concurrent requests (1: none).
    """

    def __init__(
        self, options: dict[str, Any], limits: Limits, max_batch_size: int, batch_timeout: float
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=API_PATH
        )
        self.options = options
        self.limits = limits
        self.predictor: Any = None

    def setup(self, device: str) -> None:
        import torch

        from lmforge.predict import load_predictor

        cfg = OmegaConf.create(self.options)
        self.predictor, family = load_predictor(cfg, torch.device(device))
        torch.manual_seed(int(cfg.seed))
        log.info("Serving a %s model on %s", family.name, device)

    # Unannotated: LitServe reads the annotation of `request` as the body's type, and with none
    # passes the decoded JSON.
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        try:
            decoded = read_inputs(request, self.limits)
            inputs = input_texts(decoded, self.predictor)
            self.predictor.check(inputs)
        except RequestRefused as refused:
            return Refusal(refused.status, refused.message)
        except LmforgeError as err:
            return Refusal(422, str(err))
        return Decoded(inputs, decoded.many)

    def batch(self, inputs: list[Any]) -> list[Any]:
        return list(inputs)

    def predict(self, x: Any) -> Any:
        if self.max_batch_size == 1:  # LitServe passes one request, unbatched
            return self.answer([x])[0]
        return self.answer(x)

    def answer(self, requests: list[Any]) -> list[Any]:
        """The records of each request: the inputs of all of them predicted together, in chunks
        of `batch_size`. Where the model refuses an input, each request is answered alone, so
        only the one at fault gets the refusal."""
        ready = [r for r in requests if isinstance(r, Decoded)]
        try:
            records = self.records([item for r in ready for item in r.inputs])
        except LmforgeError as err:
            if len(ready) > 1:
                return [self.answer([r])[0] if isinstance(r, Decoded) else r for r in requests]
            return [Refusal(422, str(err)) if isinstance(r, Decoded) else r for r in requests]
        answers, taken = [], 0
        for request in requests:
            if isinstance(request, Decoded):
                count = len(request.inputs)
                answers.append(Decoded(records[taken : taken + count], request.many))
                taken += count
            else:
                answers.append(request)
        return answers

    def records(self, inputs: list[Any]) -> list[dict[str, Any]]:
        """One record per input, in order, predicted in forward passes of `batch_size` inputs
        of similar length (so short inputs are not padded to a long one's length)."""
        size = int(self.options["batch_size"])
        order = sorted(
            range(len(inputs)),
            key=lambda i: len(inputs[i].text) + len(str(inputs[i].text_pair or "")),
        )
        out: list[Any] = [None] * len(inputs)
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            for index, record in zip(
                chunk, self.predictor.predict([inputs[i] for i in chunk]), strict=True
            ):
                out[index] = record
        return out

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    # Unannotated: LitServe reads the return annotation as the response's type; with none, the
    # Response returned is sent as it is.
    def encode_response(self, output):  # type: ignore[no-untyped-def]
        if isinstance(output, Refusal):
            return JSONResponse({"error": output.message}, status_code=output.status)
        if output.many:
            return JSONResponse({"predictions": output.inputs})
        return JSONResponse({"prediction": output.inputs[0]})
