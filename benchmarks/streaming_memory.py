"""Peak memory of language-model training on 1x and Nx the shipped text, streamed or not.

    python benchmarks/streaming_memory.py --copies 1 20 --steps 100

Writes the shipped training text (src/lmforge/resources/debian_descriptions/train.txt) `copies`
times into one file, then trains the small GPT-2 of `experiment=debian_lm_gpt2_scratch` on it for
`--steps` optimizer steps, once with `data.streaming=true` and once without (`--modes`), each in
its own process and cache, and prints the peak resident memory of each (the child's maxrss),
the size of its tokenization cache on disk and its wall time. Streamed, neither the peak nor the
cache grows with the corpus; tokenized up front, the Arrow cache holds the whole tokenized corpus
on disk (memory-mapped, so resident memory stays flat while training touches a few batches)
and the run first tokenizes all of it.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmforge.config.resources import PACKAGE_DIR

# Runs the command given as its arguments and prints the peak RSS (KiB) of that process tree.
MEASURE = (
    "import resource, subprocess, sys; "
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--modes", nargs="+", default=["stream", "map"])
    args = parser.parse_args()
    shipped = PACKAGE_DIR / "resources" / "debian_descriptions"
    text = (shipped / "train.txt").read_text(encoding="utf-8")
    print(f"CPU: {platform.processor() or platform.machine()}, cores: {os.cpu_count()}")
    print("| copies | size | mode | peak RSS | tokenized cache | wall time |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for copies in args.copies:
            corpus = Path(tmp) / f"train-{copies}x.txt"
            with corpus.open("w", encoding="utf-8") as f:
                for _ in range(copies):
                    f.write(text)
            size = corpus.stat().st_size / 2**20
            for mode in args.modes:
                command = [
                    sys.executable,
                    "-m",
                    "lmforge",
                    "experiment=debian_lm_gpt2_scratch",
                    f"data.train_file={corpus}",
                    f"data.validation_file={shipped / 'validation.txt'}",
                    f"data.test_file={shipped / 'test.txt'}",
                    "data.max_train_samples=null",
                    f"data.streaming={'true' if mode == 'stream' else 'false'}",
                    f"trainer.max_steps={args.steps}",
                    "model.generate_prompts=[]",
                    "evaluate_before=false",
                    "compare.baselines=[]",
                    "logger=csv",
                    "trainer.enable_progress_bar=false",
                    f"paths.log_dir={tmp}/logs",
                    f"paths.cache_dir={tmp}/cache-{copies}-{mode}",
                ]
                start = time.perf_counter()
                # Through a fresh parent, whose children's maxrss is then this run's alone.
                done = subprocess.run(
                    [sys.executable, "-c", MEASURE, *command], capture_output=True, text=True
                )
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    print(done.stdout[-2000:], done.stderr[-2000:])
                    raise SystemExit(f"{mode} on {copies}x failed")
                peak = int(done.stdout.strip().splitlines()[-1])
                cache = Path(tmp) / f"cache-{copies}-{mode}"
                stored = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
                row = [
                    f"{copies}",
                    f"{size:.0f} MiB",
                    mode,
                    f"{peak / 1024:.0f} MiB",
                    f"{stored / 2**20:.1f} MiB",
                ]
                print("| " + " | ".join([*row, f"{seconds:.0f} s"]) + " |")


if __name__ == "__main__":
    main()
