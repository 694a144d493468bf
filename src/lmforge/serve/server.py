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
import os
import signal
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmforge.errors import LmforgeError
from lmforge.serve.checks import API_PATH, Limits

log = logging.getLogger(__name__)


def worker_options(cfg: DictConfig) -> dict[str, Any]:
    """What a worker needs to load and run the model, as plain data (it travels to the worker
    process): the prediction settings, without the run's paths."""
    options = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [str(k) for k in cfg if k not in ("paths", "hydra")]),
        resolve=True,
    )
    assert isinstance(options, dict)
    worker: dict[str, Any] = {str(k): v for k, v in options.items()}
    if not worker.get("threads"):
        # Workers share the cores: each gets its part (the front end's own work is light).
        from lmforge.onnx_backend import session_threads

        worker["threads"] = max(1, session_threads() // int(cfg.serve.workers))
    return worker


def build_server(cfg: DictConfig) -> Any:
    """The LitServer of `cfg` (not started)."""
    import importlib.util

    from lmforge.config.schema import ServeSchema
    from lmforge.predict import check_settings, choose_device

    check_settings(cfg, ServeSchema)
    if importlib.util.find_spec("litserve") is None:
        raise LmforgeError(
            "lmforge-serve needs LitServe, which is not installed: pip install 'lmforge[serve]' "
            "(or pip install litserve)."
        )
    import litserve as ls

    from lmforge.serve.api import ModelAPI, RequestChecks

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
    main = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != main:
            # A worker forked from here inherits this handler: it ends as SIGTERM ends any
            # process (its parent is shutting down), without a KeyboardInterrupt traceback.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
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
