"""Summarization and translation: data layouts, labels, metrics, warm starts, LoRA, export."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from lmforge.errors import LmforgeError
from lmforge.evaluation.answers import rouge_scores, sentences_on_lines
from lmforge.export import export
from lmforge.predict import predict
from lmforge.tasks.runs import load_task_module
from lmforge.tasks.seq2seq.baselines import lead_sentences
from lmforge.tasks.seq2seq.data import Seq2SeqDataModule
from lmforge.tasks.seq2seq.metrics import bleu_scores
from lmforge.tasks.seq2seq.module import SummarizationModule, generation_settings
from lmforge.train import train
from tests.helpers import compose_config

THINGS = ["images", "music", "mail", "maps", "games", "fonts", "notes", "photos"]
VERBS = ["edit", "play", "sort", "view", "share", "print"]


def _pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Sources of two or three sentences whose first says what the target says."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        verb, thing = rng.choice(VERBS), rng.choice(THINGS)
        extra = " ".join(rng.choice(THINGS) for _ in range(rng.randint(3, 12)))
        rows.append(
            (f"A tool to {verb} {thing}. It also knows {extra}. Written in C.", f"{verb} {thing}")
        )
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def summaries(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("summaries")
    for split, n, seed in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 3)):
        rows = [{"text": s, "summary": t} for s, t in _pairs(n, seed)]
        _write_jsonl(root / f"{split}.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def translations(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translations")
    for split, n, seed in (("train", 48, 1), ("validation", 12, 2), ("test", 12, 3)):
        rows = [{"translation": {"en": s, "xx": t}} for s, t in _pairs(n, seed)]
        _write_jsonl(root / f"{split}.jsonl", rows)
    return root


# One short float32 epoch, quiet, without the start's evaluation: what every tiny run shares.
TINY_RUN = [
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress_bar=null",
    "evaluate_before=false",
    "logger=csv",
]


def _run_config(tmp_path: Path, overrides: list[str], run: str = "run"):
    cfg = compose_config([*TINY_RUN, *overrides])  # the caller's overrides win
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / run)
        cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


def tiny_summarization(tiny_model: Path, data: Path, tmp_path: Path, *extra: str, run: str = "run"):
    return _run_config(
        tmp_path,
        [
            "experiment=debian_summarize_minilm",
            f"model.pretrained={tiny_model}",
            f"data.train_file={data / 'train.jsonl'}",
            "data.source_column=text",
            "data.target_column=summary",
            "data.batch_size=8",
            "data.max_source_length=48",
            "data.max_target_length=8",
            "model.generate.max_new_tokens=6",
            *extra,
        ],
        run,
    )


def _datamodule(tiny_model: Path, tmp_path: Path, **options) -> Seq2SeqDataModule:
    datamodule = Seq2SeqDataModule(
        tokenizer=str(tiny_model), cache_dir=str(tmp_path / "cache"), **options
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def _files(data: Path) -> dict[str, str]:
    return {
        f"{split}_file": str(data / f"{split}.jsonl") for split in ("train", "validation", "test")
    }


# ----- metrics --------------------------------------------------------------------------------
def test_rouge_matches_hand_computed_values():
    scores = rouge_scores(["the cat sat on the mat"], ["the cat is on the mat"])
    # 5 of 6 unigrams shared each way; 3 of 5 bigrams (the cat, on the, the mat); LCS 5 tokens.
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    # Porter stemming: "cats" and "cat" count as the same word.
    assert rouge_scores(["cats"], ["cat"])["rouge1"] == pytest.approx(1.0)


def test_rouge_lsum_reads_sentences_without_downloads():
    assert sentences_on_lines("One two. Three four! Five") == "One two.\nThree four!\nFive"
    # The same sentences in another order: ROUGE-L's one LCS over the text is 2 of 4 tokens;
    # ROUGE-Lsum matches each reference sentence against every output sentence: 4 of 4.
    scores = rouge_scores(["c d. a b."], ["a b. c d."])
    assert scores["rougeL"] == pytest.approx(0.5)
    assert scores["rougeLsum"] == pytest.approx(1.0)


def test_bleu_matches_hand_computed_value():
    scores = bleu_scores(["the cat sat on the mat today"], ["the cat sat on the mat"])
    # n-gram precisions 6/7, 5/6, 4/5, 3/4; the output is longer, so no brevity penalty.
    expected = 100 * math.exp(sum(math.log(p) for p in (6 / 7, 5 / 6, 4 / 5, 3 / 4)) / 4)
    assert scores["bleu"] == pytest.approx(expected, abs=1e-6)
    assert bleu_scores(["same words here"], ["same words here"])["chrf"] == pytest.approx(100.0)
    assert scores["signatures"]["bleu"].startswith("nrefs:1")


def test_lead_takes_the_first_sentences():
    assert lead_sentences("One. Two? Three!  Four", 2) == "One. Two?"
    assert lead_sentences("No end mark", 3) == "No end mark"


def test_max_new_tokens_must_be_set():
    with pytest.raises(LmforgeError, match="max_new_tokens must be set"):
        generation_settings({"num_beams": 2})
    with pytest.raises(LmforgeError, match=r"model\.generate\.beams"):
        generation_settings({"max_new_tokens": 4, "beams": 2})
    assert generation_settings({"max_new_tokens": 4, "top_k": None}) == {"max_new_tokens": 4}


# ----- data -----------------------------------------------------------------------------------
def test_both_layouts_give_the_same_examples_and_labels_pad_with_ignore_index(
    tiny_model, summaries, translations, tmp_path
):
    columns = _datamodule(
        tiny_model,
        tmp_path,
        **_files(summaries),
        source_column="text",
        target_column="summary",
        source_prefix="summarize: ",
        max_source_length=32,
        max_target_length=8,
    )
    dicts = _datamodule(
        tiny_model,
        tmp_path,
        **_files(translations),
        source_lang="en",
        target_lang="xx",
        source_prefix="summarize: ",
        max_source_length=32,
        max_target_length=8,
    )
    for split in ("train", "test"):
        assert columns.splits[split]["input_ids"] == dicts.splits[split]["input_ids"]
        assert columns.splits[split]["labels"] == dicts.splits[split]["labels"]
    tokenizer = columns.tokenizer
    first = tokenizer.decode(columns.splits["train"][0]["input_ids"], skip_special_tokens=True)
    assert first.startswith("summarize : a tool to")  # the prefix comes first
    batch = columns.build_collator()([columns.splits["train"][i] for i in range(4)])
    labels = batch["labels"]
    lengths = [len(columns.splits["train"][i]["labels"]) for i in range(4)]
    for row, length in enumerate(lengths):
        assert (labels[row, length:] == -100).all()
        assert (labels[row, :length] != -100).all()
    # No pad id in any label: padding is the ignore index, never a token to learn.
    assert not (labels == tokenizer.pad_token_id).any()


def test_cut_targets_keep_their_end_token_and_are_reported(tiny_model, summaries, tmp_path):
    datamodule = _datamodule(
        tiny_model,
        tmp_path,
        **_files(summaries),
        source_column="text",
        target_column="summary",
        max_source_length=6,
        max_target_length=3,
    )
    sep = datamodule.tokenizer.sep_token_id
    assert all(len(ids) <= 3 and ids[-1] == sep for ids in datamodule.splits["train"]["labels"])
    report = datamodule.data_report
    assert report["splits"]["train"]["targets_truncated"] == 48  # every "verb thing" + 2 specials
    assert any("data.max_target_length=3" in w for w in report["warnings"])
    assert report["splits"]["train"]["truncated"] == 48  # every source is over 6 tokens


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source_column": "body", "target_column": "summary"}, "body"),
        ({"source_lang": "en", "target_lang": "fr"}, "data.target_lang='fr' is not a language"),
        ({"source_lang": "en"}, "data.source_lang and data.target_lang go together"),
    ],
)
def test_bad_columns_and_languages_are_named(
    tiny_model, summaries, translations, tmp_path, options, message
):
    data = translations if "source_lang" in options and "target_lang" in options else summaries
    with pytest.raises(LmforgeError, match=message):
        _datamodule(tiny_model, tmp_path, train_file=str(data / "train.jsonl"), **options)


def test_an_empty_target_is_refused_when_not_dropped(tiny_model, tmp_path):
    rows = [{"text": f"source {i}.", "summary": "" if i == 3 else f"t{i}"} for i in range(20)]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(
        LmforgeError, match=r"1 row\(s\) with an empty source .* or target .*: row\(s\) 4"
    ):
        _datamodule(
            tiny_model,
            tmp_path,
            train_file=str(path),
            source_column="text",
            target_column="summary",
            drop_empty=False,
        )


# ----- models ---------------------------------------------------------------------------------
def test_a_warm_started_encoder_decoder_takes_its_token_ids_from_the_tokenizer(tiny_model):
    module = SummarizationModule(
        pretrained=str(tiny_model), warm_start=True, generate={"max_new_tokens": 5}
    )
    tokenizer = module.tokenizer_object()
    config = module.model.config
    assert config.decoder_start_token_id == tokenizer.cls_token_id
    assert config.eos_token_id == tokenizer.sep_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    assert module.model.generation_config.max_new_tokens == 5
    assert any("crossattention" in name for name in module.start["newly_initialised"])
    source = tokenizer(["a tool to edit images"], return_tensors="pt")
    output = module.model.generate(**source)
    assert output[0, 0].item() == tokenizer.cls_token_id  # generation starts where training did
    assert 2 <= output.shape[1] <= 6  # the start token + at most max_new_tokens
    specials = set(tokenizer.all_special_ids)
    assert any(t not in specials for t in output[0, 1:].tolist())  # real tokens, not padding


def test_tied_encoder_decoder_shares_weights(tiny_model):
    module = SummarizationModule(
        pretrained=str(tiny_model),
        warm_start=True,
        tie_encoder_decoder=True,
        generate={"max_new_tokens": 5},
    )
    encoder = module.model.encoder.encoder.layer[0].attention.self.query.weight
    decoder = module.model.decoder.bert.encoder.layer[0].attention.self.query.weight
    assert encoder is decoder
    untied = SummarizationModule(
        pretrained=str(tiny_model), warm_start=True, generate={"max_new_tokens": 5}
    )
    # Shared weights count once: every encoder tensor also serves the decoder.
    encoder_size = sum(p.numel() for p in untied.model.encoder.parameters())
    pooler = sum(p.numel() for p in untied.model.encoder.pooler.parameters())
    total = sum(p.numel() for p in module.model.parameters())
    assert total == sum(p.numel() for p in untied.model.parameters()) - (encoder_size - pooler)


def test_the_loss_counts_target_tokens_only(tiny_model, summaries, tmp_path):
    datamodule = _datamodule(
        tiny_model,
        tmp_path,
        **_files(summaries),
        source_column="text",
        target_column="summary",
        max_target_length=8,
    )
    module = SummarizationModule(
        pretrained=str(tiny_model), warm_start=True, generate={"max_new_tokens": 4}
    ).eval()
    batch = datamodule.build_collator()([datamodule.splits["train"][i] for i in range(4)])
    with torch.no_grad():
        loss, _ = module.forward_loss(batch)
        labels = batch["labels"]
        start = module.model.config.decoder_start_token_id
        decoder_ids = torch.cat([torch.full((4, 1), start), labels[:, :-1].clamp(min=0)], dim=1)
        logits = module.model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_ids,
        ).logits
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert module.batch_size_of(batch) == int(keep.sum())


def test_a_run_generates_with_its_settings_and_writes_its_predictions(
    tiny_model, summaries, tmp_path, monkeypatch
):
    seen: list[dict] = []

    from transformers import EncoderDecoderModel

    generate = EncoderDecoderModel.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(EncoderDecoderModel, "generate", spy)
    cfg = tiny_summarization(
        tiny_model,
        summaries,
        tmp_path,
        "model.generate.num_beams=2",
        "model.generate.max_new_tokens=3",
        "model.max_generate_samples=5",
    )
    train(cfg)
    assert seen and all(k["max_new_tokens"] == 3 and k["num_beams"] == 2 for k in seen)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]) == {
        "test/loss",
        "test/rouge1",
        "test/rouge2",
        "test/rougeL",
        "test/rougeLsum",
        "test/gen_len",
    }
    details = metrics["evaluation_details"]
    assert details["val_generation"]["outputs"] == 5  # the validation cap
    assert details["test_generation"]["outputs"] == 12  # the whole test split
    records = [
        json.loads(line) for line in (run / "test_predictions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 12
    sources = {
        json.loads(line)["text"] for line in (summaries / "test.jsonl").read_text().splitlines()
    }
    assert {r["source"] for r in records} == sources
    assert all(set(r) == {"source", "reference", "generated", "score"} for r in records)
    assert (
        "## Best and worst test examples (per-example rougeL)"
        in (run / "comparison.md").read_text()
    )
    # The test metrics are the ROUGE of exactly these records.
    rouge = rouge_scores([r["generated"] for r in records], [r["reference"] for r in records])
    assert metrics["test"]["test/rougeL"] == pytest.approx(100 * rouge["rougeL"], abs=1e-4)
    lead = metrics["comparison"]["baselines"]["lead"]
    assert lead["details"]["k"] in (1, 2, 3) and "test/rougeL" in lead["metrics"]


def test_lora_trains_adapters_and_the_checkpoint_predicts(tiny_model, summaries, tmp_path):
    cfg = tiny_summarization(
        tiny_model,
        summaries,
        tmp_path,
        "model=seq2seq",
        "model.pretrained=null",
        f"model.tokenizer={tiny_model}",
        "model.from_config={model_type: t5, d_model: 32, d_ff: 64, num_layers: 2, num_heads: 2,"
        " d_kv: 16}",
        "finetune=lora",
        "finetune.target_modules=[q,v]",
        "compare.baselines=[]",
    )
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    module = load_task_module(ckpt)
    counts = module.parameter_counts()
    assert 0 < counts["trainable"] < counts["total"] / 4
    assert any("lora_" in name for name, p in module.named_parameters() if p.requires_grad)
    out = tmp_path / "predicted.jsonl"
    pcfg = compose_config(
        [f"ckpt_path={ckpt}", "input=['A tool to edit images. Written in C.']", f"output={out}"],
        config_name="predict",
    )
    with open_dict(pcfg):
        pcfg.paths.output_dir = str(tmp_path / "predict")
    records = [json.loads(line) for line in predict(pcfg).read_text().splitlines()]
    assert len(records) == 1 and isinstance(records[0]["generated"], str)


def test_export_loads_in_a_transformers_pipeline_without_lmforge(tiny_model, summaries, tmp_path):
    train(tiny_summarization(tiny_model, summaries, tmp_path, "compare.baselines=[]"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ecfg = compose_config([f"ckpt_path={ckpt}", "format=onnx"], config_name="export")
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "onnx")
    with pytest.raises(LmforgeError, match="format=onnx: summarization models export as hf only"):
        export(ecfg)
    ecfg = compose_config([f"ckpt_path={ckpt}"], config_name="export")
    with open_dict(ecfg):
        ecfg.paths.output_dir = str(tmp_path / "export")
    folder = export(ecfg)
    assert json.loads((folder / "parity.json").read_text())["passed"]
    assert json.loads((folder / "generation_config.json").read_text())["max_new_tokens"] == 6
    # transformers 5 has no summarization pipeline: the folder loads through its Auto class and
    # generates with its saved generation_config, as the model card says.
    card = (folder / "README.md").read_text()
    assert "AutoModelForSeq2SeqLM.from_pretrained" in card
    script = (
        "import sys, json\n"
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer\n"
        f"tokenizer = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        f"model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r})\n"
        "inputs = tokenizer(['A tool to edit images. It also knows maps. Written in C.'],"
        " return_tensors='pt')\n"
        "ids = model.generate(**inputs)\n"
        "assert ids.shape[1] <= 1 + model.generation_config.max_new_tokens\n"
        "text = tokenizer.batch_decode(ids, skip_special_tokens=True)\n"
        "assert 'lmforge' not in sys.modules\n"
        "print(json.dumps([{'summary_text': t.strip()} for t in text]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(out[0]["summary_text"], str)
    # lmforge-predict on the exported folder and on the checkpoint give the same text.
    texts = "['A tool to edit images. It also knows maps. Written in C.']"

    def predicted(source: str, run: str) -> list[dict]:
        pcfg = compose_config([source, f"input={texts}"], config_name="predict")
        with open_dict(pcfg):
            pcfg.paths.output_dir = str(tmp_path / run)
        return [json.loads(line) for line in predict(pcfg).read_text().splitlines()]

    from_checkpoint = predicted(f"ckpt_path={ckpt}", "a")
    assert predicted(f"model_dir={folder}", "b") == from_checkpoint
    assert from_checkpoint[0]["generated"] == out[0]["summary_text"]


def test_a_t5_checkpoint_without_a_source_prefix_is_warned_about(tiny_model, tmp_path, caplog):
    from transformers import T5Config, T5ForConditionalGeneration

    folder = tmp_path / "t5"
    config = T5Config(vocab_size=128, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    generate = {"max_new_tokens": 4}
    with caplog.at_level("WARNING"):
        SummarizationModule(pretrained=str(folder), tokenizer=str(tiny_model), generate=generate)
    assert "is a T5 checkpoint and data.source_prefix is empty" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        SummarizationModule(
            pretrained=str(folder),
            tokenizer=str(tiny_model),
            generate=generate,
            source_prefix="summarize: ",
        )
    assert "T5 checkpoint" not in caplog.text


def test_a_translation_run_records_bleu_chrf_and_their_signatures(translations, tmp_path):
    cfg = _run_config(
        tmp_path,
        [
            "experiment=debian_translate_en_de",
            f"data.train_file={translations / 'train.jsonl'}",
            "data.target_lang=xx",
            "data.batch_size=16",
            "model.from_config.d_model=16",
            "model.from_config.encoder_layers=1",
            "model.from_config.decoder_layers=1",
            "model.from_config.encoder_ffn_dim=32",
            "model.from_config.decoder_ffn_dim=32",
            "model.generate.max_new_tokens=4",
            "model.generate.num_beams=2",
        ],
    )
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"test/loss", "test/bleu", "test/chrf", "test/gen_len"}
    signatures = metrics["evaluation_details"]["metric_signatures"]
    assert "tok:13a" in signatures["bleu"] and "nc:6" in signatures["chrf"]
    records = [
        json.loads(line)
        for line in (tmp_path / "run" / "test_predictions.jsonl").read_text().splitlines()
    ]
    scores = bleu_scores([r["generated"] for r in records], [r["reference"] for r in records])
    assert metrics["test"]["test/chrf"] == pytest.approx(scores["chrf"], abs=1e-3)
    copy = metrics["comparison"]["baselines"]["copy_source"]["metrics"]
    assert copy["test/chrf"] > 0


def test_validation_generates_every_n_epochs_and_computes_the_loss_every_epoch(
    tiny_model, summaries, tmp_path
):
    import csv

    cfg = tiny_summarization(
        tiny_model,
        summaries,
        tmp_path,
        "trainer.max_epochs=2",
        "model.generate_every_n_epochs=2",
        "compare.baselines=[]",
    )
    train(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    validation = [r for r in rows if r.get("val/loss")]
    losses = [r["epoch"] for r in validation]
    generated = [r["epoch"] for r in validation if r.get("val/rougeL")]
    assert losses[:2] == ["0", "1"]  # the loss every epoch of the fit
    assert generated[0] == "1"  # text metrics at the end of the second epoch only
    assert "0" not in generated
