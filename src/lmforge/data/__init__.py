"""Data sources, the shared datamodule base, batching and data checks.

A task family's own datamodule lives in its folder (`lmforge.tasks.<family>.data`). The old
names `lmforge.data.TextClassificationDataModule` and friends, which configs of earlier runs
name as `_target_`, still resolve: they are looked up in the task-family registry on use.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from lmforge.tasks import FAMILIES
    from lmforge.tasks.spec import class_name

    if name in ("TextDataModule", "prepare_datamodule"):
        from lmforge.data import datamodule

        return getattr(datamodule, name)
    for family in FAMILIES.values():
        if class_name(family.datamodule) == name:
            return family.datamodule_class()
    raise AttributeError(f"module 'lmforge.data' has no attribute {name!r}")
