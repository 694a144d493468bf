"""Contender `raw` / `raw-bf16`: a plain PyTorch + transformers loop, written as a user would.

Tokenizes each batch in the collate function (padded to the batch's longest text), shuffles
with a seeded DataLoader, trains with torch.optim.AdamW (no weight decay on biases and
LayerNorm weights, as the Hugging Face examples do) and `get_linear_schedule_with_warmup`,
clips the gradient norm like the other contenders, and measures test accuracy at the end.
With `bf16`, forward and loss run under `torch.autocast("cpu", dtype=torch.bfloat16)`.

    python benchmarks/raw_loop.py SPEC.json     (compare.py writes SPEC.json and runs this)
"""

from __future__ import annotations

import contextlib
import sys
import time

import probe
from run_spec import Marks, RunSpec, read_split, set_threads, write_result

marks = Marks()

import torch  # noqa: E402  (after the start mark: imports are part of start-up)
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
    set_seed,
)


def main(spec: RunSpec) -> None:
    probe.install(spec.probe_file)
    set_threads(spec.threads)
    marks.mark("imports_done")

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    train_texts, train_labels = read_split(spec.train_file)
    test_texts, test_labels = read_split(spec.test_file)
    label_names = sorted(set(train_labels))
    label_id = {name: i for i, name in enumerate(label_names)}
    train_rows = [(t, label_id[y]) for t, y in zip(train_texts, train_labels, strict=True)]
    test_rows = [(t, label_id[y]) for t, y in zip(test_texts, test_labels, strict=True)]

    def collate(rows):
        texts, labels = zip(*rows, strict=True)
        batch = tokenizer(
            list(texts),
            truncation=True,
            max_length=spec.max_length,
            padding=True,
            return_tensors="pt",
        )
        batch["labels"] = torch.tensor(labels)
        return batch

    train_loader = DataLoader(
        train_rows,
        batch_size=spec.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(spec.seed),
    )
    test_loader = DataLoader(test_rows, batch_size=spec.eval_batch_size, collate_fn=collate)
    marks.mark("data_ready")

    model = AutoModelForSequenceClassification.from_pretrained(
        spec.model_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id=label_id,
    )
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {
            "params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
            "weight_decay": spec.weight_decay,
        },
        {
            "params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=spec.lr, fused=spec.fused_adamw or None)
    total_steps = spec.epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, spec.warmup_steps, total_steps)
    marks.mark("model_ready")

    def autocast():
        if spec.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model.train()
    samples, train_seconds = 0, 0.0
    for _ in range(spec.epochs):
        # Same definition as lmforge's TrainThroughput: epoch start to the last batch's end.
        epoch_start = time.perf_counter()
        last_step = epoch_start
        for batch in train_loader:
            with autocast():
                loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.gradient_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            samples += len(batch["labels"])
            last_step = time.perf_counter()
        train_seconds += last_step - epoch_start
    marks.mark("train_done")

    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in test_loader:
            with autocast():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
    write_result(
        spec,
        marks,
        train_samples=samples,
        train_seconds=train_seconds,
        test_accuracy=correct / len(test_rows),
        torch_threads=torch.get_num_threads(),
        optimizer_steps=total_steps,
    )


if __name__ == "__main__":
    main(RunSpec.read(sys.argv[1]))
