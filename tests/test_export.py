"""lmforge-export: every format and task family, parity on other shapes, clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, open_dict
from torch.testing import assert_close

from lmforge.config.validation import validate_training_config
from lmforge.errors import LmforgeError
from lmforge.export import EXPORT_BATCH, export
from lmforge.tasks.runs import load_task_module
from lmforge.train import train
from tests.helpers import ENV, compose_config, script, tiny_overrides

QUICK = ["trainer.max_epochs=1", "evaluate_before=false", "test=false"]
TEXTS = ["the match goal team won", "a guitar song with a piano and a drum played by the band"]
EXPORT_SHAPE = [len(EXPORT_BATCH[0]), EXPORT_BATCH[1]]


def train_run(root: Path, overrides: list[str]) -> Path:
    """Train a tiny run into root/run; return its best checkpoint."""
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
        cfg.paths.cache_dir = str(root / "cache")
    validate_training_config(cfg)
    train(cfg)
    return root / "run" / "checkpoints" / "best.ckpt"


def export_config(ckpt: Path, out: Path, *overrides: str) -> DictConfig:
    """The composed conf/export.yaml, exporting into `out` (as Hydra's new run dir would)."""
    cfg = compose_config([f"ckpt_path={ckpt}", *overrides], config_name="export")
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def module_logits(ckpt: Path, folder: Path, texts: list[str]) -> torch.Tensor:
    """The training module's logits on `texts`, tokenized by the exported tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    module = load_task_module(ckpt).eval()
    with torch.no_grad():
        return module.model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def assert_parity_passed(folder: Path, fmt: str) -> dict:
    parity = read_json(folder / "parity.json")
    assert parity["format"] == fmt and parity["passed"] is True, parity
    assert parity["max_abs_diff"] <= parity["tolerance"] == 1e-4
    shapes = [record["shape"] for record in parity["inputs"]]
    assert EXPORT_SHAPE not in shapes and len(shapes) >= 2
    assert any(record["padded"] for record in parity["inputs"])
    return parity


@pytest.fixture(scope="module")
def classifier(tiny_classifier) -> Path:
    return tiny_classifier


@pytest.fixture(scope="module")
def classifier_hf(classifier, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "export"
    return export(export_config(classifier, out, "format=hf"))


def test_hf_folder_records_task_labels_and_parity(classifier, classifier_hf):
    assert_parity_passed(classifier_hf, "hf")
    info = read_json(classifier_hf / "lmforge.json")
    assert info["task"] == "text_classification" and info["format"] == "hf"
    assert info["labels"] == ["cooking", "music", "sports"]
    assert info["max_length"] == 128 and info["multi_label"] is False
    assert info["threshold"] == 0.5 and info["text_column"] == "text"
    assert info["source_checkpoint"] == str(classifier.resolve())
    config = read_json(classifier_hf / "config.json")
    assert config["id2label"] == {"0": "cooking", "1": "music", "2": "sports"}
    assert config["label2id"] == {"cooking": 0, "music": 1, "sports": 2}
    assert (classifier_hf / "tokenizer.json").is_file() and (classifier_hf / "README.md").is_file()


def test_hf_folder_runs_without_lmforge(classifier, classifier_hf):
    code = (
        "import json, sys, torch, transformers\n"
        "folder, texts = sys.argv[1], json.loads(sys.argv[2])\n"
        "tokenizer = transformers.AutoTokenizer.from_pretrained(folder)\n"
        "model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)\n"
        "with torch.no_grad():\n"
        "    logits = model(**tokenizer(texts, padding=True, return_tensors='pt')).logits\n"
        "labels = [r['label'] for r in transformers.pipeline('text-classification', "
        "model=folder)(texts)]\n"
        "assert 'lmforge' not in sys.modules, 'lmforge was imported'\n"
        "print(json.dumps({'logits': logits.tolist(), 'labels': labels}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(classifier_hf), json.dumps(TEXTS)],
        cwd=classifier_hf.parent,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(answer["labels"]) <= {"cooking", "music", "sports"}
    expected = module_logits(classifier, classifier_hf, TEXTS)
    assert_close(torch.tensor(answer["logits"]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graph_formats_match_pytorch_on_other_shapes(classifier, tmp_path, fmt):
    folder = export(export_config(classifier, tmp_path / "export", f"format={fmt}"))
    parity = assert_parity_passed(folder, fmt)
    assert parity["max_abs_diff"] < 1e-5
    model_file = {"onnx": "model.onnx", "torchscript": "model.pt"}[fmt]
    info = read_json(folder / "lmforge.json")
    assert (folder / model_file).is_file() and info["model_file"] == model_file
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    if fmt == "onnx":  # any batch size and length, as a user would call it
        import onnxruntime
        from transformers import AutoTokenizer

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
        texts = [*TEXTS, "spice", "oven flour sugar bake boil pan salt butter dough kitchen"]
        inputs = dict(
            AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="np")
        )
        (logits,) = session.run(["logits"], inputs)
        expected = module_logits(classifier, folder, texts)
        assert_close(torch.from_numpy(logits), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tagger(tiny_tagger) -> Path:
    return tiny_tagger


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_token_classification_exports(tagger, tmp_path, fmt):
    folder = export(export_config(tagger, tmp_path / "export", f"format={fmt}"))
    assert_parity_passed(folder, fmt)
    info = read_json(folder / "lmforge.json")
    assert info["task"] == "token_classification" and info["max_length"] == 32
    assert info["labels"][0] == "O" and "B-LANG" in info["labels"]
    assert read_json(folder / "config.json")["id2label"]["0"] == "O"


@pytest.fixture(scope="module")
def causal_lm(tiny_causal_lm) -> Path:
    return tiny_causal_lm


@pytest.mark.parametrize("fmt", ["hf", "onnx", "torchscript"])
def test_causal_lm_exports_logits(causal_lm, tmp_path, fmt):
    folder = export(export_config(causal_lm, tmp_path / "export", f"format={fmt}"))
    assert_parity_passed(folder, fmt)
    info = read_json(folder / "lmforge.json")
    assert info["task"] == "causal_lm" and info["max_length"] == 16
    # GPT-2 trained on ids and mask: the exported WordPiece tokenizer gives no token types
    assert info["inputs"] == ["input_ids", "attention_mask"]
    if fmt == "hf":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert "token_type_ids" not in tokenizer("match goal")
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits
        assert_close(logits, module_logits(causal_lm, folder, TEXTS[:1]), atol=1e-5, rtol=0)


def test_failed_parity_raises_and_keeps_the_files(classifier, tmp_path, monkeypatch):
    monkeypatch.setattr("lmforge.export.max_abs_diff", lambda *args: 0.25)
    out = tmp_path / "export"
    with pytest.raises(LmforgeError, match=r"up to 0\.25 .*above tolerance=0\.0001"):
        export(export_config(classifier, out, "format=torchscript"))
    parity = read_json(out / "parity.json")
    assert parity["passed"] is False and parity["max_abs_diff"] == 0.25
    assert (out / "model.pt").is_file()


def test_parity_texts_file_is_used(classifier, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("one short line\n\nanother line of text here\n", encoding="utf-8")
    folder = export(
        export_config(
            classifier, tmp_path / "export", "format=torchscript", f"parity_texts={texts}"
        )
    )
    assert_parity_passed(folder, "torchscript")
    with pytest.raises(LmforgeError, match=r"parity_texts='/no/such\.txt': no such file"):
        export(export_config(classifier, tmp_path / "b", "parity_texts=/no/such.txt"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["format=tflite"],
            r"format must be one of 'hf', 'onnx', 'torchscript', got 'tflite'\.",
        ),
        (["ckpt_path=/no/such.ckpt"], r"ckpt_path='/no/such\.ckpt': no such checkpoint file"),
        (["tolerance=-1"], r"tolerance must be a number of 0 or more, got -1"),
        (["ckpt_path=null"], r"ckpt_path must be a checkpoint: ckpt_path=<run dir>/checkpoints"),
    ],
)
def test_bad_settings_are_refused(tmp_path, overrides, expected):
    cfg = export_config(Path("/no/such.ckpt"), tmp_path / "out", *overrides)
    with pytest.raises(LmforgeError, match=expected):
        export(cfg)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_dir_is_refused_and_left_alone(classifier, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cfg = export_config(classifier, tmp_path / "run", f"output_dir={out}")
    with pytest.raises(LmforgeError, match=r"output_dir=.*mine' is not empty \(it holds notes"):
        export(cfg)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_onnx_without_its_extras_names_the_install(classifier, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(LmforgeError, match=r"missing: onnxruntime.*pip install lmforge\[onnx\]"):
        export(export_config(classifier, tmp_path / "out", "format=onnx"))


def test_lora_export_merges_the_adapter(tmp_path, tiny_model, tiny_data):
    ckpt = train_run(tmp_path, [*tiny_overrides(tiny_model, tiny_data), *QUICK, "finetune=lora"])
    module = load_task_module(ckpt)
    assert type(module.model).__name__.startswith("Peft")  # the adapter is separate here
    folder = export(export_config(ckpt, tmp_path / "export", "format=hf"))
    assert_parity_passed(folder, "hf")
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert not any("lora" in name for name in merged.state_dict())
    from transformers import AutoTokenizer

    with torch.no_grad():
        logits = merged(
            **AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
        ).logits
    assert_close(logits, module_logits(ckpt, folder, TEXTS), atol=1e-5, rtol=1e-5)


def test_an_unmergeable_adapter_is_refused(tmp_path, tiny_model, tiny_data):
    ckpt = train_run(
        tmp_path,
        [
            *tiny_overrides(tiny_model, tiny_data),
            *QUICK,
            "finetune=prompt_tuning",
            "finetune.num_virtual_tokens=2",
        ],
    )
    with pytest.raises(LmforgeError, match="cannot be merged"):
        export(export_config(ckpt, tmp_path / "export", "format=hf"))


def test_console_script_exports_into_its_run_dir(classifier, tmp_path):
    result = subprocess.run(
        [script("lmforge-export"), f"ckpt_path={classifier}", "format=torchscript"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "export" / "runs").iterdir()
    assert read_json(run_dir / "parity.json")["passed"] is True
    assert (run_dir / "model.pt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert "parity max |diff|" in (run_dir / "export.log").read_text()


def test_int8_export_records_its_test_metrics_against_the_checkpoint(classifier, tmp_path):
    from lmforge.evaluate import evaluate
    from lmforge.onnx_backend import inference_session

    folder = export(
        export_config(
            classifier, tmp_path / "export", "format=onnx", "quantize=int8", "max_metric_drop=100"
        )
    )
    record = read_json(folder / "quantization.json")
    info = read_json(folder / "lmforge.json")
    assert info["model_file"] == "model_int8.onnx" and info["quantization"] == record
    assert (folder / "model.onnx").is_file() and (folder / "model_int8.onnx").is_file()
    assert record["bytes"]["int8"] < record["bytes"]["fp32"]
    assert record["metric"] == "test/acc" and record["drop_unit"] == "points"
    assert record["drop"] == pytest.approx(100 * (record["checkpoint"] - record["int8"]), abs=1e-3)
    assert "model_int8.onnx" in (folder / "README.md").read_text()

    # The checkpoint's figure is what lmforge-eval gives; the int8 one is the graph's own
    # accuracy, counted here from its logits on the test file.
    cfg = compose_config([f"ckpt_path={classifier}"], config_name="eval")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    assert record["checkpoint"] == pytest.approx(evaluate(cfg)["test/acc"], abs=1e-6)
    from lmforge.evaluate import test_datamodule
    from lmforge.tasks.runs import load_run

    datamodule = test_datamodule(load_run(str(classifier), "test"), str(tmp_path / "cache"))
    session = inference_session(folder / "model_int8.onnx")
    names = [i.name for i in session.get_inputs()]
    correct = total = 0
    for batch in datamodule.test_dataloader():
        (logits,) = session.run(["logits"], {n: batch[n].numpy() for n in names})
        correct += int((torch.from_numpy(logits).argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    assert record["int8"] == pytest.approx(correct / total, abs=1e-6)
    assert record["test_examples"] == total


def test_an_int8_graph_that_loses_too_much_fails_unless_forced(classifier, tmp_path, monkeypatch):
    figures = iter([{"test/acc": 0.90, "_examples": 30}, {"test/acc": 0.85, "_examples": 30}] * 2)
    monkeypatch.setattr("lmforge.export._test_metrics", lambda *args: dict(next(figures)))
    out = tmp_path / "export"
    with pytest.raises(LmforgeError, match=r"0\.9000 with the checkpoint, 0\.8500 .*-5\.00 points"):
        export(export_config(classifier, out, "format=onnx", "quantize=int8"))
    assert read_json(out / "quantization.json")["passed"] is False
    assert read_json(out / "lmforge.json")["model_file"] == "model.onnx"  # not switched
    forced = export(
        export_config(classifier, tmp_path / "forced", "format=onnx", "quantize=int8", "force=true")
    )
    record = read_json(forced / "lmforge.json")["quantization"]
    assert record["forced"] is True and record["passed"] is False and record["drop"] == 5.0
    with pytest.raises(LmforgeError, match="format=hf has none"):
        export(export_config(classifier, tmp_path / "hf", "format=hf", "quantize=int8"))


@pytest.mark.parametrize(
    ("run", "metric", "unit"),
    [("tagger", "test/f1", "points"), ("causal_lm", "test/perplexity", "%")],
)
def test_int8_checks_other_families_by_their_primary_metric(run, metric, unit, request, tmp_path):
    ckpt = request.getfixturevalue(run)
    folder = export(
        export_config(
            ckpt,
            tmp_path / "export",
            "format=onnx",
            "quantize=int8",
            "max_metric_drop=1000",
            "max_test_samples=6",
        )
    )
    record = read_json(folder / "quantization.json")
    assert record["test_examples"] <= 6  # the cap (NER and LM count sentences, blocks)
    assert record["metric"] == metric and record["drop_unit"] == unit.strip()
    before, after = record["checkpoint"], record["int8"]
    expected = 100 * (before - after) if unit == "points" else 100 * (after - before) / before
    assert record["drop"] == pytest.approx(expected, abs=1e-3)
