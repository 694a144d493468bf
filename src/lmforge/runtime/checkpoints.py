"""Checkpoint files: reading them with clear errors, writing them atomically."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lmforge.errors import LmforgeError
from lmforge.runtime.rundir import is_deepspeed_checkpoint


def consolidated(folder: Path) -> Path:
    """A DeepSpeed checkpoint folder as one checkpoint file (`<folder>.fp32.ckpt` beside it):
    its sharded ZeRO weights gathered with Lightning's `convert_zero_checkpoint_to_fp32_state_dict`
    on first use, and reused while it is newer than the folder."""
    target = folder.with_name(folder.name + ".fp32.ckpt")
    if target.is_file() and target.stat().st_mtime >= (folder / "latest").stat().st_mtime:
        return target
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise LmforgeError(
            f"ckpt_path={str(folder)!r} is a DeepSpeed checkpoint folder; gathering its sharded "
            "weights into one file needs the deepspeed package: pip install 'lmforge[deepspeed]'."
        )
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    partial = target.with_name(target.name + ".partial")
    convert_zero_checkpoint_to_fp32_state_dict(str(folder), str(partial))
    partial.replace(target)
    return target


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file written by an lmforge run (a DeepSpeed run's folder is gathered
    into one file first), with clear errors."""
    file = Path(path).expanduser()
    if is_deepspeed_checkpoint(file):
        file = consolidated(file)
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
        except (OSError, RuntimeError) as error:
            # Measured before the partial file goes: deleting it frees what it took.
            full = disk_full_error(target, partial, error)
            if full is None:
                raise
            raise full from error
        finally:
            partial.unlink(missing_ok=True)


# Below this much free space a failed write is taken for a full disk (torch.save reports one as
# "enforce fail at inline_container.cc ... unexpected pos", which names neither file nor disk).
FULL_DISK_BYTES = 64 * 2**20


def disk_full_error(target: Path, partial: Path, error: Exception) -> LmforgeError | None:
    """The error to raise when writing `target` (through `partial`) failed on a full disk;
    None when the disk has room."""
    free = shutil.disk_usage(target.parent).free
    no_space = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if free > FULL_DISK_BYTES and not no_space:
        return None
    written = partial.stat().st_size if partial.exists() else 0
    return LmforgeError(
        f"Saving the checkpoint {target} failed: the disk holding {target.parent} is full "
        f"({free / 2**20:.0f} MiB free after {written / 2**20:.0f} MiB of it were written). "
        f"{'The previous ' + target.name + ' is intact. ' if target.exists() else ''}"
        "Free space there (earlier runs' checkpoints/ folders are the largest files), put runs "
        "on a larger disk with paths.output_dir=..., or keep one checkpoint per run: "
        "callbacks.last_checkpoint=null drops last.ckpt (and with it resuming)."
    )


def use_atomic_checkpoints(strategy: Any) -> None:
    """Make a strategy that saves through plain torch.save write atomically."""
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
