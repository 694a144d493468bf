"""Tokenization time of the shipped classification data with 1 and more processes (data.num_proc).

    python benchmarks/tokenization.py --copies 20 --processes 1 2

The shipped training split (src/lmforge/resources/debian_packages/train.csv) is written `--copies`
times into one file (each copy's texts tagged with its number, so no two rows are equal), then
tokenized by the text-classification datamodule with the embedded MiniLM tokenizer, once per
process count, each into a fresh cache. Prints rows/s per count and the speed-up over the first,
and checks that every count produced the same tokenized data and the same cache key.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import time
from pathlib import Path

from lmforge.config.embedded import model_source
from lmforge.config.resources import PACKAGE_DIR
from lmforge.tasks.text_classification.data import TextClassificationDataModule


def replicated(source: Path, copies: int, target: Path) -> int:
    with source.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with target.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for copy in range(copies):
            for row in rows:
                writer.writerow({**row, "text": f"{row['text']} ({copy})"})
    return copies * len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    tokenizer = model_source("all-minilm-l6-v2")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.csv"
        source = PACKAGE_DIR / "resources" / "debian_packages" / "train.csv"
        rows = replicated(source, args.copies, data)
        print(f"{rows} rows ({args.copies} copies of {source.name}), max_length {args.max_length}")
        print(f"CPU: {platform.processor() or platform.machine()}, cores: {os.cpu_count()}")
        results = []
        for processes in args.processes:
            dm = TextClassificationDataModule(
                tokenizer=tokenizer,
                train_file=str(data),
                cache_dir=str(Path(tmp) / f"cache-{processes}"),
                max_length=args.max_length,
                num_proc=processes,
            )
            dm._ensure_tokenizer()  # the tokenizer's load is not tokenization
            start = time.perf_counter()
            dm.prepare_data()
            seconds = time.perf_counter() - start
            dm.setup("fit")
            results.append((processes, seconds, dm))
        base = results[0][1]
        print("| processes | seconds | rows/s | speed-up |")
        print("| --- | --- | --- | --- |")
        for processes, seconds, _ in results:
            print(
                f"| {processes} | {seconds:.1f} | {rows / seconds:,.0f} | {base / seconds:.2f}x |"
            )
        first = results[0][2]
        for processes, _, dm in results[1:]:
            same_key = dm._resolve_cache_path().name == first._resolve_cache_path().name
            same = all(
                dm.splits[s]["input_ids"] == first.splits[s]["input_ids"] for s in first.splits
            )
            print(f"{processes} processes: same cache key {same_key}, same data {same}")


if __name__ == "__main__":
    main()
