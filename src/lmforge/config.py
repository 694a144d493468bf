"""Checks on a composed config that run before any heavy import or data loading.

Hydra already refuses unknown keys and unknown group options; these checks catch values that
compose fine but cannot work, with one message naming every key at fault.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from lmforge.baselines import BASELINES
from lmforge.errors import LmforgeError

PRECISIONS = {
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


def _select(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _positive(cfg: DictConfig, key: str, problems: list[str], allow_none: bool = True) -> None:
    value = _select(cfg, key)
    if value is None:
        if not allow_none:
            problems.append(f"{key} must be set.")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        problems.append(f"{key} must be a number above 0, got {value!r}.")


def validate_training_config(cfg: DictConfig) -> None:
    """Raise one LmforgeError listing every impossible value of a training config."""
    problems: list[str] = []
    for key in ("optimizer.lr", "data.batch_size", "data.eval_batch_size"):
        _positive(cfg, key, problems, allow_none=False)
    for key in (
        "data.max_length",  # not every task has it: language modelling uses block_size
        "data.block_size",
        "data.max_train_samples",
        "data.max_eval_samples",
        "data.max_test_samples",
    ):
        _positive(cfg, key, problems)
    weight_decay = _select(cfg, "optimizer.weight_decay")
    if weight_decay is not None and weight_decay < 0:
        problems.append(f"optimizer.weight_decay must be 0 or more, got {weight_decay!r}.")
    max_epochs = _select(cfg, "trainer.max_epochs")
    max_steps = _select(cfg, "trainer.max_steps")
    if not (max_steps and max_steps > 0) and (max_epochs is None or max_epochs <= 0):
        problems.append(
            f"trainer.max_epochs must be at least 1 (or set trainer.max_steps), got {max_epochs!r}."
        )
    accumulate = _select(cfg, "trainer.accumulate_grad_batches")
    if accumulate is not None and (not isinstance(accumulate, int) or accumulate < 1):
        problems.append(f"trainer.accumulate_grad_batches must be 1 or more, got {accumulate!r}.")
    precision = _select(cfg, "trainer.precision")
    if precision is not None and str(precision) not in PRECISIONS:
        problems.append(
            f"trainer.precision={precision!r} is not a Lightning precision; expected one of "
            "32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true."
        )
    strategy = _select(cfg, "trainer.strategy")
    devices = _select(cfg, "trainer.devices")
    if isinstance(strategy, DictConfig) and isinstance(devices, int) and devices < 2:
        problems.append(
            f"trainer.strategy is {strategy.get('_target_', strategy)} (distributed) but "
            f"trainer.devices={devices}; use 2 or more devices, or trainer=cpu / trainer=gpu."
        )
    warmup = _select(cfg, "scheduler.warmup_ratio")
    if warmup is not None and not 0 <= warmup < 1:
        problems.append(f"scheduler.warmup_ratio must be in [0, 1), got {warmup!r}.")
    for key in ("data.validation_ratio", "data.test_ratio"):
        value = _select(cfg, key)
        if value is not None and not 0 < value < 1:
            problems.append(f"{key} must be in (0, 1), got {value!r}.")
    mode = _select(cfg, "optimized_mode")
    if mode not in ("min", "max"):
        problems.append(f"optimized_mode must be 'min' or 'max', got {mode!r}.")
    if not _select(cfg, "model.pretrained") and not _select(cfg, "model.from_config"):
        problems.append(
            "model.pretrained must name a hub model or a local model folder (or set "
            "model.from_config to train from scratch)."
        )
    _check_compare(cfg, problems)
    if problems:
        raise LmforgeError("Invalid config: " + " ".join(problems))


def _check_compare(cfg: DictConfig, problems: list[str]) -> None:
    baselines = _select(cfg, "compare.baselines")
    known = ", ".join(BASELINES)
    if not isinstance(baselines, ListConfig | list):
        problems.append(f"compare.baselines must be a list (some of {known}), got {baselines!r}.")
    elif unknown := [str(b) for b in baselines if b not in BASELINES]:
        problems.append(
            f"compare.baselines: unknown {', '.join(unknown)}; expected some of {known}."
        )
    flipped = _select(cfg, "compare.max_flipped")
    if isinstance(flipped, bool) or not isinstance(flipped, int) or flipped < 0:
        problems.append(f"compare.max_flipped must be a whole number, 0 or more, got {flipped!r}.")
