"""Predict throughput of one trained classifier three ways: PyTorch fp32 from the checkpoint,
its ONNX fp32 graph and its int8 graph through ONNX Runtime, on the same texts.

    python benchmarks/predict_backends.py --ckpt outputs/<run>/checkpoints/best.ckpt
    python benchmarks/predict_backends.py --ckpt ... --batch-size 32 --repeats 3 --threads 2

Exports the checkpoint with `lmforge-export format=onnx quantize=int8` into a temporary folder
(the export's own metric check is printed: the test split's primary metric with the checkpoint
and with the int8 graph), then predicts the texts of the run's test file (`--texts` for another
.csv with a `text` column) with each backend through lmforge's own predictor (tokenization and
records included, as `lmforge-predict` runs), `--repeats` times after one warm-up pass, and
prints samples/s (the best pass), the speed-up over PyTorch, and the share of predicted labels
that agree with PyTorch's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def predictor_of(source: str, batch_size: int, threads: int) -> object:
    import torch
    from omegaconf import OmegaConf

    from lmforge.predict import load_predictor

    key = "ckpt_path" if source.endswith(".ckpt") else "model_dir"
    cfg = OmegaConf.create(
        {
            "ckpt_path": source if key == "ckpt_path" else None,
            "model_dir": source if key == "model_dir" else None,
            "backend": "auto",
            "threads": threads,
            "max_length": None,
            "text_column": None,
            "batch_size": batch_size,
            "threshold": None,
        }
    )
    predictor, _ = load_predictor(cfg, torch.device("cpu"))
    return predictor


def timed(predictor: object, inputs: list, batch_size: int, repeats: int) -> tuple[float, list]:
    """Best samples/s over `repeats` passes (after a warm-up pass) and the last pass's labels."""
    labels: list = []

    def one_pass() -> float:
        nonlocal labels
        labels = []
        started = time.perf_counter()
        for start in range(0, len(inputs), batch_size):
            records = predictor.predict(inputs[start : start + batch_size])  # type: ignore[attr-defined]
            labels += [r["label"] for r in records]
        return len(inputs) / (time.perf_counter() - started)

    one_pass()
    return max(one_pass() for _ in range(repeats)), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--texts", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    import torch

    from lmforge.tasks.predictor import InputText
    from lmforge.tasks.runs import load_run

    run = load_run(args.ckpt, "benchmark")
    texts_file = args.texts or run.data_config().get("test_file")
    with open(str(texts_file), encoding="utf-8", newline="") as f:
        inputs = [InputText(row["text"]) for row in csv.DictReader(f)]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "onnx"
        subprocess.run(
            [
                str(Path(sys.executable).parent / "lmforge-export"),
                f"ckpt_path={args.ckpt}",
                "format=onnx",
                "quantize=int8",
                "force=true",
                f"output_dir={folder}",
                f"hydra.run.dir={Path(tmp) / 'export-run'}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

        quantization = json.loads((folder / "quantization.json").read_text())
        fp32_folder = Path(tmp) / "fp32"
        fp32_folder.mkdir()
        for item in folder.iterdir():  # the same folder with the fp32 graph as its model
            if item.name not in ("model_int8.onnx", "lmforge.json"):
                (fp32_folder / item.name).symlink_to(item)
        info = json.loads((folder / "lmforge.json").read_text())
        info["model_file"] = "model.onnx"
        (fp32_folder / "lmforge.json").write_text(json.dumps(info))

        rows = []
        reference: list = []
        for name, source in (
            ("PyTorch fp32 (checkpoint)", args.ckpt),
            ("ONNX Runtime fp32", str(fp32_folder)),
            ("ONNX Runtime int8", str(folder)),
        ):
            predictor = predictor_of(source, args.batch_size, args.threads)
            speed, labels = timed(predictor, inputs, args.batch_size, args.repeats)
            reference = reference or labels
            agree = sum(a == b for a, b in zip(labels, reference, strict=True)) / len(labels)
            rows.append((name, speed, agree))
    print(
        f"CPU: {platform.processor() or platform.machine()}, threads: {args.threads}, "
        f"{len(inputs)} texts of {texts_file}, batch {args.batch_size}, torch {torch.__version__}"
    )
    print(
        f"Export check ({quantization['metric']}, {quantization['test_examples']} test rows): "
        f"checkpoint {quantization['checkpoint']:.4f}, int8 {quantization['int8']:.4f} "
        f"(drop {quantization['drop']:.2f} {quantization['drop_unit']}); graph "
        f"{quantization['bytes']['fp32'] / 2**20:.1f} MiB fp32, "
        f"{quantization['bytes']['int8'] / 2**20:.1f} MiB int8"
    )
    print("| backend | samples/s | vs PyTorch | labels as PyTorch |")
    print("| --- | ---: | ---: | ---: |")
    base = rows[0][1]
    for name, speed, agree in rows:
        print(f"| {name} | {speed:.1f} | {speed / base:.2f}x | {100 * agree:.1f}% |")


if __name__ == "__main__":
    main()
