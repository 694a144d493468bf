"""Every config composes, every target imports, and no config key goes unread."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from lmforge.config.resources import config_dir
from lmforge.config.validation import check_config
from lmforge.tasks import families_of_datamodule, family_of_module
from tests.helpers import compose_config

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
    """The options of a group (files starting with `_` are shared parts, not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


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
def test_every_experiment_pairs_a_model_with_its_data_and_passes_the_checks(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"paths.output_dir={tmp_path}/run"])
    family = family_of_module(cfg.model._target_)
    assert family is not None, cfg.model._target_
    assert family in families_of_datamodule(cfg.data._target_)
    assert family.logs(cfg.optimized_metric), cfg.optimized_metric
    assert cfg.task_name == experiment
    check_config(cfg)


def matching_pairs() -> list[tuple[str, str]]:
    """Every (model=, data=) pair of options whose model reads that data's format."""
    targets = {
        group: {
            name: compose_config([f"{group}={name}"])[group]._target_ for name in options(group)
        }
        for group in ("model", "data")
    }
    pairs = []
    for model, model_target in targets["model"].items():
        family = family_of_module(model_target)
        for data, data_target in targets["data"].items():
            if family is not None and family.data_format(data_target) is not None:
                pairs.append((model, data))
    return pairs


@pytest.mark.parametrize(("model", "data"), matching_pairs())
def test_every_model_and_data_pair_composes_and_passes_without_an_experiment(model, data, tmp_path):
    """Defaults that belong to a family (the optimized metric and its mode) follow the model the
    user picked, so `data=chat model=gpt2_scratch` works as written."""
    cfg = compose_config([f"model={model}", f"data={data}", f"paths.output_dir={tmp_path}/r"])
    family = family_of_module(cfg.model._target_)
    assert cfg.optimized_metric == f"val/{family.optimized_metric}"
    lower = family.optimized_metric in family.lower_is_better
    assert cfg.optimized_mode == ("min" if lower else "max")
    check_config(cfg)


@pytest.mark.parametrize(
    ("overrides", "metric", "mode"),
    [
        (["optimized_metric=val/f1_macro"], "val/f1_macro", "max"),
        (["optimized_metric=val/loss"], "val/loss", "min"),
        (
            ["model=gpt2_scratch", "data=chat", "optimized_metric=val/answer_f1"],
            "val/answer_f1",
            "max",
        ),
        (["model=gpt2_scratch", "data=chat"], "val/perplexity", "min"),
        (["experiment=debian_summarize_minilm"], "val/loss", "min"),
        (["optimized_metric=val/loss", "optimized_mode=max"], "val/loss", "max"),
    ],
)
def test_the_optimized_metric_and_mode_follow_the_family_unless_set(overrides, metric, mode):
    cfg = compose_config(overrides)
    assert (cfg.optimized_metric, cfg.optimized_mode) == (metric, mode)
    assert cfg.callbacks.model_checkpoint.monitor == metric


COMMAND_CONFIGS = {
    "lmforge-train": "train",
    "lmforge-eval": "eval",
    "lmforge-predict": "predict",
    "lmforge-export": "export",
    "lmforge-serve": "serve",
    "lmforge-check": "train",
}
# Command-line flags of Hydra and their values: not overrides.
FLAGS = {"-m", "--multirun", "--cfg", "--help", "job", "hydra", "all"}


def documented_command(path: Path) -> list[str]:
    """The first `#   lmforge-... ` line of a config file's opening comment, split."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("#   lmforge-"):
            # Placeholders such as <time> stand for any value; a trailing `# ...` is a remark.
            text = re.sub(r"<[^>]+>", "x", line.removeprefix("#").strip())
            return shlex.split(text, comments=True)
    raise AssertionError(f"{path} does not start with a comment giving a command that uses it")


@pytest.mark.parametrize(
    "path", sorted(CONF.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF))
)
def test_every_config_file_starts_with_a_command_that_composes(path):
    command, *arguments = documented_command(path)
    overrides = []
    for override in OverridesParser.create().parse_overrides(
        [a for a in arguments if a not in FLAGS]
    ):
        if override.is_sweep_override():  # a -m sweep: compose its first job
            value = next(iter(override.sweep_string_iterator()))
            overrides.append(f"{override.get_key_element()}={value}")
        else:
            overrides.append(override.input_line)
    cfg = compose_config(overrides, config_name=COMMAND_CONFIGS[command], return_hydra_config=True)
    assert cfg is not None


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
