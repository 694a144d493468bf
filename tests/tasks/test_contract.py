"""The task-family contract, checked for every registered family alike.

A family folder is enough to register a family; this test then tells what it still lacks: its
classes load and agree with the spec, every config that names it composes and passes the
checks, its shipped experiment trains (capped to a few examples) and logs exactly the metrics
the spec declares, and its checkpoint predicts on the spec's example inputs and exports to a
Hugging Face folder that passes the parity check and predicts the same records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf, open_dict

from lmforge.config.resources import config_dir
from lmforge.config.validation import check_config, validate_training_config
from lmforge.errors import LmforgeError
from lmforge.evaluation.baselines import BASELINES
from lmforge.export import export
from lmforge.predict import predict
from lmforge.tasks import FAMILIES, family_of_module
from lmforge.tasks.predictor import Predictor
from lmforge.tasks.spec import class_name, load
from lmforge.train import train
from tests.helpers import compose_config

FAMILY_NAMES = sorted(FAMILIES)
# A few examples, one epoch: the contract, not the quality.
CAPPED = [
    "data.max_train_samples=24",
    "data.max_eval_samples=8",
    "data.max_test_samples=8",
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "callbacks.rich_progress_bar=null",
    "evaluate_before=false",
    "compare.baselines=[]",
    "logger=csv",
]


def configs_of(group: str, target: str) -> list[str]:
    """The options of a config group whose `_target_` names `target`'s class."""
    names = []
    for path in sorted((config_dir() / group).glob("*.yaml")):
        node = OmegaConf.load(path)
        if class_name(node.get("_target_", "")) == class_name(target):
            names.append(path.stem)
    return names


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_spec_names_classes_that_exist_and_agree(name):
    family = FAMILIES[name]
    module = family.module_class()
    assert module.task_name == name
    assert family_of_module(family.module) is family
    assert issubclass(family.predictor_class(), Predictor)
    assert family.datamodule_class().__name__ == class_name(family.datamodule)
    assert family.auto_model_class().__name__ == family.auto_class
    assert family.primary_metric in family.metrics
    assert set(family.lower_is_better) <= set(family.metrics)
    assert set(family.only_when) <= set(family.metrics)
    assert family.example_inputs, "a family gives example inputs to try its models on"
    # Its baselines are shared ones or its own, kept in its folder.
    for baseline in family.baselines:
        assert baseline in BASELINES or baseline in family.own_baselines, baseline
    for baseline in family.own_baselines.values():
        assert baseline.runner.startswith(f"lmforge.tasks.{family.module.split('.')[2]}.")
        assert callable(load(baseline.runner))
    for data_format in family.data_formats:
        assert load(data_format.datamodule).__name__ == class_name(data_format.datamodule)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_config_of_the_family_composes_and_passes_the_checks(name, tmp_path):
    family = FAMILIES[name]
    experiments = [
        path.stem
        for path in sorted((config_dir() / "experiment").glob("*.yaml"))
        if class_name(compose_config([f"experiment={path.stem}"]).model._target_)
        == class_name(family.module)
    ]
    assert family.experiment in experiments, f"{family.experiment} is not an experiment of {name}"
    models = configs_of("model", family.module)
    assert models, f"no conf/model option builds {class_name(family.module)}"
    assert configs_of("data", family.datamodule), f"no conf/data option for {name}"
    for experiment in experiments:
        check_config(compose_config([f"experiment={experiment}", f"paths.output_dir={tmp_path}/x"]))
    for model in models:
        cfg = compose_config([f"experiment={family.experiment}", f"model={model}"])
        assert family_of_module(cfg.model._target_) is family


FORMATS = [
    (name, data_format) for name in FAMILY_NAMES for data_format in FAMILIES[name].data_formats
]


@pytest.mark.parametrize(
    ("name", "data_format"), FORMATS, ids=[f"{n}-{class_name(f.datamodule)}" for n, f in FORMATS]
)
def test_every_data_format_refuses_a_length_beyond_the_model_positions(name, data_format, tmp_path):
    family = FAMILIES[name]
    options = configs_of("data", data_format.datamodule)
    assert options, f"no conf/data option reads {class_name(data_format.datamodule)}"
    cfg = compose_config(
        [
            f"experiment={family.experiment}",
            f"data={options[0]}",
            f"{data_format.length_key}=100000",
            f"paths.output_dir={tmp_path}/run",
        ]
    )
    with pytest.raises(LmforgeError) as caught:
        validate_training_config(cfg)  # what train() runs before any data is read
    message = str(caught.value)
    assert f"{data_format.length_key}=100000 is longer than the " in message
    assert "\n" not in message and "Traceback" not in message
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_gpt2) -> dict[str, Path]:
    """Each family's experiment, capped, trained once: name -> run directory. An experiment
    on the embedded 135M causal LM runs on a tiny random GPT-2 here (the contract, not the
    model: the slow tests run the real one)."""
    root = tmp_path_factory.mktemp("contract")
    runs = {}
    for name in FAMILY_NAMES:
        cfg = compose_config([f"experiment={FAMILIES[name].experiment}", *CAPPED])
        with open_dict(cfg):
            if cfg.model.get("pretrained") == "smollm2-135m-instruct":
                cfg.model.pretrained = str(tiny_gpt2)
                if "chat_template" in cfg.model:  # the tiny model's tokenizer has none
                    cfg.model.chat_template = False
                if "max_length" in cfg.data:  # its 64 positions
                    cfg.data.max_length = min(int(cfg.data.max_length), 64)
            cfg.paths.output_dir = str(root / name)
            cfg.paths.cache_dir = str(root / "cache")
            # Generation samples at validation end: not part of the contract, and slow.
            if "generate_prompts" in cfg.model:
                cfg.model.generate_prompts = []
            # Families that score generated text: a few short outputs show the metrics.
            if "max_generate_samples" in cfg.model:
                cfg.model.max_generate_samples = 4
            if "generate" in cfg.model:
                cfg.model.generate.max_new_tokens = 8
            if "answer_max_new_tokens" in cfg.model:
                cfg.model.answer_max_new_tokens = 8
        train(cfg)
        runs[name] = root / name
    return runs


# One worker trains every family once for both tests (make test runs --dist loadgroup).
@pytest.mark.xdist_group("contract_runs")
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_run_logs_exactly_the_metrics_the_spec_declares(name, trained):
    family = FAMILIES[name]
    metrics = json.loads((trained[name] / "metrics.json").read_text())
    assert metrics["task"] == name
    config = OmegaConf.load(trained[name] / "config.yaml")
    flags = {key: bool(OmegaConf.select(config, key)) for key in family.only_when.values()}
    logged = set(metrics["validation"])
    assert logged and all(family.logs(key, flags) for key in logged), logged
    expected = {m for m in family.monitorable(flags) if "<" not in m and m != "train/loss"}
    assert expected <= logged, expected - logged
    per_label = [m for m in family.metrics if m.endswith(">")]
    for metric in per_label:
        prefix = f"val/{metric[: metric.index('<')]}"
        assert any(k.startswith(prefix) and k not in expected for k in logged), prefix
    assert {k.replace("val/", "test/", 1) for k in logged} == set(metrics["test"])


# One worker trains every family once for both tests (make test runs --dist loadgroup).
@pytest.mark.xdist_group("contract_runs")
@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_checkpoint_predicts_and_exports_with_the_same_records(name, trained, tmp_path):
    family = FAMILIES[name]
    checkpoint = trained[name] / "checkpoints" / "last.ckpt"
    inputs = "[" + ",".join(map(typed, family.example_inputs)) + "]"

    def predicted(*source: str, run: str) -> list[dict]:
        cfg = compose_config([*source, f"input={inputs}", "seed=0"], config_name="predict")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / run)
        path = predict(cfg)
        return [json.loads(line) for line in path.read_text().splitlines()]

    from_checkpoint = predicted(f"ckpt_path={checkpoint}", run="predict")
    assert len(from_checkpoint) == len(family.example_inputs)
    served = served_records(checkpoint, family.example_inputs)
    assert json.dumps(served, sort_keys=True) == json.dumps(from_checkpoint, sort_keys=True) or (
        _close(served, from_checkpoint)
    )
    cfg = compose_config([f"ckpt_path={checkpoint}"], config_name="export")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "export")
    folder = export(cfg)
    info = json.loads((folder / "lmforge.json").read_text())
    assert info["task"] == name and info["outputs"] == list(family.export_outputs)
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["passed"] and parity["outputs"] == list(family.export_outputs)
    from_folder = predicted(f"model_dir={folder}", run="predict_export")
    assert json.dumps(from_folder, sort_keys=True) == json.dumps(
        from_checkpoint, sort_keys=True
    ) or (_close(from_folder, from_checkpoint))


def served_records(checkpoint: Path, examples: tuple) -> list[dict]:
    """What lmforge-serve answers for the examples, each sent as a request and all batched
    together, through the server's API as LitServe's batched loop calls it (no HTTP)."""
    from lmforge.serve.api import ModelAPI
    from lmforge.serve.checks import Limits
    from lmforge.serve.server import worker_options

    cfg = compose_config([f"ckpt_path={checkpoint}", "seed=0"], config_name="serve")
    api = ModelAPI(worker_options(cfg), Limits(8, 10_000), max_batch_size=8, batch_timeout=0)
    api.setup("cpu")
    requests = [api.decode_request({"inputs": example}) for example in examples]
    answers = api.unbatch(api.predict(api.batch(requests)))
    return [json.loads(api.encode_response(answer).body)["prediction"] for answer in answers]


def typed(example: str | list[str] | dict[str, Any]) -> str:
    """One example input as typed on the command line: 'a text', {column:'text',...} or,
    for a list of texts (a question's choices), ['one','two']."""
    if isinstance(example, dict):
        return "{" + ",".join(f"{key}:{typed(text)}" for key, text in example.items()) + "}"
    if isinstance(example, list):
        return "[" + ",".join(typed(text) for text in example) + "]"
    return f"'{example}'"


def _close(a: object, b: object) -> bool:
    """Records equal up to float rounding (an exported model reloads its weights)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    return a == b
