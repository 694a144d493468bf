"""Every config composes, every target imports, and no config key goes unread."""

from __future__ import annotations

import inspect

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from lmforge.config.resources import config_dir
from tests.conftest import compose_config

CONF = config_dir()
GROUPS = [
    "data",
    "model",
    "optimizer",
    "scheduler",
    "finetune",
    "trainer",
    "callbacks",
    "logger",
    "paths",
    "hparams_search",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def all_targets(node) -> list[DictConfig]:
    found = []
    if isinstance(node, DictConfig):
        if "_target_" in node:
            found.append(node)
        for key in node:
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                found.extend(all_targets(value))
    return found


@pytest.mark.parametrize(
    "override", [f"{group}={option}" for group in GROUPS for option in options(group)]
)
def test_every_group_option_composes(override):
    cfg = compose_config([override])
    for node in all_targets(cfg):
        get_object(node._target_)  # the target imports


@pytest.mark.parametrize(
    "override",
    [
        f"hydra/{group}={option}"
        for group in ("sweeper", "launcher")
        for option in options(f"hydra/{group}")
    ],
)
def test_every_hydra_plugin_option_composes_and_its_target_imports(override):
    cfg = compose_config([override], return_hydra_config=True)
    group = override.split("=")[0].removeprefix("hydra/")
    get_object(cfg.hydra[group]._target_)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.task_name == experiment.replace("-", "_") or cfg.task_name


@pytest.mark.parametrize("mode", [m for m in options("debug") if m != "default"])
def test_every_debug_mode_composes(mode):
    cfg = compose_config([f"debug={mode}"])
    assert cfg.task_name == "debug"
    assert cfg.trainer.accelerator == "cpu"


def test_eval_config_composes():
    cfg = compose_config(["ckpt_path=x.ckpt"], config_name="eval")
    assert cfg.ckpt_path == "x.ckpt" and cfg.task_name == "eval"


def test_documented_keys_exist():
    """The key names promised to users (README) are in the default config."""
    cfg = compose_config([])
    for key in [
        "model.pretrained",
        "model.tokenizer",
        "data.train_file",
        "data.validation_file",
        "data.test_file",
        "data.text_column",
        "data.text_pair_column",
        "data.label_column",
        "data.max_length",
        "data.batch_size",
        "data.max_train_samples",
        "data.dataset_name",
        "data.dataset_config",
        "optimizer.lr",
        "optimizer.weight_decay",
        "trainer.max_epochs",
        "trainer.precision",
        "trainer.accumulate_grad_batches",
        "trainer.gradient_clip_val",
        "resume",
        "seed",
        "optimized_metric",
    ]:
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in ("data", "model", "finetune") for o in options(g)]
)
def test_no_config_key_goes_unread(group, option):
    """Every key of every data and model config is a parameter of the class it builds."""
    cfg = compose_config([f"{group}={option}"])
    node = cfg[group]
    target = get_object(node._target_)
    accepted = set()
    for cls in target.__mro__:
        if "__init__" in cls.__dict__:
            accepted |= set(inspect.signature(cls.__init__).parameters)
    keys = {k for k in node if not k.startswith("_")}
    assert keys - accepted == set()


def test_model_tokenizer_defaults_to_pretrained():
    cfg = compose_config(["model.pretrained=/some/model"])
    assert cfg.model.tokenizer == "/some/model"
    assert cfg.data.tokenizer == "/some/model"


def test_shipped_split_files_are_found():
    cfg = compose_config([])
    assert cfg.data.train_file.endswith("debian_packages/train.csv")
    assert cfg.data.validation_file.endswith("debian_packages/validation.csv")
    assert cfg.data.test_file.endswith("debian_packages/test.csv")
