"""lmforge-predict: every task family from a checkpoint and from an exported folder, input and
output formats, the sliding window of long NER inputs, and the errors a user can cause."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lmforge.data.datamodule import load_tokenizer
from lmforge.errors import LmforgeError
from lmforge.tasks.runs import load_task_module
from lmforge.tasks.token_classification.predict import best_window_positions
from tests.helpers import (
    ENV,
    FILLER,
    REPO,
    compose_config,
    read_records,
    script,
    train_tiny,
)


@pytest.fixture(scope="module")
def classifier(tiny_classifier) -> Path:
    return tiny_classifier


@pytest.fixture(scope="module")
def tagger(tiny_tagger) -> Path:
    return tiny_tagger


@pytest.fixture(scope="module")
def causal_lm(tiny_causal_lm) -> Path:
    return tiny_causal_lm


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory, tiny_model, tiny_data, tiny_text) -> Path:
    return train_tiny(
        tmp_path_factory.mktemp("masked"),
        tiny_model,
        tiny_data,
        "experiment=debian_mlm_minilm",
        f"model.pretrained={tiny_model}",
        f"data.train_file={tiny_text / 'train.txt'}",
        "data.block_size=32",
        "data.max_train_samples=null",
    )


def export_folder(ckpt: Path, folder: Path, settings: dict | None = None) -> Path:
    """What lmforge-export writes: save_pretrained model + tokenizer (+ lmforge.json)."""
    module = load_task_module(ckpt)
    module.export_model().save_pretrained(folder)
    load_tokenizer(str(ckpt.parent.parent / "tokenizer")).save_pretrained(folder)
    if settings is not None:
        (folder / "lmforge.json").write_text(json.dumps(settings))
    return folder


def assert_same_records(actual, expected, where: str = "record") -> None:
    """Equal structure and strings, floats equal up to float32 noise."""
    if isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-4, abs=1e-6), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same_records(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_records(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----- config ---------------------------------------------------------------------------------
def test_predict_config_composes_and_every_key_is_read():
    cfg = compose_config(["ckpt_path=x.ckpt", "input=a text"], config_name="predict")
    assert cfg.task_name == "predict" and cfg.output_format == "jsonl" and cfg.device == "cpu"
    package = REPO / "src/lmforge"
    # The command's own keys are read by predict.py, the family options by the predictors.
    source = "\n".join(
        path.read_text()
        for path in [package / "predict.py", *sorted(package.glob("tasks/*/predict.py"))]
    )
    read_elsewhere = {"task_name", "resume", "paths"}  # the run-directory settings
    for key in set(cfg) - read_elsewhere:
        read = (f"cfg.{key}", f"options.{key}", f'options.get("{key}")')
        assert any(form in source for form in read), key
    for key in cfg.generate:
        # Read one by one, or named among the settings a family passes on (OVERRIDABLE).
        read = (f"options.{key}", f"generate.{key}", f'"{key}"')
        assert any(form in source for form in read), key


# ----- text classification ------------------------------------------------------------------
def test_classification_of_a_csv_file_and_a_typed_text(classifier, run_predict, tmp_path):
    rows = [{"id": i, "text": t} for i, t in enumerate(["match goal team", "oven flour", "drum"])]
    data = tmp_path / "new.csv"
    with open(data, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    labels = {"cooking", "music", "sports"}
    output = run_predict(f"ckpt_path={classifier}", f"input={data}", "batch_size=2")
    assert output.name == "predictions.jsonl" and (output.parent / "config.yaml").is_file()
    records = read_records(output)
    assert [r["text"] for r in records] == [r["text"] for r in rows]
    for record in records:
        assert set(record) == {"text", "label", "probabilities"}
        assert set(record["probabilities"]) == labels
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["label"] == max(record["probabilities"], key=record["probabilities"].get)
    (typed,) = read_records(run_predict(f"ckpt_path={classifier}", "input='oven flour'"))
    assert_same_records(typed, records[1])  # batching and padding change nothing


def test_csv_output_and_a_file_is_never_overwritten(classifier, run_predict, tmp_path):
    texts = write_lines(tmp_path / "texts.txt", ["match goal", "", "guitar song chord"])
    target = tmp_path / "out" / "preds.csv"
    output = run_predict(
        f"ckpt_path={classifier}", f"input={texts}", f"output={target}", "output_format=csv"
    )
    assert output == target
    records = read_records(target)
    assert [r["text"] for r in records] == ["match goal", "guitar song chord"]  # blank skipped
    assert sum(records[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    before = target.read_bytes()
    with pytest.raises(LmforgeError, match="already exists"):
        run_predict(
            f"ckpt_path={classifier}", f"input={texts}", f"output={target}", "output_format=csv"
        )
    assert target.read_bytes() == before


def test_multi_label_threshold_from_an_exported_folder(classifier, run_predict, tmp_path):
    folder = export_folder(classifier, tmp_path / "export", {"multi_label": True, "threshold": 0.4})
    (record,) = read_records(run_predict(f"model_dir={folder}", "input='match goal'"))
    probabilities = record["probabilities"]
    assert set(record) == {"text", "labels", "probabilities"}
    assert record["labels"] == [label for label, p in probabilities.items() if p > 0.4]
    assert all(0 < p < 1 for p in probabilities.values())
    (lower,) = read_records(
        run_predict(f"model_dir={folder}", "input='match goal'", "threshold=0.01")
    )
    assert lower["labels"] == sorted(probabilities)  # every sigmoid is above 0.01


# ----- token classification -----------------------------------------------------------------
def test_ner_on_a_text_file_matches_the_module_tagger(tagger, run_predict, tmp_path):
    lines = [
        "the a of written in Python .",
        "some new this runs on Linux kernel .",
        "it is written in Rust",
    ]
    records = read_records(
        run_predict(f"ckpt_path={tagger}", f"input={write_lines(tmp_path / 'in.txt', lines)}")
    )
    module = load_task_module(tagger).eval()
    tokenizer = load_tokenizer(str(tagger.parent.parent / "tokenizer"))
    expected = module.tag_words([line.split() for line in lines], tokenizer)
    assert [r["words"] for r in records] == [line.split() for line in lines]
    assert [r["tags"] for r in records] == [e["tags"] for e in expected]
    spans = [span for record in records for span in record["entities"]]
    assert spans, "the tiny tagger should find some entity"
    for record in records:
        assert set(record) == {"text", "words", "tags", "entities"}
        assert set(record["tags"]) <= set(module.label_names)
        for span in record["entities"]:
            assert span["text"] == " ".join(record["words"][span["start"] : span["end"] + 1])
            assert span["type"] in {"LANG", "OS"} and 0 < span["score"] <= 1


def test_ner_reads_word_lists_from_jsonl(tagger, run_predict, tmp_path):
    data = tmp_path / "words.jsonl"
    data.write_text(json.dumps({"tokens": ["runs", "on", "Linux"], "id": 1}) + "\n")
    (record,) = read_records(run_predict(f"ckpt_path={tagger}", f"input={data}"))
    assert record["words"] == ["runs", "on", "Linux"] and record["text"] == "runs on Linux"


def test_long_ner_input_is_tagged_in_windows_without_losing_words(tagger, run_predict):
    tokenizer = load_tokenizer(str(tagger.parent.parent / "tokenizer"))
    filler = FILLER.split()
    words = [filler[i % len(filler)] for i in range(45)] + ["written", "in", "Python", "."]
    assert all(len(tokenizer.tokenize(w)) == 1 for w in words)  # word k = token k + 1
    max_length, stride = 16, 4
    (long,) = read_records(
        run_predict(
            f"ckpt_path={tagger}",
            f"input='{' '.join(words)}'",
            f"max_length={max_length}",
            f"stride={stride}",
            "batch_size=3",
        )
    )
    assert long["words"] == words and len(long["tags"]) == len(words)
    # Windows hold 14 words and start every 10; the last starts where it reaches the end.
    room, step = max_length - 2, max_length - 2 - stride
    last = next(s for s in range(0, len(words), step) if s + room >= len(words))
    only_in_last = last - step + room  # words after the second-to-last window
    (alone,) = read_records(run_predict(f"ckpt_path={tagger}", f"input='{' '.join(words[last:])}'"))
    assert long["tags"][only_in_last:] == alone["tags"][only_in_last - last :]


def test_best_window_positions_prefer_the_window_centre():
    # words 0-5 in two windows of 4 word tokens overlapping by 2: [0 1 2 3] and [2 3 4 5];
    # word 2 sits at the edge of neither, word 3 at the first window's edge.
    windows = [[None, 0, 1, 2, 3, None], [None, 2, 3, 4, 5, None]]
    assert best_window_positions(windows) == {
        0: (0, 1),
        1: (0, 2),
        2: (0, 3),  # a tie (margin 1 in both) keeps the earlier window
        3: (1, 2),
        4: (1, 3),
        5: (1, 4),
    }
    # a word cut by the window boundary: its start (window 0) wins over its tail (window 1)
    split = [[None, 0, 1, 1, None], [None, 1, 2, 3, None]]
    assert best_window_positions(split)[1] == (0, 2)


# ----- language models ----------------------------------------------------------------------
def test_causal_lm_generations(causal_lm, run_predict):
    prompts = "input=[match goal,the recipe oven flour]"
    greedy = read_records(
        run_predict(f"ckpt_path={causal_lm}", prompts, "generate.max_new_tokens=4")
    )
    assert [r["text"] for r in greedy] == ["match goal", "the recipe oven flour"]
    assert all(len(r["generations"]) == 1 for r in greedy)
    tokenizer = load_tokenizer(str(causal_lm.parent.parent / "tokenizer"))
    for record in greedy:
        (generation,) = record["generations"]
        assert generation["text"].startswith(record["text"])
        assert generation["text"].endswith(generation["continuation"])
        assert len(tokenizer.tokenize(generation["continuation"])) <= 4
    sampling = [
        prompts,
        "generate.max_new_tokens=6",
        "generate.do_sample=true",
        "generate.num_return_sequences=3",
        "seed=3",
    ]
    sampled = read_records(run_predict(f"ckpt_path={causal_lm}", *sampling))
    assert all(len(r["generations"]) == 3 for r in sampled)
    assert sampled == read_records(run_predict(f"ckpt_path={causal_lm}", *sampling))  # seeded


def test_left_padded_prompts_generate_as_they_would_alone(tiny_model):
    from omegaconf import OmegaConf
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmforge.tasks.language_modeling.predict import CausalLMPredictor
    from lmforge.tasks.predictor import InputText

    tokenizer = load_tokenizer(str(tiny_model))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=64)
    options = compose_config(["input=x"], config_name="predict")
    options = OmegaConf.merge(options, {"generate": {"max_new_tokens": 5}})
    model = GPT2LMHeadModel(config).eval()
    predictor = CausalLMPredictor(model, tokenizer, {"max_length": 16}, options, "cpu")
    prompts = [InputText("match goal team win season"), InputText("oven")]
    together = predictor.predict(prompts)
    alone = [predictor.predict([p])[0] for p in prompts]
    assert together == alone
    assert all(r["generations"][0]["continuation"] for r in together)


def test_masked_lm_fills_every_mask(masked_lm, run_predict, tmp_path):
    data = tmp_path / "masked.jsonl"
    rows = [{"text": "match [MASK] team win"}, {"text": "the [MASK] oven [MASK] flour"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_records(run_predict(f"ckpt_path={masked_lm}", f"input={data}", "fill_top_k=3"))
    assert [len(r["fills"]) for r in records] == [1, 2]
    for fills in (f for r in records for f in r["fills"]):
        assert len(fills) == 3
        scores = [c["score"] for c in fills]
        assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
        assert not {c["token"] for c in fills} & {"[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"}
    with pytest.raises(LmforgeError, match=r"input text 2 has no mask token: write \[MASK\]"):
        run_predict(f"ckpt_path={masked_lm}", "input=['a [MASK] b','no mask here']")


# ----- exported folders -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("run", "typed"),
    [
        ("classifier", "match goal team"),
        ("tagger", "it is written in Python"),
        ("causal_lm", "match goal"),
        ("masked_lm", "match [MASK] team"),
    ],
)
def test_an_exported_folder_predicts_like_its_checkpoint(
    run, typed, request, run_predict, tmp_path
):
    ckpt = request.getfixturevalue(run)
    folder = export_folder(ckpt, tmp_path / "export")  # no lmforge.json: task from the config
    settings = ["generate.max_new_tokens=3", f"input='{typed}'", "max_length=32"]
    (from_checkpoint,) = read_records(run_predict(f"ckpt_path={ckpt}", *settings))
    (from_folder,) = read_records(run_predict(f"model_dir={folder}", *settings))
    assert_same_records(from_folder, from_checkpoint)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predictions_on_the_gpu_match_the_cpu(classifier, run_predict):
    texts = "input=['match goal team','oven flour sugar']"
    on_cpu = read_records(run_predict(f"ckpt_path={classifier}", texts))
    on_gpu = read_records(run_predict(f"ckpt_path={classifier}", texts, "device=cuda"))
    assert_same_records(on_gpu, on_cpu)


# ----- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["input=x"], "exactly one of ckpt_path"),
        (["input=x", "ckpt_path={ckpt}", "model_dir={tmp}"], "both were given"),
        (["input=x", "ckpt_path={tmp}/none.ckpt"], "no such checkpoint file"),
        (["input=x", "model_dir={tmp}"], "no config.json there"),
        (["input=x", "model_dir={tmp}/ts"], "export of format 'torchscript'.*format=hf"),
        (["input=x", "model_dir={tmp}/onnx"], "names the graph 'model.onnx', which is not in"),
        (["input={tmp}/missing.csv", "ckpt_path={ckpt}"], "input='.*missing.csv': no such file"),
        (["input={tmp}/table.xlsx", "ckpt_path={ckpt}"], "unsupported file type '.xlsx'"),
        (["input={tmp}/table.csv", "ckpt_path={ckpt}"], r"no column 'text'.*columns found: body"),
        (["input={tmp}/blank.txt", "ckpt_path={ckpt}"], "holds no text"),
        (["input=''", "ckpt_path={ckpt}"], "input is empty"),
        (["input=x", "ckpt_path={ckpt}", "output={tmp}/blank.txt"], "never overwrites"),
        (["input=x", "ckpt_path={ckpt}", "output=a.csv"], "set output_format=csv"),
        (
            ["input=x", "ckpt_path={ckpt}", "batch_size=0", "device=tpu"],
            "device must be one of 'auto', 'cpu', 'cuda', got 'tpu'. batch_size must be a whole "
            "number of 1 or more, got 0.",
        ),
        (
            ["input=x", "ckpt_path={ckpt}", "generate.top_p=1.5"],
            r"generate.top_p must be a number in \(0, 1\]",
        ),
        (["input=x", "ckpt_path={ckpt}", "generate.num_return_sequences=2"], "do_sample=true"),
    ],
)
def test_errors_name_the_key_and_what_was_expected(
    overrides, expected, classifier, run_predict, tmp_path
):
    (tmp_path / "table.xlsx").write_text("x")
    (tmp_path / "table.csv").write_text("body\nsome text\n")
    (tmp_path / "blank.txt").write_text("\n  \n")
    for fmt in ("ts", "onnx"):
        (tmp_path / fmt).mkdir()
        config = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
        (tmp_path / fmt / "config.json").write_text(json.dumps(config))
        info = {"format": "torchscript" if fmt == "ts" else "onnx", "model_file": None}
        (tmp_path / fmt / "lmforge.json").write_text(json.dumps(info))
    filled = [o.format(ckpt=classifier, tmp=tmp_path) for o in overrides]
    with pytest.raises(LmforgeError, match=expected):
        run_predict(*filled)


def test_stride_is_checked_against_the_window(tagger, run_predict):
    with pytest.raises(LmforgeError, match="stride=14 must be less than the 14 word tokens"):
        run_predict(f"ckpt_path={tagger}", "input='a b'", "stride=14", "max_length=16")


# ----- the console script ---------------------------------------------------------------------
def test_console_script_writes_into_its_run_directory(classifier, tmp_path):
    done = subprocess.run(
        [
            script("lmforge-predict"),
            f"ckpt_path={classifier}",
            "input='match goal team'",
            "hydra.run.dir=out",
        ],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = read_records(tmp_path / "out" / "predictions.jsonl")
    assert record["text"] == "match goal team" and record["label"] in record["probabilities"]
    saved = OmegaConf.load(tmp_path / "out" / "config.yaml")
    assert saved.input == "match goal team"
    log = (tmp_path / "out" / "predict.log").read_text()
    assert "Predicted 1 input(s)" in log
    # Only what concerns the run: no warning of bitsandbytes (imported by peft), which it
    # does not use.
    assert "kernels-community" not in log + done.stdout + done.stderr


def test_entry_point_prints_errors_without_a_traceback(classifier, make_cfg, capsys, monkeypatch):
    from lmforge.cli import run_prediction

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = make_cfg(f"ckpt_path={classifier}", "input=missing.jsonl", config_name="predict")
    with pytest.raises(SystemExit) as exit_info:
        run_prediction(cfg)
    assert exit_info.value.code == 1
    assert "lmforge: error: input='missing.jsonl': no such file" in capsys.readouterr().err


def test_a_lora_checkpoint_predicts_like_its_merged_export(
    tiny_model, tiny_data, run_predict, tmp_path
):
    ckpt = train_tiny(tmp_path / "lora", tiny_model, tiny_data, "finetune=lora")
    assert all(
        "lora_" in k or "classifier" in k
        for k in torch.load(ckpt, weights_only=False)["state_dict"]
    )
    texts = write_lines(tmp_path / "texts.txt", ["match goal team", "oven flour sugar", "drum"])
    from_checkpoint = read_records(run_predict(f"ckpt_path={ckpt}", f"input={texts}"))
    folder = export_folder(ckpt, tmp_path / "merged")
    from_folder = read_records(run_predict(f"model_dir={folder}", f"input={texts}"))
    assert_same_records(from_folder, from_checkpoint)


def test_a_pair_model_refuses_a_list_where_its_second_text_goes():
    from lmforge.tasks.predictor import Predictor

    predictor = Predictor(None, None, {"max_length": 8, "text_pair_column": "context"}, None, "cpu")
    assert predictor.pair_value(3, "input 1") == "3"
    with pytest.raises(LmforgeError, match="input 1: the 'context' of this model is one text"):
        predictor.pair_value(["a", "b"], "input 1")


# ----- ONNX folders through ONNX Runtime ----------------------------------------------------------
def onnx_folder(ckpt: Path, out: Path, *overrides: str) -> Path:
    from lmforge.export import export
    from tests.helpers import compose_config

    cfg = compose_config([f"ckpt_path={ckpt}", "format=onnx", *overrides], config_name="export")
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return export(cfg)


@pytest.mark.parametrize(
    ("run", "typed"),
    [
        ("classifier", "['match goal team','a guitar song with a piano played by the band']"),
        ("tagger", "['it is written in Python','a tool for C']"),
        ("masked_lm", "['match [MASK] team','the [MASK] oven [MASK] flour']"),
    ],
)
def test_an_onnx_folder_predicts_through_onnx_runtime_like_its_checkpoint(
    run, typed, request, run_predict, tmp_path
):
    ckpt = request.getfixturevalue(run)
    folder = onnx_folder(ckpt, tmp_path / "onnx")
    settings = [f"input={typed}", "max_length=32"]
    expected = read_records(run_predict(f"ckpt_path={ckpt}", *settings))
    for backend in ("auto", "onnxruntime"):
        got = read_records(run_predict(f"model_dir={folder}", f"backend={backend}", *settings))
        assert_same_records(got, expected)


def test_what_an_onnx_folder_cannot_do_is_refused_clearly(
    classifier, causal_lm, run_predict, tmp_path
):
    folder = onnx_folder(classifier, tmp_path / "onnx")
    with pytest.raises(LmforgeError, match=r"backend=pytorch: .* ONNX graph"):
        run_predict(f"model_dir={folder}", "backend=pytorch", "input=a")
    with pytest.raises(LmforgeError, match="backend=onnxruntime runs an ONNX export"):
        run_predict(f"ckpt_path={classifier}", "backend=onnxruntime", "input=a")
    hf = export_folder(classifier, tmp_path / "hf")
    with pytest.raises(LmforgeError, match="holds no ONNX graph"):
        run_predict(f"model_dir={hf}", "backend=onnxruntime", "input=a")
    lm = onnx_folder(causal_lm, tmp_path / "lm")
    with pytest.raises(LmforgeError, match="generate token by token"):
        run_predict(f"model_dir={lm}", "input=match")


def test_threads_sets_the_forward_passes_cpu_threads(classifier, run_predict):
    before = torch.get_num_threads()
    try:
        run_predict(f"ckpt_path={classifier}", "input=a", "threads=1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
