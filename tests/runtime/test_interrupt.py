"""Stopping a run: SIGTERM / Ctrl-C mid-epoch and exact resumption, NaN losses, atomic saves."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import open_dict

from lmforge.data.sampler import SeededBatchSampler
from lmforge.runtime.callbacks import NonFiniteLoss
from lmforge.runtime.checkpoints import AtomicCheckpointIO
from lmforge.train import train
from tests.helpers import ENV, REPO, compose_config, script, tiny_overrides

STEPS_PER_EPOCH = 6  # 96 training rows, batches of 16
STOP_AT_STEP = 9  # epoch 1, after its 3rd batch: mid-epoch

# The training process of the kill test: a real run that, after optimizer step STOP_AT_STEP,
# says so in a marker file and waits (at that batch boundary) until the parent's signal lands.
CHILD = """
import sys, time
from pathlib import Path
import lightning.pytorch as pl
from omegaconf import open_dict
from lmforge.cli import user_errors
from lmforge.train import train
from tests.helpers import compose_config

run_dir, marker, stop_at, *overrides = sys.argv[1:]

class WaitForSignal(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(stop_at):
            Path(marker).write_text("ready")
            deadline = time.monotonic() + 120
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.01)

cfg = compose_config(overrides)
with open_dict(cfg):
    cfg.paths.output_dir = run_dir
with user_errors():
    train(cfg, callbacks=[WaitForSignal()])
"""


def overrides(tiny_model: Path, tiny_data: Path, tmp_path: Path) -> list[str]:
    base = [o for o in tiny_overrides(tiny_model, tiny_data) if "max_epochs" not in o]
    return [
        *base,
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "evaluate_before=false",
        "compare.baselines=[]",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]


def results(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"test": metrics["test"], "validation": metrics["validation"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    cfg = compose_config(overrides(tiny_model, tiny_data, root))
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "run")
    train(cfg)
    return root / "run"


@pytest.mark.parametrize(
    ("stop", "exit_code"),
    # Both signals take the same path to the resumable stop; Ctrl-C's run is in the slow set.
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],
    ids=["sigterm", "ctrl-c"],
)
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_result(
    stop, exit_code, uninterrupted, tmp_path, tiny_model, tiny_data
):
    run_dir, marker = tmp_path / "run", tmp_path / "ready"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(run_dir),
            str(marker),
            str(STOP_AT_STEP),
            *overrides(tiny_model, tiny_data, tmp_path),
        ],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert child.poll() is None, child.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    child.send_signal(stop)
    output = child.communicate(timeout=120)[0]
    assert child.returncode == exit_code, output[-3000:]
    assert f"Continue the run with: lmforge-train resume={run_dir}" in output
    assert "Traceback" not in output
    assert not (run_dir / "metrics.json").exists()
    saved = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == STOP_AT_STEP

    resumed = subprocess.run(
        [script("lmforge-train"), f"resume={run_dir}"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # It started where it stopped: mid-epoch, not at an epoch boundary.
    assert metrics["resumed_from"]["global_step"] == STOP_AT_STEP
    assert STOP_AT_STEP % STEPS_PER_EPOCH != 0
    assert metrics["global_step"] == 3 * STEPS_PER_EPOCH
    assert results(run_dir) == results(uninterrupted)
    for name in ("best.ckpt", "last.ckpt"):
        ours, reference = (
            weights(run_dir / "checkpoints" / name),
            weights(uninterrupted / "checkpoints" / name),
        )
        assert ours.keys() == reference.keys()
        for key in reference:
            assert torch.equal(ours[key], reference[key]), f"{name}: {key} differs"


def test_the_sampler_skips_the_batches_a_resumed_epoch_already_trained_on():
    sampler = SeededBatchSampler([5] * 40, batch_size=4, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume_at(epoch=2, batches_done=3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # only the first pass after a resume is shortened
    sampler.resume_at(epoch=1, batches_done=3)  # a checkpoint from the end of epoch 1
    assert list(sampler) == full


class PoisonAt(pl.Callback):
    """Makes the loss NaN from optimizer step `step` on, recording last.ckpt's hash first."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        self.step, self.checkpoint, self.digest = step, checkpoint, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.digest is None:
            self.digest = hashlib.sha256(self.checkpoint.read_bytes()).hexdigest()
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.ndim == 2).fill_(float("nan"))


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(make_cfg):
    cfg = make_cfg("evaluate_before=false", "compare.baselines=[]", "trainer.max_epochs=3")
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    poison = PoisonAt(STEPS_PER_EPOCH + 2, last)
    with pytest.raises(NonFiniteLoss, match=r"became nan at epoch 1, optimizer step 8") as err:
        train(cfg, callbacks=[poison])
    assert "checkpoints/last.ckpt" in str(err.value) and "optimizer.lr" in str(err.value)
    # The epoch-0 checkpoint is untouched and holds finite weights.
    assert hashlib.sha256(last.read_bytes()).hexdigest() == poison.digest
    state = weights(last)
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_file_intact(
    tmp_path, monkeypatch
):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "weights": torch.ones(3)}, target)
    good = target.read_bytes()

    def crash_midway(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "weights": torch.zeros(3)}, target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_a_checkpoint_write_on_a_full_disk_says_so_in_one_paragraph(tmp_path, monkeypatch):
    """torch.save reports a full disk as "enforce fail at inline_container.cc ... unexpected
    pos"; the run says which file, which disk, how much is free and what to do."""
    import errno
    import shutil
    from collections import namedtuple

    from lmforge.errors import LmforgeError

    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    good = target.read_bytes()

    def full_disk(obj, file, *args, **kwargs):
        file.write(b"x" * 3 * 2**20)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 193376192")

    usage = namedtuple("usage", "total used free")

    def disk_usage(path):
        # The disk is full while the partial write holds its space; deleting it frees room
        # (a real checkpoint's hundreds of MiB), so the check must look before that.
        partial = any(p.name.endswith(".partial") for p in target.parent.iterdir())
        return usage(10 * 2**30, 10 * 2**30, 2**20 if partial else 512 * 2**20)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    with pytest.raises(LmforgeError) as error:
        io.save_checkpoint({"step": 2}, target)
    message = str(error.value)
    assert message.startswith(
        f"Saving the checkpoint {target} failed: the disk holding {target.parent} is full"
    )
    assert "(1 MiB free after 3 MiB of it were written)" in message
    assert "The previous last.ckpt is intact." in message
    assert "callbacks.last_checkpoint=null" in message and "\n" not in message
    assert target.read_bytes() == good
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    # An OSError of no space left says so whatever the disk shows afterwards.
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 0, 5 * 2**30))

    def no_space(obj, file, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(LmforgeError, match="is full"):
        io.save_checkpoint({"step": 2}, target)
    # With room on the disk the write's own error stands.
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 0, 5 * 2**30))
    with pytest.raises(RuntimeError, match="inline_container"):
        io.save_checkpoint({"step": 2}, target)


def test_runs_save_checkpoints_atomically(make_cfg, tmp_path):
    from lmforge.runtime.precision import settle_precision
    from lmforge.runtime.trainer import build_trainer

    cfg = make_cfg()
    settle_precision(cfg)
    run = build_trainer(cfg, tmp_path, [], None)
    assert isinstance(run.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_ctrl_c_outside_training_exits_without_a_traceback(tmp_path):
    code = "from lmforge.cli import user_errors\nwith user_errors():\n    raise KeyboardInterrupt\n"
    result = subprocess.run(
        [sys.executable, "-c", code], env=ENV, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 130
    assert "Traceback" not in result.stderr
    assert os.environ.get("HYDRA_FULL_ERROR") != "1"
