"""Checks on a composed training config, before any data is read or any model is built.

Two stages, so that a config mistake fails in well under a second:

1. `check_config`: the schema (types, ranges, unknown top-level keys; `lmforge.config.schema`) and
   the cross-field rules below. Reads only the config, conf/ and the file system: no torch.
2. `check_model_fits`: what needs the model's own config.json and tokenizer (position limit,
   vocabulary size). Loads transformers, but no weights and no data.

`validate_training_config` runs both and raises one LmforgeError naming every key at fault.
"""

from __future__ import annotations

import difflib
import functools
import os
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lmforge.config.compatibility import strategy_problem
from lmforge.config.positions import usable_positions
from lmforge.config.resources import config_dir
from lmforge.config.schema import schema_problems
from lmforge.errors import LmforgeError
from lmforge.evaluation.baselines import known_baselines
from lmforge.runtime.rundir import check_run_dir_is_free
from lmforge.tasks import families_of_datamodule, family_of_module
from lmforge.tasks.spec import TaskFamily, class_name

PRECISIONS = {
    "auto",
    "32-true",
    "32",
    "64-true",
    "64",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "transformer-engine",
    "bf16",
    "16",
}

# What a local model folder must hold for from_pretrained: the config and one weights format.
MODEL_CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def validate_training_config(cfg: DictConfig) -> None:
    """Raise one LmforgeError listing every impossible value of a training config."""
    check_config(cfg)
    check_model_fits(cfg)
    check_machine(cfg)
    check_streaming(cfg)


def check_streaming(cfg: DictConfig) -> None:
    """A streamed training split has no known length: the run needs its number of steps."""
    if not _select(cfg, "data.streaming"):
        return
    steps = _select(cfg, "trainer.max_steps")
    interval = _select(cfg, "trainer.val_check_interval")
    problems = []
    if not isinstance(steps, int) or steps <= 0:
        problems.append(
            f"trainer.max_steps={steps!r}: a stream's length is unknown, so training stops "
            "after a number of optimizer steps; set trainer.max_steps=<steps>"
        )
    if (
        interval is not None
        and interval != 1.0
        and not (isinstance(interval, int) and interval > 0)
    ):
        problems.append(
            f"trainer.val_check_interval={interval!r}: with a stream, validation runs every N "
            "training batches; give a whole number (default: a tenth of max_steps)"
        )
    if problems:
        raise LmforgeError("data.streaming=true: " + "; ".join(problems) + ".")


# Trainer strategies that run on CUDA GPUs only: class -> (the trainer options that use it, the
# package it needs and its extra, or None).
GPU_ONLY_STRATEGIES: dict[str, tuple[str, tuple[str, str] | None]] = {
    "lightning.pytorch.strategies.DeepSpeedStrategy": (
        "trainer=deepspeed_zero2, deepspeed_zero3 or deepspeed_zero3_offload",
        ("deepspeed", "deepspeed"),
    ),
    # torch's FullyShardedDataParallel refuses CPUs ("FSDP needs a non-CPU accelerator").
    "lmforge.runtime.strategies.SpawnedFSDPStrategy": ("trainer=fsdp", None),
    "lightning.pytorch.strategies.FSDPStrategy": ("trainer=fsdp", None),
}
# Of those, the ones that shard across processes only (one process is refused).
SINGLE_DEVICE_STRATEGIES = ("lightning.pytorch.strategies.DeepSpeedStrategy",)


def check_machine(cfg: DictConfig) -> None:
    """Refuse a strategy this machine cannot run (no CUDA GPU, a package missing) before any
    data or model is loaded."""
    target = str(_select(cfg, "trainer.strategy._target_") or "")
    needs = GPU_ONLY_STRATEGIES.get(target)
    if needs is None:
        return
    import importlib.util

    import torch

    name = target.rsplit(".", 1)[-1]
    options, package = needs
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (this machine has none)")
    if package is not None and importlib.util.find_spec(package[0]) is None:
        missing.append(f"the {package[0]} package (pip install 'lmforge[{package[1]}]')")
    if missing:
        raise LmforgeError(
            f"trainer.strategy is {name} ({options}), which runs on CUDA GPUs only, and it "
            f"needs {' and '.join(missing)}. On this machine use trainer=cpu, or "
            "trainer=ddp_sim to try the distributed code path on two CPU processes."
        )


def check_config(cfg: DictConfig) -> None:
    """The fast stage: schema and cross-field rules, on the config alone."""
    family = family_of_module(_select(cfg, "model._target_"))
    if family is not None and family.data_schema is not None:
        problems = schema_problems(cfg, family.data_schema, family.model_schema)
    else:
        problems = schema_problems(cfg)
    if not problems:
        # Cross-field rules assume each value has the right type.
        for rule in (
            _check_trainer,
            _check_model_source,
            _check_finetune_keys,
            _check_finetune_versions,
            _check_task_parts,
            _check_monitored_metrics,
            _check_compare,
        ):
            rule(cfg, problems)
    if problems:
        raise LmforgeError("Invalid config: " + " ".join(problems))
    _check_run_dir(cfg)


def _select(cfg: DictConfig, key: str) -> Any:
    """The value at `key`, or None where it is missing or interpolates a missing key (a model
    option reading a data key that a mismatched data option lacks: reported by the checks)."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    except OmegaConfBaseException:
        return None


def _check_trainer(cfg: DictConfig, problems: list[str]) -> None:
    max_epochs = _select(cfg, "trainer.max_epochs")
    max_steps = _select(cfg, "trainer.max_steps")
    if not (max_steps and max_steps > 0) and (max_epochs is None or max_epochs <= 0):
        problems.append(
            f"trainer.max_epochs must be at least 1 (or set trainer.max_steps), got {max_epochs!r}."
        )
    precision = _select(cfg, "trainer.precision")
    if precision is not None and str(precision) not in PRECISIONS:
        problems.append(
            f"trainer.precision={precision!r} is not a Lightning precision; expected one of "
            "auto, 32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true."
        )
    strategy = _select(cfg, "trainer.strategy")
    devices = _select(cfg, "trainer.devices")
    nodes = _select(cfg, "trainer.num_nodes") or 1
    # DeepSpeed shards optimizer states even on one GPU (and offloads them to the CPU).
    single_ok = str(_select(cfg, "trainer.strategy._target_") or "") in SINGLE_DEVICE_STRATEGIES
    if (
        isinstance(strategy, DictConfig)
        and isinstance(devices, int)
        and isinstance(nodes, int)
        and devices * nodes < 2
        and not single_ok
    ):
        problems.append(
            f"trainer.strategy is {strategy.get('_target_', strategy)} (distributed: "
            f"trainer=ddp, ddp_sim, ddp_slurm or fsdp) but trainer.devices={devices} on "
            f"trainer.num_nodes={nodes}; use 2 or more processes in all, or trainer=cpu / "
            "trainer=gpu for one."
        )


def _check_model_source(cfg: DictConfig, problems: list[str]) -> None:
    pretrained = _select(cfg, "model.pretrained")
    if not pretrained and not _select(cfg, "model.from_config"):
        problems.append(
            "model.pretrained must name a hub model or a local model folder (or set "
            "model.from_config to train from scratch)."
        )
    elif not _select(cfg, "model.from_config") and (
        problem := model_folder_problem("model.pretrained", str(pretrained))
    ):
        problems.append(problem)
    init_from = _select(cfg, "model.init_from")
    if init_from and not Path(str(init_from)).expanduser().is_file():
        problems.append(
            f"model.init_from={str(init_from)!r}: no such checkpoint file (expected the .ckpt of "
            "an earlier run, e.g. outputs/train/runs/<time>/checkpoints/best.ckpt)."
        )


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id (`org/name`)."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def model_folder_problem(key: str, name: str) -> str | None:
    """Why `name` is not a local model folder, or None (also for hub names)."""
    if not looks_like_path(name):
        return None
    folder = Path(name).expanduser()
    holds = (
        "a model folder holds config.json, the weights (model.safetensors or pytorch_model.bin) "
        "and usually the tokenizer files (tokenizer.json, tokenizer_config.json)"
    )
    if not folder.exists():
        return f"{key}={name!r}: no such folder; {holds}."
    if not folder.is_dir():
        return f"{key}={name!r} is a file, not a model folder; {holds}."
    if not (folder / MODEL_CONFIG_FILE).is_file():
        found = sorted(p.name for p in folder.iterdir())[:6]
        listing = ", ".join(found) if found else "nothing"
        return f"{key}={name!r} is not a model folder: it holds {listing}; {holds}."
    if not any((folder / weights).is_file() for weights in WEIGHT_FILES):
        return f"{key}={name!r} holds config.json but no weights; {holds}."
    return None


@functools.cache
def group_options(group: str) -> dict[str, dict[str, Any]]:
    """Every option of a config group as conf/ composes it on its own (defaults followed).

    Reads the YAML files only: which keys each option sets, and its `_target_`. Options that
    extend no other come first (lora before dora), as messages suggest the first.
    """
    folder = config_dir() / group
    extends: dict[str, bool] = {}

    def compose(option: str) -> dict[str, Any]:
        node = cast(DictConfig, OmegaConf.load(folder / f"{option}.yaml"))  # an option: a mapping
        merged: dict[str, Any] = {}
        for entry in node.get("defaults", []) or []:
            # Same-group defaults only (finetune/dora.yaml extends lora); _self_ comes last.
            if isinstance(entry, str) and (folder / f"{entry}.yaml").is_file():
                merged.update(compose(entry))
                extends[option] = True
        own = cast("dict[str, Any]", OmegaConf.to_container(node, resolve=False))
        merged.update({k: v for k, v in own.items() if k != "defaults"})
        return merged

    # A file named _*.yaml (data/_shared.yaml) is a part other options extend, not a choice.
    options = {
        path.stem: compose(path.stem)
        for path in sorted(folder.glob("*.yaml"))
        if not path.stem.startswith("_")
    }
    return dict(sorted(options.items(), key=lambda item: extends.get(item[0], False)))


def chosen_options(group: str, node: DictConfig | None) -> list[str]:
    """The option(s) of `group` a composed node came from: Hydra's record in a Hydra run,
    else the options that build the same `_target_`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return [str(choice)]
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    return [name for name, keys in group_options(group).items() if keys.get("_target_") == target]


def _check_finetune_keys(cfg: DictConfig, problems: list[str]) -> None:
    """A key added to finetune (+finetune.r=8) that the chosen strategy does not take."""
    node = cfg.get("finetune")
    if not isinstance(node, DictConfig):
        return
    options = group_options("finetune")
    current = chosen_options("finetune", node)
    accepted = set().union(*(options[o].keys() for o in current)) if current else None
    if accepted is None:
        return  # a strategy class of the user's own: its own arguments decide
    given = cast("dict[str, Any]", OmegaConf.to_container(node, resolve=False))
    for key, value in given.items():
        if key in accepted:
            continue
        owners = [o for o, keys in options.items() if key in keys]
        uses = f"the run uses finetune={'/'.join(current)}"
        if owners:
            problems.append(
                f"finetune.{key} applies to finetune={'/'.join(owners)}; {uses}. Choose one of "
                f"those (finetune={owners[0]} finetune.{key}={value}) or leave finetune.{key} out."
            )
        else:
            settings = sorted(k for k in accepted if not k.startswith("_"))
            close = difflib.get_close_matches(str(key), settings, n=1)
            hint = f" Did you mean finetune.{close[0]}?" if close else ""
            problems.append(
                f"finetune.{key} is not a setting of any finetune option; {uses}, whose settings "
                f"are: {', '.join(settings) or 'none'}.{hint}"
            )


def _check_finetune_versions(cfg: DictConfig, problems: list[str]) -> None:
    """A fine-tuning method that the installed library versions are known to break."""
    node = cfg.get("finetune")
    if not isinstance(node, DictConfig):
        return
    for option in chosen_options("finetune", node):
        if problem := strategy_problem(option):
            problems.append(problem)


def _options_building(group: str, class_of_target: str) -> str:
    names = [
        name
        for name, keys in group_options(group).items()
        if class_name(keys.get("_target_", "")) == class_of_target
    ]
    return ", ".join(f"{group}={n}" for n in names) or f"a {group} config of {class_of_target}"


def _check_task_parts(cfg: DictConfig, problems: list[str]) -> None:
    """The model's task family and the data's datamodule must belong together."""
    family = family_of_module(_select(cfg, "model._target_"))
    data_target = _select(cfg, "data._target_") or ""
    readers = families_of_datamodule(data_target)
    if family is None or not readers or family in readers:
        return
    wanted = class_name(family.datamodule)
    problems.append(
        f"model._target_ trains {family.name} ({class_name(family.module)}), which reads "
        f"{wanted} data ({_options_building('data', wanted)}), but data._target_ builds "
        f"{class_name(data_target)}. Pick a matching model and data, or an experiment "
        f"that sets both (experiment={family.experiment})."
    )


def _family_flags(cfg: DictConfig, family: TaskFamily) -> dict[str, bool]:
    """The boolean config keys that decide which of the family's metrics are logged."""
    return {key: bool(_select(cfg, key)) for key in family.only_when.values()}


def _check_monitored_metrics(cfg: DictConfig, problems: list[str]) -> None:
    """The optimized metric and any monitored key must be one the task logs during training."""
    family = family_of_module(_select(cfg, "model._target_"))
    if family is None:
        return
    flags = _family_flags(cfg, family)
    logged = ", ".join(family.monitorable(flags))
    optimized = _select(cfg, "optimized_metric")
    watched = [("optimized_metric", optimized)]
    callbacks = cfg.get("callbacks")
    if isinstance(callbacks, DictConfig):
        for name in callbacks:
            entry = callbacks.get(name)
            monitor = entry.get("monitor") if isinstance(entry, DictConfig) else None
            if monitor is not None and monitor != optimized:
                watched.append((f"callbacks.{name!s}.monitor", monitor))
    for key, metric in watched:
        if not family.logs(str(metric), flags):
            problems.append(
                f"{key}={metric!r} is not a metric the {family.name} task logs during "
                f"training, so no checkpoint or early stop could follow it; it logs {logged}"
                + (" (<...>: one per label or entity type)." if "<" in logged else ".")
            )


def _check_compare(cfg: DictConfig, problems: list[str]) -> None:
    baselines = _select(cfg, "compare.baselines")
    names = known_baselines()
    known = ", ".join(names)
    if isinstance(baselines, ListConfig | list) and (
        unknown := [str(b) for b in baselines if b not in names]
    ):
        problems.append(
            f"compare.baselines: unknown {', '.join(unknown)}; expected some of {known}."
        )


def _check_run_dir(cfg: DictConfig) -> None:
    """A new run never writes into a directory that holds another run (resume continues one)."""
    if cfg.get("resume") or process_rank() > 0:
        # Processes other than rank 0 join the run directory rank 0 started.
        return
    output_dir = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
    if output_dir:
        check_run_dir_is_free(Path(str(output_dir)), "paths.output_dir")


def process_rank() -> int:
    """This process's rank in a multi-process run (0 in a single-process one)."""
    ranks = (os.environ.get(v, "0") for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
    return max(int(r) if r.isdigit() else 0 for r in ranks)


# ----- stage 2: the model's own config and tokenizer ------------------------------------------


def check_model_fits(cfg: DictConfig) -> None:
    """Refuse sequence lengths beyond the model's positions and tokenizers with ids beyond its
    embeddings, reading config.json and the tokenizer only (no weights, no data)."""
    problems: list[str] = []
    model = cfg.model
    from_config = _select(cfg, "model.from_config")
    overrides = _plain_dict(model.get("config_overrides"))
    if from_config:
        fields = {**_plain_dict(from_config), **overrides}
        source = "model.from_config"
        vocab_size = None  # taken from the tokenizer when the model is built
    else:
        fields = {**_pretrained_config(str(model.pretrained)), **overrides}
        source = f"model.pretrained={str(model.pretrained)!r}"
        vocab_size = fields.get("vocab_size")
    _check_positions(cfg, fields, source, problems)
    tokenizer_name = _select(cfg, "model.tokenizer") or _select(cfg, "model.pretrained")
    if vocab_size and tokenizer_name:
        size = _tokenizer_size(str(tokenizer_name))
        if size > vocab_size:
            problems.append(
                f"model.tokenizer={str(tokenizer_name)!r} has {size} tokens but {source} embeds "
                f"only {vocab_size}: token ids above {vocab_size - 1} would index past the "
                "embeddings. Use the model's own tokenizer (leave model.tokenizer at its default) "
                "or a model trained with this tokenizer."
            )
    if problems:
        raise LmforgeError("Invalid config: " + " ".join(problems))


def _plain_dict(node: Any) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        return cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True))
    return {}


def _check_positions(
    cfg: DictConfig, fields: dict[str, Any], source: str, problems: list[str]
) -> None:
    limit = usable_positions(fields)
    family = family_of_module(_select(cfg, "model._target_"))
    if limit is None or family is None:
        return
    data_format = family.data_format(_select(cfg, "data._target_") or "")
    key = (data_format or family.data_formats[0]).length_key
    length = _select(cfg, key)
    if length is not None and length > limit:
        problems.append(
            f"{key}={length} is longer than the {limit} positions of {source}; expected {limit} "
            "or less: lower it, or use a model with more positions."
        )


@functools.cache
def _pretrained_config(name: str) -> dict[str, Any]:
    """config.json of a hub model or local folder (no weights), as a dict."""
    from transformers import AutoConfig

    from lmforge.config.embedded import model_source

    source = model_source(name)  # an embedded model's name: its local folder
    try:
        return AutoConfig.from_pretrained(source).to_dict()
    except Exception as err:
        raise LmforgeError(
            f"model.pretrained={name!r} is not a model this run can load (expected a hub name "
            f"or a folder with config.json and weights): {err}"
        ) from err


@functools.cache
def _tokenizer_size(name: str) -> int:
    """Number of token ids the tokenizer can produce (its vocabulary and added tokens)."""
    from lmforge.data.tokenization import load_tokenizer

    return len(load_tokenizer(name))
