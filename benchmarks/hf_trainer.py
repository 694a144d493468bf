"""Contender `trainer` / `trainer-bf16`: the Hugging Face `Trainer`, used as its docs show.

The splits are read with `datasets.load_dataset("csv")` and tokenized once with `map`
(truncation, no padding); `DataCollatorWithPadding` pads each batch. Same hyperparameters as
the other contenders: the warmup is given as the same whole number of steps (the Trainer would
round a ratio up, lmforge rounds it), `max_grad_norm` is the shared clip value, and the
optimizer is the Trainer's default (fused AdamW on torch >= 2.8, no weight decay on biases and
LayerNorm weights). No evaluation or checkpoints during training; CPU only. The short-text shape
groups batches by length (`train_sampling_strategy="group_by_length"`, transformers 5's name
for the old `group_by_length=True`), like lmforge's `data.group_by_length`.

    python benchmarks/hf_trainer.py SPEC.json     (compare.py writes SPEC.json and runs this)
"""

from __future__ import annotations

import sys
import time

import probe
from run_spec import Marks, RunSpec, set_threads, write_result

marks = Marks()

import datasets  # noqa: E402  (after the start mark: imports are part of start-up)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)


class TrainThroughput(TrainerCallback):
    """lmforge's definition of training time: each epoch's start to its last step's end."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._epoch_start: float | None = None
        self._last_step: float | None = None

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = self._last_step = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._last_step = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.seconds += self._last_step - self._epoch_start


def main(spec: RunSpec) -> None:
    probe.install(spec.probe_file)
    set_threads(spec.threads)
    marks.mark("imports_done")

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
    raw = datasets.load_dataset(
        "csv",
        data_files={"train": spec.train_file, "test": spec.test_file},
    )
    label_names = sorted(set(raw["train"]["label"]))
    label_id = {name: i for i, name in enumerate(label_names)}

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=spec.max_length)
        encoded["labels"] = [label_id[y] for y in batch["label"]]
        return encoded

    tokenized = raw.map(tokenize, batched=True, remove_columns=["text", "label"])
    marks.mark("data_ready")

    model = AutoModelForSequenceClassification.from_pretrained(
        spec.model_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id=label_id,
    )
    args = TrainingArguments(
        output_dir=spec.run_dir,
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.eval_batch_size,
        learning_rate=spec.lr,
        weight_decay=spec.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=spec.warmup_steps,
        max_grad_norm=spec.gradient_clip,
        num_train_epochs=spec.epochs,
        seed=spec.seed,
        bf16=spec.bf16,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length" if spec.group_by_length else "random",
    )
    throughput = TrainThroughput()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=tokenized["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[throughput],
    )
    marks.mark("model_ready")

    output = trainer.train()
    marks.mark("train_done")
    prediction = trainer.predict(tokenized["test"])
    accuracy = float(np.mean(prediction.predictions.argmax(-1) == prediction.label_ids))
    samples = spec.epochs * len(tokenized["train"])
    write_result(
        spec,
        marks,
        train_samples=samples,
        train_seconds=throughput.seconds,
        test_accuracy=accuracy,
        torch_threads=torch.get_num_threads(),
        optimizer_steps=trainer.state.global_step,
        trainer_train_samples_per_second=output.metrics.get("train_samples_per_second"),
        optimizer=str(args.optim),
        mixed_precision=str(trainer.accelerator.mixed_precision),
    )


if __name__ == "__main__":
    main(RunSpec.read(sys.argv[1]))
