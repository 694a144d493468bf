"""Checkpoint files: reading them with clear errors, writing them atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmforge.errors import LmforgeError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file written by an lmforge run, with clear errors."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise LmforgeError(f"ckpt_path={str(path)!r}: no such checkpoint file.")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:
        raise LmforgeError(
            f"ckpt_path={str(path)!r} could not be read as a checkpoint: {err}"
        ) from err
    if not isinstance(checkpoint, dict) or "lmforge" not in checkpoint:
        raise LmforgeError(
            f"ckpt_path={str(path)!r} was not written by an lmforge run (it has no 'lmforge' "
            "record of the task and model config)."
        )
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside its target, then renames it.

    A crash or a kill mid-write leaves the previous `last.ckpt` intact: the rename is atomic on
    one filesystem. Lightning's own save goes through fsspec, whose local transactions write the
    temporary file in the system temp dir and move it across filesystems (a copy, not atomic).
    Remote paths (`s3://...`) keep Lightning's route.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)


def use_atomic_checkpoints(strategy: Any) -> None:
    """Make a strategy that saves through plain torch.save write atomically."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
