"""What each task family is made of, named without importing it.

Config checks run before torch is imported, so they cannot ask the task modules which metrics
they log or which datamodule feeds them. This table answers instead; tests/test_bad_input_config.py
checks it against the task classes and the metrics a real run logs, so it cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaskFamily:
    """One task family: its task module and datamodule classes and the metrics it logs.

    `metrics` are the names after the stage prefix (`val/acc`, `test/acc`); a name ending in
    `<...>` stands for one metric per label or entity type (`f1_<label>` -> `f1_games`).
    `only_when` names metrics logged only when a boolean config key is true.
    """

    task: str
    module: str
    datamodule: str
    metrics: tuple[str, ...]
    only_when: dict[str, str] = field(default_factory=dict)

    def monitorable(self, cfg_flags: dict[str, bool] | None = None) -> list[str]:
        """The keys a checkpoint or early-stopping callback can watch during training."""
        flags = cfg_flags or {}
        names = [
            f"val/{m}" for m in self.metrics if flags.get(self.only_when.get(m, ""), True) is True
        ]
        return [*names, "train/loss"]

    def logs(self, key: str, cfg_flags: dict[str, bool] | None = None) -> bool:
        """Whether `key` (e.g. `val/f1_macro`) is logged during training by this family."""
        # Lightning adds _step/_epoch to metrics logged both per step and per epoch.
        if key in ("train/loss", "train/loss_step", "train/loss_epoch"):
            return True
        for name in self.monitorable(cfg_flags):
            if name.endswith(">"):
                pattern = re.escape(name[: name.index("<")]) + r"[^/]+"
                if re.fullmatch(pattern, key):
                    return True
            elif key == name:
                return True
        return False


TASK_FAMILIES: dict[str, TaskFamily] = {
    family.task: family
    for family in (
        TaskFamily(
            task="text_classification",
            module="TextClassificationModule",
            datamodule="TextClassificationDataModule",
            metrics=("loss", "acc", "f1_macro", "f1_micro", "f1_<label>"),
            only_when={"f1_micro": "model.multi_label"},
        ),
        TaskFamily(
            task="token_classification",
            module="TokenClassificationModule",
            datamodule="TokenClassificationDataModule",
            metrics=("loss", "precision", "recall", "f1", "token_acc", "f1_<type>"),
        ),
        TaskFamily(
            task="causal_lm",
            module="CausalLMModule",
            datamodule="LanguageModelingDataModule",
            metrics=("loss", "perplexity"),
        ),
        TaskFamily(
            task="masked_lm",
            module="MaskedLMModule",
            datamodule="LanguageModelingDataModule",
            metrics=("loss", "perplexity", "masked_acc"),
        ),
    )
}


def class_name(target: object) -> str:
    """The class name a `_target_` names (its last dotted part)."""
    return str(target).rpartition(".")[2]


def family_of_module(target: object) -> TaskFamily | None:
    """The family whose task module `target` names; None for a class lmforge does not ship."""
    name = class_name(target)
    return next((f for f in TASK_FAMILIES.values() if f.module == name), None)
