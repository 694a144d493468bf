"""A finished (or stopped) run as the commands after training see it: a checkpoint, the task
module rebuilt from it, and its run directory with the config, tokenizer and settings.

One loader for `lmforge-eval`, `lmforge-predict`, `lmforge-export` and a distillation teacher,
so each needs neither the hub nor the original model folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmforge.config.upgrade import upgrade_config
from lmforge.errors import LmforgeError
from lmforge.finetune.strategies import strategy_from_record
from lmforge.runtime.checkpoints import read_checkpoint
from lmforge.runtime.rundir import CONFIG_FILE, TOKENIZER_DIR
from lmforge.tasks import FAMILIES, family_of_module
from lmforge.tasks.base import TaskModule
from lmforge.tasks.spec import TaskFamily

# A run directory's best checkpoint, for a distillation teacher given as a run directory.
BEST_CHECKPOINT = "checkpoints/best.ckpt"


def load_task_module(path: str | Path, expected_task: str | None = None) -> TaskModule:
    """Rebuild the task module of a checkpoint and load its weights (on CPU, in eval mode)."""
    checkpoint = read_checkpoint(path)
    record = checkpoint["lmforge"]
    task = record["task"]
    if task not in FAMILIES:
        raise LmforgeError(
            f"ckpt_path={str(path)!r} holds a {task!r} model, a task family this lmforge does "
            f"not have (it has {', '.join(FAMILIES)})."
        )
    if expected_task and task != expected_task:
        raise LmforgeError(
            f"ckpt_path={str(path)!r} holds a {task} model, but a {expected_task} one is needed."
        )
    module_class = FAMILIES[task].module_class()
    strategy = strategy_from_record(record.get("finetune"))
    if record.get("adapter_only"):
        # Adapters and head only: the frozen base is loaded again from `pretrained` (and the
        # checkpoint the run started from, if any), then the saved weights go on top.
        module = module_class(
            **checkpoint["hyper_parameters"], finetune=strategy, init_from=record.get("init_from")
        )
        result = module.load_state_dict(checkpoint["state_dict"], strict=False)
        if result.unexpected_keys:
            raise LmforgeError(
                f"ckpt_path={str(path)!r}: {len(result.unexpected_keys)} saved weights do not "
                f"fit the rebuilt {strategy.name} model (e.g. {result.unexpected_keys[0]}); was "
                "the base model changed since the run?"
            )
    else:
        module = module_class(
            **checkpoint["hyper_parameters"], hf_config=record["hf_config"], finetune=strategy
        )
        module.load_state_dict(checkpoint["state_dict"])
    # What a module keeps beside its weights (a tuned threshold), as Lightning restores it.
    module.on_load_checkpoint(checkpoint)
    module.eval()
    return module


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run directory holding a checkpoint (`<run dir>/checkpoints/<name>.ckpt`)."""
    return Path(ckpt_path).expanduser().resolve().parent.parent


@dataclass
class TrainedRun:
    """A checkpoint's task module and what its run directory holds."""

    ckpt_path: str
    module: TaskModule
    run_dir: Path
    config: DictConfig

    @property
    def family(self) -> TaskFamily:
        return self.module.family

    @property
    def tokenizer_dir(self) -> Path:
        return self.run_dir / TOKENIZER_DIR

    def data_config(self) -> DictConfig:
        """The run's data section, reading with the run's saved tokenizer."""
        # A mapping section makes a DictConfig.
        data = cast(
            DictConfig, OmegaConf.create(OmegaConf.to_container(self.config.data, resolve=False))
        )
        data.tokenizer = str(self.tokenizer_dir)
        return data

    def datamodule(self, **changes: Any) -> Any:
        """The run's datamodule (built, no data read), with `changes` to its settings."""
        data = self.data_config()
        for key, value in changes.items():
            data[key] = value
        return instantiate(data, _convert_="all")

    def settings(self) -> dict[str, Any]:
        """What prediction and export need beyond the weights: the data's lengths and columns
        and the model's labels and thresholds (`run_settings()` of both)."""
        return {**self.datamodule().run_settings(), **self.module.run_settings()}


def load_run(ckpt_path: str, command: str) -> TrainedRun:
    """The checkpoint and its run directory, checked: the directory must hold the run's config
    and tokenizer, and be a run of the checkpoint's task family (`command` names who asks)."""
    module = load_task_module(ckpt_path)
    run_dir = run_dir_of(ckpt_path)
    for needed in (CONFIG_FILE, TOKENIZER_DIR):
        if not (run_dir / needed).exists():
            raise LmforgeError(
                f"ckpt_path={ckpt_path!r}: its run directory {run_dir} holds no {needed}; "
                f"{command} needs the run directory a checkpoint was saved in."
            )
    # A saved run config is a mapping: a DictConfig.
    config = upgrade_config(cast(DictConfig, OmegaConf.load(run_dir / CONFIG_FILE)))
    target = OmegaConf.select(config, "model._target_", default=None)
    family = family_of_module(target)
    if family is not None and family.name != module.task_name:
        raise LmforgeError(
            f"ckpt_path={ckpt_path!r} holds a {module.task_name} model, but its run directory's "
            f"{run_dir / CONFIG_FILE} is a {family.name} run (model._target_={target}); the "
            "checkpoint was moved from another run. Give the checkpoint inside its own run "
            "directory (<run dir>/checkpoints/best.ckpt)."
        )
    return TrainedRun(str(ckpt_path), module, run_dir, config)


def load_teacher(source: str, family: TaskFamily) -> Any:
    """A distillation teacher: an lmforge checkpoint (or a run directory, its best checkpoint)
    of the same family, as a plain Hugging Face model; else a hub name or folder."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / BEST_CHECKPOINT).is_file():
        path = path / BEST_CHECKPOINT
    if path.is_file():
        return load_task_module(path, expected_task=family.name).export_model()
    from lmforge.config.embedded import model_source

    auto_class = family.auto_model_class()
    try:
        return auto_class.from_pretrained(model_source(source))
    except Exception as err:
        raise LmforgeError(
            f"distill.teacher={source!r} is neither an lmforge checkpoint nor a model "
            f"{auto_class.__name__} can load: {err}"
        ) from err
