"""Configs of earlier runs, brought up to this lmforge: a run's config.yaml names the `_target_`
paths of the lmforge that wrote it, and some have moved since. `resume=`, `lmforge-eval`,
`lmforge-predict` and `lmforge-export` read old runs through `upgrade_config`, so a move never
strands a run."""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, open_dict

# Modules that moved (old dotted path -> new): the top level was grouped into folders.
MOVED_MODULES = {
    "lmforge.strategies": "lmforge.finetune.strategies",
    "lmforge.optim": "lmforge.finetune.optim",
    "lmforge.distillation": "lmforge.finetune.distillation",
    "lmforge.loggers": "lmforge.runtime.loggers",
    "lmforge.sweep": "lmforge.runtime.sweep",
    "lmforge.serve": "lmforge.serve.server",
    "lmforge.serve_api": "lmforge.serve.api",
    "lmforge.serve_requests": "lmforge.serve.checks",
    "lmforge.validation": "lmforge.config.validation",
    "lmforge.command_line": "lmforge.config.command_line",
    "lmforge.positions": "lmforge.config.positions",
    "lmforge.tokenization": "lmforge.data.tokenization",
    "lmforge.runs": "lmforge.tasks.runs",
}


def upgraded_target(target: str) -> str:
    """Where `target` (a dotted path to a class or function) lives in this lmforge."""
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def upgrade_config(cfg: DictConfig) -> DictConfig:
    """`cfg` (a saved run config) with every `_target_` of a moved module pointed at its new
    place, and its model and data classes at their family folders; changed in place."""
    from lmforge.tasks import upgrade_targets

    _upgrade_node(cfg)
    return upgrade_targets(cfg)


def _upgrade_node(node: DictConfig | ListConfig) -> None:
    items = node.items() if isinstance(node, DictConfig) else enumerate(node)
    for key, value in list(items):
        if isinstance(value, DictConfig | ListConfig):
            _upgrade_node(value)
        elif key == "_target_" and isinstance(value, str) and isinstance(node, DictConfig):
            new = upgraded_target(value)
            if new != value:
                with open_dict(node):
                    node["_target_"] = new
