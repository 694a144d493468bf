"""lmforge-serve: a real server on a free loopback port, talked to over HTTP. It answers with
lmforge-predict's records, refuses bad requests with a 4xx and a message naming the field,
keeps serving after them, keeps good requests apart from a bad one batched with them, and
shuts down with its workers on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from lmforge.errors import LmforgeError
from lmforge.serve.checks import Limits, RequestRefused, read_inputs
from tests.helpers import ENV, REPO, read_records

TEXTS = ["plays music files", "a text editor for the terminal", "reads mail"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# One worker starts the module's server once (make test runs --dist loadgroup).
pytestmark = pytest.mark.xdist_group("serve")


@pytest.fixture(scope="module")
def classifier(tiny_classifier) -> Path:
    return tiny_classifier


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    """The folder of the module's server: its run directory and server.log."""
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module", params=["checkpoint", "onnx"])
def served(request, classifier, tmp_path_factory) -> str:
    """What the server loads: the tiny classifier's checkpoint, or its ONNX export (run by
    ONNX Runtime): every HTTP test below runs against both."""
    if request.param == "checkpoint":
        return f"ckpt_path={classifier}"
    from omegaconf import open_dict

    from lmforge.export import export
    from tests.helpers import compose_config

    cfg = compose_config([f"ckpt_path={classifier}", "format=onnx"], config_name="export")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path_factory.mktemp("onnx") / "export")
    return f"model_dir={export(cfg)}"


@pytest.fixture(scope="module")
def server(served, server_log):
    """`lmforge-serve` on the tiny classifier: (base URL, process); stopped at the end."""
    port = free_port()
    root = server_log / served.partition("=")[0]
    root.mkdir(exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "lmforge-serve"),
        served,
        f"serve.port={port}",
        "serve.max_batch_size=4",
        "serve.batch_timeout=0.05",
        "serve.max_text_chars=200",
        f"hydra.run.dir={root / 'run'}",
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed at teardown)
    # Its own process group: the server's worker processes are stopped with it.
    process = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"lmforge-serve exited: {(root / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        stop_group(process)
        pytest.fail(f"lmforge-serve never got healthy: {(root / 'server.log').read_text()[-3000:]}")
    yield url, process
    stop_group(process)
    log.close()


def stop_group(process: subprocess.Popen) -> None:
    """Stop a server and every process it started (LitServe's workers and API servers)."""
    import contextlib
    import os

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The main process is gone; its workers may linger a moment: the group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return


def post(url: str, body: object, raw: bytes | None = None) -> httpx.Response:
    if raw is not None:
        return httpx.post(f"{url}/predict", content=raw, timeout=60)
    return httpx.post(f"{url}/predict", json=body, timeout=60)


def test_answers_equal_lmforge_predict(server, classifier, run_predict):
    url, _ = server
    one = post(url, {"inputs": TEXTS[0]})
    assert one.status_code == 200, one.text
    many = post(url, {"inputs": TEXTS})
    assert many.status_code == 200, many.text
    expected = read_records(run_predict(f"ckpt_path={classifier}", f"input=[{','.join(TEXTS)}]"))
    served = [one.json()["prediction"], *many.json()["predictions"]]
    for got, want in zip(served, [expected[0], *expected], strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)


@pytest.mark.parametrize(
    ("body", "raw", "status", "message"),
    [
        (None, b"{not json", 400, "not JSON"),
        (["a text"], None, 422, "must be a JSON object"),
        ({"text": "a"}, None, 422, "Unknown field(s) 'text'"),
        ({}, None, 422, "no 'inputs' field"),
        ({"inputs": 3}, None, 422, "inputs must be a text"),
        ({"inputs": ["ok", 3]}, None, 422, "inputs[1] must be a text"),
        ({"inputs": {"a": [3]}}, None, 422, "inputs.a[0] must be a text"),
        ({"inputs": []}, None, 422, "empty list"),
        ({"inputs": "  "}, None, 422, "inputs is empty"),
        (
            {"inputs": "x" * 201},
            None,
            413,
            "201 characters long, more than serve.max_text_chars=200",
        ),
        ({"inputs": ["a"] * 5}, None, 413, "5 inputs, more than serve.max_batch_size=4"),
        # Checked by the model's worker: a classifier reads one text per input.
        ({"inputs": {"question": "q", "context": "c"}}, None, 422, "reads one text per input"),
        ({"inputs": {"a": ["x", "y"]}}, None, 422, "reads one text per input"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(server, body, raw, status, message):
    url, _ = server
    response = post(url, body, raw)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "Traceback" not in response.text
    # The server keeps serving.
    assert post(url, {"inputs": "still here"}).status_code == 200


def test_a_bad_request_batched_with_good_ones_fails_alone(server):
    url, _ = server
    bodies = [{"inputs": t} for t in TEXTS] + [{"inputs": {"question": "q", "context": "c"}}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda b: post(url, b), bodies * 3))
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 422] * 3, [r.text for r in responses]


def test_health_and_unknown_routes(server):
    url, _ = server
    assert httpx.get(f"{url}/health").text.strip('"') == "ok"
    assert httpx.get(f"{url}/predict").status_code == 405
    assert httpx.get(f"{url}/nothing").status_code == 404


def test_read_inputs_checks_the_body_before_any_model():
    limits = Limits(max_batch_size=2, max_text_chars=10)
    decoded = read_inputs({"inputs": ["a", {"question": "q", "context": "c"}]}, limits)
    assert decoded.many and decoded.inputs[1] == {"question": "q", "context": "c"}
    assert not read_inputs({"inputs": "a"}, limits).many
    with pytest.raises(RequestRefused) as refused:
        read_inputs({"inputs": [{"question": None}]}, limits)
    assert refused.value.status == 422 and "inputs[0].question" in refused.value.message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("serve.port=80", r"serve.port must be a whole number in \[1024, 65535\], got 80"),
        ("serve.host=example.org", "serve.host must be one of '127.0.0.1', '0.0.0.0', '::'"),
        ("serve.max_batch_size=0", "serve.max_batch_size must be a whole number of 1 or more"),
        ("serve.batch_timeout=-1", "serve.batch_timeout must be a number of 0 or more"),
        ("serve.device=tpu", "serve.device must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
        ("serve.log_level=loud", "serve.log_level must be one of 'critical'"),
    ],
)
def test_bad_serve_settings_are_refused_before_loading(make_cfg, classifier, override, expected):
    from lmforge.serve.server import build_server

    cfg = make_cfg(f"ckpt_path={classifier}", override, config_name="serve")
    with pytest.raises(LmforgeError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build_server(cfg)


def test_the_served_records_are_json(server):
    url, _ = server
    body = post(url, {"inputs": TEXTS[:2]}).json()
    assert json.loads(json.dumps(body)) == body


# Last: it stops the module's server.
def test_sigterm_shuts_the_server_and_its_workers_down(server, served, server_log):
    url, process = server
    workers = children_of(process.pid)
    assert workers, "the server runs its inference worker in a process of its own"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.2)
    assert not [w for w in workers if alive(w)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
    # A clean shutdown: no process, the workers included, logs a traceback.
    log = (server_log / served.partition("=")[0] / "server.log").read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
