"""Packed vs padded training on the shipped chat data: real tokens per second.

One epoch over the same training conversations, three times, with the same small GPT-2 (the
`model=gpt2_scratch` shape) and optimizer: padded batches in plain shuffled order, padded
batches grouped by length (lmforge's default sampler) and packed sequences
(`data.packing=true`). Prints the real (non-padding) tokens per
second, the share of real tokens among all token slots, and the ratio. The loop is a plain
forward/backward/AdamW step, so the figures are about the data layout, not Lightning.

    python benchmarks/packing.py                      # 1,000 conversations, max_length 256
    python benchmarks/packing.py --examples 2000 --batch-size 32 --packed-batch-size 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lmforge.config.resources import embedded_model_path, shipped_data
from lmforge.data.sampler import SeededBatchSampler
from lmforge.tasks.language_modeling.instructions import InstructionDataModule


def datamodule(args: argparse.Namespace, packing: bool, cache: str) -> InstructionDataModule:
    data = InstructionDataModule(
        train_file=shipped_data("debian_chat/train.jsonl"),
        validation_file=shipped_data("debian_chat/validation.jsonl"),
        test_file=shipped_data("debian_chat/test.jsonl"),
        tokenizer=embedded_model_path(),
        cache_dir=cache,
        format="messages",
        max_length=args.max_length,
        packing=packing,
        max_train_samples=args.examples,
        batch_size=args.packed_batch_size if packing else args.batch_size,
    )
    data.prepare_data()
    data.setup("fit")
    return data


def one_epoch(
    data: InstructionDataModule, args: argparse.Namespace, grouped: bool = True
) -> dict[str, float]:
    torch.manual_seed(0)
    tokenizer = data.tokenizer
    assert tokenizer is not None
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_layer=4,
            n_head=4,
            n_embd=256,
            n_positions=args.max_length,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    split = data.splits["train"]
    sampler = SeededBatchSampler(
        data.lengths["train"],
        batch_size=data.batch_size,
        shuffle=True,
        group_by_length=grouped,
        seed=0,
    )
    collate = data.build_collator()
    real = slots = steps = 0
    started = time.perf_counter()
    for indices in sampler:
        batch = collate([split[i] for i in indices])
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
        slots += batch["input_ids"].numel()
        if "attention_mask" in batch:
            real += int(batch["attention_mask"].sum())
        else:  # packed: padding is the tail after each row's own tokens
            real += sum(len(split[i]["input_ids"]) for i in indices)
    seconds = time.perf_counter() - started
    return {
        "sequences": len(split),
        "steps": steps,
        "seconds": seconds,
        "real_tokens": real,
        "real_share": real / slots,
        "real_tokens_per_second": real / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="padded: examples per step")
    parser.add_argument(
        "--packed-batch-size", type=int, default=4, help="packed: sequences per step"
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        padded = datamodule(args, False, cache)
        results = {
            "padded, shuffled": one_epoch(padded, args, grouped=False),
            "padded, grouped by length": one_epoch(padded, args),
            "packed": one_epoch(datamodule(args, True, cache), args),
        }
    print(f"{args.examples} conversations of data=debian_chat, max_length {args.max_length}")
    print("| layout | sequences | steps | real tokens | real share | real tokens/s | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(
            f"| {name} | {r['sequences']} | {r['steps']} | {r['real_tokens']:,} | "
            f"{100 * r['real_share']:.1f}% | {r['real_tokens_per_second']:,.0f} | "
            f"{r['seconds']:.1f} |"
        )
    packed = results["packed"]["real_tokens_per_second"]
    for name in ("padded, shuffled", "padded, grouped by length"):
        ratio = packed / results[name]["real_tokens_per_second"]
        print(f"packed / {name}: {ratio:.2f}x real tokens per second (goal: at least 1.5x)")


if __name__ == "__main__":
    main()
