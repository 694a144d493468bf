"""Streamed training data (data.streaming=true): the same order for the same seed, every example
exactly once per pass across ranks and workers, a resumed stream continuing where it stopped,
bounded data checks, and the settings a stream needs."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.utils.data import DataLoader

from lmforge.data.streaming import StreamedTrainingSet
from lmforge.errors import LmforgeError
from lmforge.tasks.language_modeling.data import LanguageModelingDataModule


def corpus(root: Path, files: int = 4, per_file: int = 15) -> Path:
    """`files` text files of `per_file` distinct one-line documents, plus validation/test."""
    root.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = [f"document {f * per_file + i} of file {f}" for i in range(per_file)]
        (root / f"train-{f}.txt").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    (root / "validation.txt").write_text("a validation line\nanother one\n", encoding="utf-8")
    (root / "test.txt").write_text("a test line\n", encoding="utf-8")
    return root


def streamed(tmp_path: Path, tiny_model: Path, train: str, **kwargs) -> LanguageModelingDataModule:
    root = Path(train).parent
    kwargs.setdefault("shuffle_buffer", 8)
    dm = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=train,
        validation_file=str(root / "validation.txt"),
        test_file=str(root / "test.txt"),
        cache_dir=str(tmp_path / "cache"),
        block_size=16,
        objective="causal",
        mode="truncate",
        streaming=True,
        **kwargs,
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def decoded(dm: LanguageModelingDataModule, examples) -> list[str]:
    return [dm.tokenizer.decode(e["input_ids"], skip_special_tokens=True) for e in examples]


def one_pass(dm, rank: int = 0, world: int = 1) -> list[str]:
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    stream = dm._training_stream()
    stream.set_epoch(0)
    return decoded(dm, stream)


def test_the_same_seed_streams_the_same_order_and_each_pass_reshuffles(tmp_path, tiny_model):
    root = corpus(tmp_path / "corpus", files=1, per_file=40)
    dm = streamed(tmp_path, tiny_model, str(root / "train-0.txt"), seed=3)
    first, again = one_pass(dm), one_pass(dm)
    assert first == again and len(first) == 40
    assert first != [f"document {i} of file 0" for i in range(40)]  # shuffled
    assert sorted(first) == sorted(f"document {i} of file 0" for i in range(40))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    stream = dm._training_stream()
    stream.set_epoch(1)
    second_pass = decoded(dm, stream)
    assert sorted(second_pass) == sorted(first) and second_pass != first
    other_seed = streamed(tmp_path / "b", tiny_model, str(root / "train-0.txt"), seed=4)
    assert one_pass(other_seed) != first


def test_two_ranks_by_two_workers_read_every_example_exactly_once_per_pass(tmp_path, tiny_model):
    root = corpus(tmp_path / "corpus", files=4, per_file=15)
    dm = streamed(tmp_path, tiny_model, str(root / "train-*.txt"), seed=1)
    seen: list[str] = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        # One pass per worker: 2 files per rank, 1 file per worker, 15 documents each.
        loader = DataLoader(
            StreamedTrainingSet(dm._training_stream, batch_size=5),
            batch_size=5,
            num_workers=2,
            collate_fn=lambda batch: batch,
        )
        batches = list(itertools.islice(iter(loader), 6))  # 30 examples: this rank's pass
        seen += decoded(dm, [e for batch in batches for e in batch])
    assert len(seen) == 60
    assert sorted(seen) == sorted(f"document {i} of file {i // 15}" for i in range(60))


def test_a_resumed_stream_continues_with_the_batches_the_uninterrupted_one_had_next(
    tmp_path, tiny_model
):
    root = corpus(tmp_path / "corpus", files=2, per_file=12)
    dm = streamed(tmp_path, tiny_model, str(root / "train-*.txt"), seed=5)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)

    def batches(skip: int, count: int, workers: int) -> list[list[str]]:
        loader = DataLoader(
            StreamedTrainingSet(dm._training_stream, batch_size=4, skip_batches=skip),
            batch_size=4,
            num_workers=workers,
            collate_fn=lambda batch: batch,
        )
        return [decoded(dm, b) for b in itertools.islice(iter(loader), count)]

    # 12 batches cross the end of the first pass (24 examples = 6 batches) into the next.
    whole = batches(0, 12, workers=0)
    assert batches(3, 9, workers=0) == whole[3:]
    assert batches(7, 5, workers=0) == whole[7:]
    # With workers, a resumed loader starts again at worker 0: the batches are the same, in
    # rounds of one batch per worker whose order may rotate (here 4,3,6,5,... for 3,4,5,6,...).
    whole = batches(0, 12, workers=2)
    for skip in (3, 4):
        resumed = batches(skip, 8, workers=2)
        assert sorted(resumed) == sorted(whole[skip : skip + 8]), skip
    assert batches(4, 8, workers=2) == whole[4:12]  # an even number of batches: exact


def test_the_checks_read_the_head_of_the_stream_and_say_so(tmp_path, tiny_model):
    root = corpus(tmp_path / "corpus", files=1, per_file=40)
    dm = streamed(tmp_path, tiny_model, str(root / "train-0.txt"), stream_check_rows=10)
    assert len(dm.splits["train"]) == 10  # the head, for the checks and the baselines
    dm.report()
    assert dm.data_report["splits"]["train"]["rows"] == 10
    assert any("first 10 rows of the stream" in n for n in dm.data_report["notes"])


def test_what_a_stream_needs_is_asked_for(tmp_path, tiny_model):
    from omegaconf import OmegaConf

    from lmforge.config.validation import check_streaming
    from tests.helpers import classification_data_error, make_rows, write_csv

    root = corpus(tmp_path / "corpus", files=1)
    no_validation = LanguageModelingDataModule(
        tokenizer=str(tiny_model),
        train_file=str(root / "train-0.txt"),
        cache_dir=str(tmp_path / "cache"),
        streaming=True,
    )
    with pytest.raises(LmforgeError, match="cannot be carved"):
        no_validation.prepare_data()
    write_csv(tmp_path / "cls" / "train.csv", make_rows(20, seed=1))
    message = classification_data_error(
        tmp_path, tiny_model, train_file=str(tmp_path / "cls" / "train.csv"), streaming=True
    )
    assert "does not stream its training data" in message
    cfg = OmegaConf.create({"data": {"streaming": True}, "trainer": {"max_steps": -1}})
    with pytest.raises(LmforgeError, match=r"trainer\.max_steps=-1"):
        check_streaming(cfg)
    cfg.trainer.max_steps = 100
    cfg.trainer.val_check_interval = 0.5
    with pytest.raises(LmforgeError, match="whole number"):
        check_streaming(cfg)


def streamed_run(root: Path, tiny_model: Path, tiny_data: Path, tiny_text: Path, *extra: str):
    from tests.helpers import QUICK, TINY_GPT2, compose_config, tiny_overrides

    return compose_config(
        [
            *tiny_overrides(tiny_model, tiny_data),
            *QUICK,
            "experiment=debian_lm_gpt2_scratch",
            f"data.train_file={tiny_text / 'train.txt'}",
            *TINY_GPT2,
            "data.block_size=16",
            "data.streaming=true",
            "data.shuffle_buffer=32",
            "scheduler=constant",
            "trainer.val_check_interval=2",
            "model.generate_prompts=[]",
            "test=true",
            *extra,
        ]
    )


def test_a_streamed_run_trains_its_steps_and_resumes_to_the_uninterrupted_result(
    tmp_path, tiny_model, tiny_data, tiny_text
):
    import json

    from omegaconf import open_dict

    from lmforge.train import train

    def run(name: str, steps: int, ckpt: Path | None = None) -> dict:
        cfg = streamed_run(tmp_path, tiny_model, tiny_data, tiny_text, f"trainer.max_steps={steps}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
            cfg.paths.cache_dir = str(tmp_path / "cache")
        train(cfg, ckpt_path=str(ckpt) if ckpt else None)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    whole = run("whole", 8)
    assert whole["global_step"] == 8
    assert any("streamed" in n for n in whole["data_checks"]["notes"])
    run("first", 5)
    resumed = run("resumed", 8, ckpt=tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 8
    for key, value in whole["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6), key


def test_a_streamed_run_under_ddp_deals_the_stream_to_both_ranks(
    tmp_path, tiny_model, tiny_data, tiny_text
):
    import json

    from omegaconf import open_dict

    from lmforge.train import train

    cfg = streamed_run(
        tmp_path, tiny_model, tiny_data, tiny_text, "trainer=ddp_sim", "trainer.max_steps=4"
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "ddp")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and metrics["test"]["test/loss"] > 0


def streamed_examples(dm) -> list[dict]:
    """One pass over a set-up datamodule's training stream (one process)."""
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    stream = dm._training_stream()
    stream.set_epoch(0)
    return list(stream)


def test_streamed_chats_train_the_same_examples_packed_as_they_are_read(tmp_path):
    from lmforge.tasks.language_modeling.instructions import InstructionDataModule
    from tests.tasks.language_modeling.runs import one_file_datamodule

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What does package {i} do?"},
                {"role": "assistant", "content": "It edits " + "text " * (i % 7) + "fast."},
            ]
        }
        for i in range(30)
    ]
    rows.insert(5, {"messages": []})  # no turns: left out of the stream as of the split

    def examples(dm) -> list[tuple]:
        """Each packed example's (token ids, labels) pair, cut at its position restart."""
        found = []
        for row in dm:
            starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [
                len(row["input_ids"])
            ]
            for a, b in itertools.pairwise(starts):
                found.append((tuple(row["input_ids"][a:b]), tuple(row["labels"][a:b])))
        return sorted(found)

    options = dict(format="messages", packing=True, max_length=64, drop_empty=True)
    whole = one_file_datamodule(InstructionDataModule, tmp_path / "whole", rows, **options)
    stream = one_file_datamodule(
        InstructionDataModule,
        tmp_path / "stream",
        rows,
        streaming=True,
        shuffle_buffer=8,
        **options,
    )
    packed = streamed_examples(stream)
    assert all(len(r["input_ids"]) <= 64 for r in packed) and len(packed) < 30
    assert set(packed[0]) == {"input_ids", "labels", "position_ids"}
    assert examples(packed) == examples(whole.splits["train"])
    assert len(examples(packed)) == 30


def test_streamed_classification_takes_its_labels_from_data_label_names(tmp_path, tiny_model):
    from tests.helpers import classification_data, classification_data_error, make_rows, write_csv

    for split, n, seed in (("train", 30, 1), ("validation", 9, 2), ("test", 9, 3)):
        write_csv(tmp_path / "cls" / f"{split}.csv", make_rows(n, seed=seed))
    files = {
        f"{s}_file": str(tmp_path / "cls" / f"{s}.csv") for s in ("train", "validation", "test")
    }
    message = classification_data_error(tmp_path / "a", tiny_model, streaming=True, **files)
    assert "data.label_names" in message and "does not stream" in message
    names = ["sports", "music", "cooking"]  # id order as configured, not sorted
    message = classification_data_error(
        tmp_path / "b", tiny_model, streaming=True, label_names=names, few_shot_k=2, **files
    )
    assert "data.few_shot_k" in message
    whole = classification_data(tmp_path / "c", tiny_model, label_names=names, **files)
    stream = classification_data(
        tmp_path / "d", tiny_model, label_names=names, streaming=True, **files
    )
    got = sorted((tuple(e["input_ids"]), e["labels"]) for e in streamed_examples(stream))
    train = whole.splits["train"]
    assert got == sorted(zip(map(tuple, train["input_ids"]), train["labels"], strict=True))
    assert {label for _, label in got} == {0, 1, 2} and stream.label_names == names

    rows = make_rows(30, seed=1)
    rows[20]["label"] = "poetry"  # a label the names do not have, past the checked head
    write_csv(tmp_path / "cls" / "train.csv", rows)
    stream = classification_data(
        tmp_path / "e",
        tiny_model,
        label_names=names,
        streaming=True,
        stream_check_rows=10,
        **files,
    )
    with pytest.raises(LmforgeError, match="'poetry'"):
        streamed_examples(stream)


def test_streamed_pairs_are_the_pairs_of_the_whole_split(tmp_path, tiny_model):
    import json

    from lmforge.tasks.seq2seq.data import Seq2SeqDataModule

    for split, n in (("train", 25), ("validation", 5), ("test", 5)):
        rows = [
            {"source": f"source number {i} of {split}", "target": f"target {i}"} for i in range(n)
        ]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def datamodule(name: str, **options) -> Seq2SeqDataModule:
        dm = Seq2SeqDataModule(
            tokenizer=str(tiny_model),
            cache_dir=str(tmp_path / name),
            **{f"{s}_file": str(tmp_path / f"{s}.jsonl") for s in ("train", "validation", "test")},
            **options,
        )
        dm.prepare_data()
        dm.setup("fit")
        return dm

    train = datamodule("whole").splits["train"]
    streamed = streamed_examples(datamodule("stream", streaming=True, shuffle_buffer=4))
    assert sorted((tuple(e["input_ids"]), tuple(e["labels"])) for e in streamed) == sorted(
        zip(map(tuple, train["input_ids"]), map(tuple, train["labels"]), strict=True)
    )


def test_a_streamed_chat_run_trains_packed_sequences_and_is_scored(tmp_path):
    import json

    from lmforge.config.resources import shipped_data
    from tests.tasks.language_modeling.runs import tiny_run

    chats = shipped_data("debian_chat/validation.jsonl")
    run = tiny_run(
        tmp_path,
        "debian_chat_gpt2",
        f"data.train_file={shipped_data('debian_chat/train.jsonl')}",
        f"data.validation_file={chats}",
        f"data.test_file={chats}",
        "data.streaming=true",
        "data.packing=true",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "model.generate_prompts=[]",
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    assert metrics["test"]["test/loss"] > 0 and "test/answer_f1" in metrics["test"]


def test_a_streamed_classification_run_fits_its_baselines_on_the_head_and_says_so(
    tmp_path, tiny_model, tiny_data
):
    import json

    from omegaconf import open_dict

    from lmforge.train import train
    from tests.helpers import QUIET, compose_config, tiny_overrides

    cfg = compose_config(
        [
            *tiny_overrides(tiny_model, tiny_data),
            *QUIET,
            "data.streaming=true",
            "data.stream_check_rows=40",
            "data.label_names=[cooking,music,sports]",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "evaluate_before=false",
            "compare.baselines=[majority]",
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and 0 <= metrics["test"]["test/acc"] <= 1
    comparison = (tmp_path / "run" / "comparison.md").read_text()
    assert "fitted on the first 40 rows of the streamed training split" in comparison


@pytest.mark.parametrize(
    ("max_epochs", "max_steps", "title"),
    [(-1, 120, "Epoch 3 (max_steps 120)"), (5, -1, "Epoch 3/4"), (5, 120, "Epoch 3/4")],
)
def test_the_progress_bar_of_a_run_bounded_by_steps_names_its_step_budget(
    max_epochs, max_steps, title
):
    """A streamed run has max_epochs=-1: Lightning's bar would read "Epoch 3/-2"."""
    import lightning.pytorch as pl

    from lmforge.runtime.callbacks import ProgressBar

    bar = ProgressBar()
    # Lightning attaches the trainer to its callbacks when fitting starts.
    bar._trainer = pl.Trainer(
        callbacks=[bar], max_epochs=max_epochs, max_steps=max_steps, logger=False
    )
    assert bar._get_train_description(3).strip() == title
