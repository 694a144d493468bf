"""lmforge-serve under load: requests/s and latency, with and without batching, against a plain
one-request-at-a-time loop over the same model.

The model is a text classifier on the embedded MiniLM (its head fresh: serving speed does not
depend on training), saved as a Hugging Face folder with the default experiment's
max_length of 128 tokens, or any `--model-dir` / `--ckpt`. Each request carries one real text
from the shipped data: a package description (`--inputs descriptions`, 115 tokens on average,
many cut at 128) or a package synopsis (`--inputs synopses`, 12 tokens on average, like titles
or queries). For each inputs kind and server setting
the script starts `lmforge-serve` on a free loopback port, and for 1, 8 and 32 concurrent
clients (threads, one HTTP connection each) sends `--requests-per-client` requests per client,
timing each one. The loops are the same predictor called in this process without HTTP, for
one text at a time (the cost of serving one request at a time with no server at all) and in
batches of `--max-batch-size` texts sorted by length (what the model gives when batched as the
server batches it: the ceiling of the served requests/s). Each load also reports the CPU time
per request of the clients (this process), the server's front end and its inference worker
(read from /proc: Linux), beside the batched loop's CPU time per text: where clients and server
share the cores, the clients' and front end's share is taken from the model.

    python benchmarks/serve.py
    python benchmarks/serve.py --clients 1 8 32 --requests-per-client 20 --max-batch-size 32
    python benchmarks/serve.py --ckpt outputs/train/runs/<time>/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx

from lmforge.config.resources import embedded_model_path, shipped_data


def texts(kind: str, count: int) -> list[str]:
    if kind == "descriptions":
        with open(shipped_data("debian_packages/train.csv"), encoding="utf-8", newline="") as f:
            rows = [row["text"] for row in csv.DictReader(f)]
    else:  # the first answer of each shipped chat: the package's synopsis
        with open(shipped_data("debian_chat/train.jsonl"), encoding="utf-8") as f:
            chats = [json.loads(line)["messages"] for line in f]
        rows = [next(m["content"] for m in chat if m["role"] == "assistant") for chat in chats]
    return [rows[i % len(rows)] for i in range(count)]


def embedded_classifier(folder: Path) -> Path:
    """The embedded MiniLM with a fresh 5-label classification head, as an HF folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(embedded_model_path(), num_labels=5)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(folder)
    settings = {"task": "text_classification", "max_length": 128}
    (folder / "lmforge.json").write_text(json.dumps(settings))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(source: list[str], settings: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "lmforge-serve"),
        *source,
        f"serve.port={port}",
        f"hydra.run.dir={log.parent / log.stem}",
        *settings,
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"lmforge-serve exited; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"lmforge-serve did not get healthy; see {log}")


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux: read from /proc)."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += process_tree(int(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_part(server: int) -> dict[str, float]:
    """CPU seconds so far of the server's inference workers (LitServe starts them with
    multiprocessing's spawn) and of its other processes (the HTTP front end, the launcher)."""
    parts = {"front end": 0.0, "worker": 0.0}
    for pid in process_tree(server):
        try:
            spawned = b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        parts["worker" if spawned else "front end"] += cpu_seconds(pid)
    return parts


def load(url: str, clients: int, per_client: int, inputs: list[str]) -> dict[str, float]:
    """`clients` threads, each sending `per_client` requests in turn; seconds per request."""
    latencies: list[float] = []
    lock = threading.Lock()
    failures = []

    def client(index: int) -> None:
        with httpx.Client(timeout=120) as session:
            for k in range(per_client):
                text = inputs[(index * per_client + k) % len(inputs)]
                started = time.perf_counter()
                response = session.post(f"{url}/predict", json={"inputs": text})
                took = time.perf_counter() - started
                if response.status_code != 200:
                    failures.append(response.text)
                with lock:
                    latencies.append(took)

    # A few requests first: the worker's first forward passes are slower.
    with httpx.Client(timeout=120) as session:
        for text in inputs[:5]:
            session.post(f"{url}/predict", json={"inputs": text})
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} request(s) failed, e.g. {failures[0]}")
    ordered = sorted(latencies)
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered),
        "p95_ms": 1000 * ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
    }


def plain_loops(source: list[str], inputs: list[str], batch_size: int) -> tuple[float, float]:
    """Texts/s of the model's predictor in this process, no HTTP: called for one text at a
    time, and in batches of `batch_size` texts sorted by length (as the server runs them)."""
    import torch
    from hydra import compose, initialize_config_dir

    from lmforge.config.resources import config_dir
    from lmforge.predict import load_predictor
    from lmforge.tasks.predictor import InputText

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name="serve", overrides=source)
    predictor, _ = load_predictor(cfg, torch.device("cpu"))
    for text in inputs[:5]:
        predictor.predict([InputText(text)])
    started = time.perf_counter()
    for text in inputs:
        predictor.predict([InputText(text)])
    one = len(inputs) / (time.perf_counter() - started)
    ordered = sorted(inputs, key=len)
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(ordered), batch_size):
        predictor.predict([InputText(t) for t in ordered[start : start + batch_size]])
    batched = len(inputs) / (time.perf_counter() - started)
    print(f"batched loop: {1000 * (time.process_time() - cpu) / len(inputs):.2f} CPU ms per text")
    return one, batched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="an exported HF folder (default: the embedded MiniLM)")
    parser.add_argument("--ckpt", help="an lmforge checkpoint instead")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument(
        "--inputs",
        nargs="+",
        choices=["descriptions", "synopses"],
        default=["descriptions", "synopses"],
    )
    parser.add_argument("--settings", nargs="+", choices=["batching", "no batching"], default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmforge-serve-bench-"))
    if args.ckpt:
        source = [f"ckpt_path={args.ckpt}"]
    else:
        folder = Path(args.model_dir) if args.model_dir else embedded_classifier(work / "model")
        source = [f"model_dir={folder}"]
    settings = {
        "batching": [
            "serve.batching=true",
            f"serve.max_batch_size={args.max_batch_size}",
            f"serve.batch_timeout={args.batch_timeout}",
        ],
        "no batching": ["serve.batching=false"],
    }
    rows = []
    for kind in args.inputs:
        inputs = texts(kind, max(args.clients) * args.requests_per_client)
        loop, batched = plain_loops(source, inputs[:256], args.max_batch_size)
        rows.append((kind, "plain loop", 1, {"requests_per_s": loop}, loop, batched))
        rows.append((kind, "batched loop", 1, {"requests_per_s": batched}, loop, batched))
        print(
            f"{kind}: plain loop, no HTTP: {loop:.1f} texts/s one at a time, {batched:.1f} in "
            f"sorted batches of {args.max_batch_size}"
        )
        for name, options in settings.items():
            if args.settings and name not in args.settings:
                continue
            log = work / f"{kind}_{name.replace(' ', '_')}.log"
            process, url = start_server(source, options, log)
            try:
                for clients in args.clients:
                    before, clients_before = cpu_by_part(process.pid), time.process_time()
                    figures = load(url, clients, args.requests_per_client, inputs)
                    # CPU per request of each part: the clients (this process's threads),
                    # the server's front end and its inference workers.
                    after, requests = cpu_by_part(process.pid), clients * args.requests_per_client
                    figures["cpu_ms"] = {
                        "clients": 1000 * (time.process_time() - clients_before) / requests,
                        **{k: 1000 * (after[k] - before[k]) / requests for k in after},
                    }
                    rows.append((kind, name, clients, figures, loop, batched))
                    print(
                        f"{kind} {name:12s} {clients:3d} clients: "
                        f"{figures['requests_per_s']:7.1f} req/s  p50 {figures['p50_ms']:7.1f} ms"
                        f"  p95 {figures['p95_ms']:7.1f} ms  "
                        f"({figures['requests_per_s'] / loop:.2f}x the loop); CPU ms per "
                        "request: "
                        + ", ".join(f"{k} {v:.2f}" for k, v in figures["cpu_ms"].items()),
                        flush=True,
                    )
            finally:
                process.terminate()
                process.wait(timeout=60)
    print()
    print(
        "| inputs | server | clients | requests/s | p50 ms | p95 ms | x plain loop "
        "| x batched loop | CPU ms/request: clients, front end, worker |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, name, clients, f, loop, batched in rows:
        latency = f"{f['p50_ms']:.1f} | {f['p95_ms']:.1f}" if "p50_ms" in f else " | "
        cpu = ", ".join(f"{v:.2f}" for v in f["cpu_ms"].values()) if "cpu_ms" in f else ""
        print(
            f"| {kind} | {name} | {clients} | {f['requests_per_s']:.1f} | {latency} | "
            f"{f['requests_per_s'] / loop:.2f} | {f['requests_per_s'] / batched:.2f} | {cpu} |"
        )


if __name__ == "__main__":
    main()
