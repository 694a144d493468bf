"""Runs made before a module moved keep working: their config.yaml names the old `_target_`
paths, and resume, lmforge-eval, lmforge-predict and lmforge-export read it upgraded."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
from omegaconf import OmegaConf

from lmforge.config.upgrade import MOVED_MODULES, upgrade_config, upgraded_target
from lmforge.evaluate import evaluate
from lmforge.export import export
from lmforge.predict import predict
from lmforge.runtime.rundir import prepare_resume
from lmforge.train import train


def in_the_old_layout(text: str) -> str:
    """A config as the lmforge before the move wrote it."""
    for old, new in MOVED_MODULES.items():
        text = text.replace(f"{new}.", f"{old}.")
    return text


def test_every_moved_module_maps_to_one_that_exists():
    import importlib

    for new in MOVED_MODULES.values():
        importlib.import_module(new)
    assert upgraded_target("lmforge.strategies.Lora") == "lmforge.finetune.strategies.Lora"
    assert upgraded_target("torch.optim.AdamW") == "torch.optim.AdamW"
    cfg = OmegaConf.create({"a": [{"_target_": "lmforge.loggers.CSVLogger"}], "b": 1})
    assert upgrade_config(cfg).a[0]._target_ == "lmforge.runtime.loggers.CSVLogger"


class StopAfterFirstEpoch(pl.Callback):
    """An interrupted run: it stops when the second epoch starts (the first is saved)."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("stopped")


def test_a_run_written_before_the_move_resumes_evaluates_predicts_and_exports(make_cfg, tmp_path):
    quick = ["evaluate_before=false", "compare.baselines=[]", "compare.max_flipped=0"]
    cfg = make_cfg("trainer.max_epochs=2", *quick, run="old")
    with pytest.raises(RuntimeError, match="stopped"):
        train(cfg, callbacks=[StopAfterFirstEpoch()])
    run_dir = Path(cfg.paths.output_dir)
    saved = run_dir / "config.yaml"
    old = in_the_old_layout(saved.read_text())
    assert "lmforge.finetune.strategies.Full" not in old and "lmforge.strategies.Full" in old
    assert "lmforge.runtime.loggers.CSVLogger" not in old
    saved.write_text(old)
    best = run_dir / "checkpoints" / "best.ckpt"

    metrics = evaluate(make_cfg(f"ckpt_path={best}", config_name="eval", run="eval"))
    assert 0 <= metrics["test/acc"] <= 1
    written = predict(
        make_cfg(f"ckpt_path={best}", "input='match goal team'", config_name="predict", run="p")
    )
    assert json.loads(written.read_text().splitlines()[0])["label"]
    folder = export(make_cfg(f"ckpt_path={best}", config_name="export", run="x"))
    assert (folder / "config.json").is_file()

    # The run stopped after its first epoch: resume it for the second.
    resumed, ckpt = prepare_resume(make_cfg(f"resume={run_dir}"), [])
    train(upgrade_config(resumed), ckpt_path=ckpt)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["epochs_completed"] == 2
    assert record["resumed_from"]["global_step"] == 6  # the first epoch: 96 rows / 16
