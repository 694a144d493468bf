"""Task families: one folder each under `lmforge/tasks/`, found by looking in this package.

A family folder's `__init__.py` defines `FAMILIES`, a tuple of `TaskFamily` specs, and imports
no torch, so this registry loads in the config checks before any heavy import. Adding a
family is adding a folder (and its configs); nothing here changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from omegaconf import DictConfig, open_dict

from lmforge.errors import LmforgeError
from lmforge.tasks.spec import DataFormat, TaskFamily, class_name


def _discover() -> dict[str, TaskFamily]:
    found: dict[str, TaskFamily] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda item: item.name):
        if not info.ispkg:
            continue
        package = importlib.import_module(f"{__name__}.{info.name}")
        for family in getattr(package, "FAMILIES", ()):
            if family.name in found:
                raise LmforgeError(
                    f"Two task families are named {family.name!r} (lmforge.tasks.{info.name} "
                    "and another folder); family names must be unique."
                )
            found[family.name] = family
    return found


# Family name -> spec, for every family folder.
FAMILIES: dict[str, TaskFamily] = _discover()


def family_named(name: str, where: str = "") -> TaskFamily:
    """The family called `name`; an error naming `where` it was found and the known ones."""
    if name not in FAMILIES:
        raise LmforgeError(
            f"{where or 'task'}: unknown task family {name!r}; lmforge has {', '.join(FAMILIES)}."
        )
    return FAMILIES[name]


def family_of_module(target: object) -> TaskFamily | None:
    """The family whose LightningModule `target` names (a `_target_` or a class name)."""
    name = class_name(target)
    return next((f for f in FAMILIES.values() if class_name(f.module) == name), None)


def families_of_datamodule(target: object) -> list[TaskFamily]:
    """The families that read data with the datamodule `target` names."""
    return [f for f in FAMILIES.values() if f.data_format(target) is not None]


def family_of_architectures(architectures: list[str] | None) -> TaskFamily | None:
    """The family of a Hugging Face architecture name (`BertForTokenClassification`)."""
    for architecture in architectures or []:
        for family in FAMILIES.values():
            if architecture.endswith(family.architecture_suffixes):
                return family
    return None


def length_key_of(datamodule: object) -> str:
    """The data config key that caps the sequence length of the format `datamodule` reads."""
    for family in FAMILIES.values():
        if (found := family.data_format(datamodule)) is not None:
            return found.length_key
    return DataFormat.length_key


def upgrade_targets(cfg: DictConfig) -> DictConfig:
    """A saved run config with the `_target_` of its model and data pointing at the family
    classes of this lmforge: configs of earlier runs name them by older paths
    (`lmforge.tasks.TextClassificationModule`); the class name tells the family."""
    for section, path_of in (("model", "module"), ("data", "datamodule")):
        node = cfg.get(section)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target:
            continue
        for family in FAMILIES.values():
            dotted = getattr(family, path_of)
            if class_name(target) == class_name(dotted) and target != dotted:
                with open_dict(node):
                    node["_target_"] = dotted
    return cfg


__all__ = [
    "FAMILIES",
    "TaskFamily",
    "families_of_datamodule",
    "family_named",
    "family_of_architectures",
    "family_of_module",
    "length_key_of",
    "upgrade_targets",
]
