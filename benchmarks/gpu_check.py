"""The figures of `make gpu-check`: training samples/s and MFU of the embedded MiniLM in float32
and bf16 autocast at one shape, and predict samples/s, on a CUDA GPU; one table.

    python benchmarks/gpu_check.py                      # skips (exit 0) without a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --seconds 5    # the same code on the CPU

Each arithmetic trains the sequence classifier (fresh 12-label head) on random token ids of
`--batch` x `--length` with fused AdamW and clipping, as a run does, for `--seconds` after
three warm-up steps, then predicts batches of the same shape without gradients. MFU is model
FLOP/s (lmforge.runtime.flops: the accounting every run records) over the device's peak in
that arithmetic (the data sheet of known GPUs, else a matmul probe).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def timed_steps(step, seconds: float, synchronize) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Steps run in about `seconds` (after 3 untimed ones) and the seconds they took."""
    for _ in range(3):
        step()
    synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += 1
    synchronize()
    return count, time.perf_counter() - started


def measure(arithmetic: str, device, args, cache: str) -> str:  # type: ignore[no-untyped-def]
    """One table row: training and predict speed of MiniLM in `arithmetic` on `device`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from lmforge.config.resources import embedded_model_path
    from lmforge.runtime.flops import ModelFlops, peak_flops

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        embedded_model_path(), num_labels=12
    ).to(device)
    flops = ModelFlops(model).per_batch(args.batch, args.length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(1000, 20000, (args.batch, args.length), device=device)
    labels = torch.randint(0, 12, (args.batch,), device=device)
    bf16 = arithmetic == "bf16"

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def predict_step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            model(input_ids=ids).logits.argmax(-1)

    model.train()
    steps, took = timed_steps(train_step, args.seconds, synchronize)
    model.eval()
    passes, predict_took = timed_steps(predict_step, args.seconds / 2, synchronize)
    achieved = flops * steps / took
    peak, _ = peak_flops(device, arithmetic, cache)
    return (
        f"| {arithmetic} | {steps * args.batch / took:.1f} | {achieved / 1e12:.3f} | "
        f"{achieved / peak:.3f} | {passes * args.batch / predict_took:.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is visible; skipped.")
        return 0
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"gpu-check on {name}, torch {torch.__version__}, MiniLM (22M), batch {args.batch} x "
        f"{args.length} tokens, {args.seconds:.0f} s per figure"
    )
    print("| arithmetic | train samples/s | model TFLOP/s | MFU | predict samples/s |")
    print("| --- | ---: | ---: | ---: | ---: |")

    with tempfile.TemporaryDirectory() as cache:
        for arithmetic in ("float32", "bf16"):
            print(measure(arithmetic, device, args, cache))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
