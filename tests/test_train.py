"""End-to-end runs on a tiny random BERT: run directory, evaluation, resume, debug modes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.testing import assert_close

from lmforge.errors import LmforgeError
from lmforge.evaluate import evaluate
from lmforge.runtime.rundir import prepare_resume
from lmforge.train import train


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_run(tiny_full_run):
    """The complete tiny training run shared by the tests that only read it."""
    return tiny_full_run


def test_run_dir_holds_everything_a_run_needs(finished_run):
    run_dir, value = finished_run
    for name in [
        "config.yaml",
        "labels.json",
        "metrics.json",
        "tokenizer/tokenizer.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ]:
        assert (run_dir / name).is_file(), name
    metrics = read_metrics(run_dir)
    assert set(metrics["test"]) >= {
        "test/loss",
        "test/acc",
        "test/f1_macro",
        "test/f1_music",
        "test/f1_sports",
        "test/f1_cooking",
    }
    assert metrics["best_validation"]["metric"] == "val/acc"
    assert metrics["best_validation"]["value"] == pytest.approx(value)
    assert metrics["train_samples_per_second"] > 0 and metrics["wall_time_seconds"] > 0
    assert metrics["data"] == {"train": 96, "validation": 30, "test": 30}
    assert metrics["epochs_completed"] == 3 and metrics["resumed_from"] is None
    # A fresh cache dir: this run tokenized (Lightning's second prepare_data call hits the cache).
    assert metrics["tokenization_cache_hit"] is False
    assert metrics["parameters"]["trainable"] == metrics["parameters"]["total"]
    labels = json.loads((run_dir / "labels.json").read_text())
    assert labels["id2label"] == {"0": "cooking", "1": "music", "2": "sports"}


def test_the_tiny_model_learns(finished_run):
    run_dir, _ = finished_run
    assert read_metrics(run_dir)["test"]["test/acc"] > 0.5  # chance is 1/3


def test_eval_reproduces_the_test_metrics_in_its_own_dir(finished_run, make_cfg, tmp_path):
    run_dir, _ = finished_run
    before = {p: digest(p) for p in run_dir.rglob("*") if p.is_file()}
    cfg = make_cfg(
        f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", config_name="eval", run="eval"
    )
    metrics = evaluate(cfg)
    expected = read_metrics(run_dir)["test"]
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-5), key
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert {p: digest(p) for p in run_dir.rglob("*") if p.is_file()} == before


def test_eval_on_another_file(finished_run, make_cfg, tmp_path):
    from tests.helpers import make_rows, write_csv

    run_dir, _ = finished_run
    other = write_csv(tmp_path / "new.csv", make_rows(12, seed=9))
    cfg = make_cfg(
        f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}",
        f"test_file={other}",
        config_name="eval",
        run="eval",
    )
    evaluate(cfg)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["examples"] == 12


def test_a_finished_run_is_not_resumed(finished_run, make_cfg):
    run_dir, _ = finished_run
    with pytest.raises(LmforgeError, match="finished"):
        prepare_resume(make_cfg(f"resume={run_dir}"), [])


def test_resume_needs_a_run_dir(make_cfg, tmp_path):
    with pytest.raises(LmforgeError, match="no such run directory"):
        prepare_resume(make_cfg(f"resume={tmp_path / 'nothing'}"), [])


class CrashAfterEpoch(pl.Callback):
    """Simulates a crash after an epoch finished (and its checkpoint was written)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch + 1:
            raise RuntimeError("simulated crash")


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(make_cfg, tmp_path):
    settings = [
        "trainer.max_epochs=3",
        "trainer.deterministic=true",
        "callbacks.early_stopping=null",
    ]
    full_value = train(make_cfg(*settings, run="full"))

    interrupted = make_cfg(*settings, run="interrupted")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(interrupted, callbacks=[CrashAfterEpoch(epoch=1)])
    run_dir = tmp_path / "interrupted"
    assert not (run_dir / "metrics.json").exists()
    saved_step = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"]

    resume_cfg, ckpt = prepare_resume(make_cfg(f"resume={run_dir}"), [])
    resumed_value = train(resume_cfg, ckpt_path=ckpt)

    full, resumed = read_metrics(tmp_path / "full"), read_metrics(run_dir)
    assert resumed["resumed_from"]["global_step"] == saved_step == 2 * 6  # 96 rows / 16
    assert resumed["global_step"] == full["global_step"] == 3 * 6
    assert resumed_value == pytest.approx(full_value)
    for key, value in full["test"].items():
        assert resumed["test"][key] == pytest.approx(value, abs=1e-6), key
    a = state_dict(tmp_path / "full/checkpoints/last.ckpt")
    b = state_dict(run_dir / "checkpoints/last.ckpt")
    for name in a:
        assert_close(a[name], b[name], msg=name)


def test_resume_refuses_other_overrides(make_cfg, tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    (run_dir / "checkpoints/last.ckpt").write_bytes(b"")
    with pytest.raises(LmforgeError, match=r"optimizer\.lr=1"):
        prepare_resume(make_cfg(f"resume={run_dir}"), ["optimizer.lr=1"])


@pytest.mark.parametrize("mode", ["fdr", "overfit", "limit", "profiler"])
def test_debug_modes_run(make_cfg, tmp_path, mode):
    train(make_cfg(f"debug={mode}"))
    metrics = read_metrics(tmp_path / "run")
    assert "test/acc" in metrics["test"]
    if mode == "profiler":
        assert list((tmp_path / "run").glob("*profiler*.txt"))


def test_overfit_drives_the_training_loss_down(make_cfg, tmp_path):
    train(make_cfg("debug=overfit", "trainer.max_epochs=30"))
    rows = (tmp_path / "run/csv/metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("train/loss_epoch")
    losses = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert losses[-1] < 0.5 * losses[0]


def test_negative_learning_rate_is_refused_before_any_work(make_cfg, tmp_path):
    with pytest.raises(LmforgeError, match=r"optimizer\.lr must be a number above 0"):
        train(make_cfg("optimizer.lr=-0.1"))
    assert not (tmp_path / "run").exists()


def test_a_run_never_overwrites_a_finished_runs_metrics(make_cfg, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    with pytest.raises(LmforgeError, match="never overwrites"):
        train(make_cfg("debug=fdr"))
    assert (run_dir / "metrics.json").read_text() == "{}"


def test_multi_label_end_to_end(make_cfg, tmp_path):
    from tests.helpers import write_csv

    rows = [
        {"text": t, "label": lab}
        for t, lab in [
            ("goal team", "sports"),
            ("song oven", "music|cooking"),
            ("flour", "cooking"),
            ("drum match", "music|sports"),
        ]
        * 12
    ]
    path = write_csv(tmp_path / "ml.csv", rows)
    train(
        make_cfg(
            f"data.train_file={path}", "model.multi_label=true", "optimized_metric=val/f1_micro"
        )
    )
    assert {"test/f1_micro", "test/acc"} <= set(read_metrics(tmp_path / "run")["test"])


def test_bf16_mixed_precision_on_cpu_computes_what_float32_does(make_cfg, tmp_path):
    train(make_cfg("trainer.precision=bf16-mixed", "debug=limit", run="bf16"))
    train(make_cfg("trainer.precision=32-true", "debug=limit", run="fp32"))
    bf16, fp32 = read_metrics(tmp_path / "bf16"), read_metrics(tmp_path / "fp32")
    assert bf16["precision"] == "bf16-mixed" and fp32["precision"] == "32-true"
    # bfloat16 keeps 8 bits of mantissa: the same run, to about two decimals.
    assert bf16["test"]["test/loss"] == pytest.approx(fp32["test"]["test/loss"], abs=0.05)
    assert bf16["test"]["test/loss"] != fp32["test"]["test/loss"]  # it did compute in bf16


def test_all_loggers_together_offline(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    train(make_cfg("logger=many", "debug=limit"))
    run_dir = tmp_path / "run"
    assert (run_dir / "csv" / "metrics.csv").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list(run_dir.rglob("*.wandb"))


class RecordOptimizerStep(pl.Callback):
    """Records whether the optimizer steps fused and the gradient norm it steps with."""

    def __init__(self) -> None:
        self.fused, self.norms = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.fused.append(bool(optimizer.defaults.get("fused")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.norms.append(
                float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            )


def test_bf16_mixed_on_cpu_keeps_the_fused_optimizer_and_clips(make_cfg):
    record = RecordOptimizerStep()
    cfg = make_cfg(
        "trainer.precision=bf16-mixed",
        "trainer.gradient_clip_val=0.05",
        "trainer.max_epochs=1",
        "evaluate_before=false",
        "compare.baselines=[]",
    )
    train(cfg, callbacks=[record])
    assert record.fused and all(record.fused)
    # Read after the step: clipping had rescaled every gradient in place.
    assert record.norms and max(record.norms) <= 0.05 + 1e-4


class RecordCompiled(pl.Callback):
    """Records whether the model runs compiled when training starts."""

    compiled: bool | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.compiled = getattr(pl_module.model, "_compiled_call_impl", None) is not None


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_matches_eager_training(make_cfg, tmp_path, backend):
    import torch._dynamo

    common = ("trainer.max_epochs=1", "evaluate_before=false", "compare.baselines=[]")
    train(make_cfg(*common, run="eager"))
    record = RecordCompiled()
    torch._dynamo.reset()
    cfg = make_cfg(*common, "compile.enabled=true", f"compile.backend={backend}", run="compiled")
    train(cfg, callbacks=[record])
    assert record.compiled
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    eager, compiled = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    # Tracing alone changes nothing; inductor draws its own dropout masks and fuses kernels.
    tolerance = 0 if backend == "eager" else 0.02
    for key, value in eager["test"].items():
        assert compiled["test"][key] == pytest.approx(value, abs=tolerance), key
    # Compiled in place: the checkpoint's parameter names are the plain model's.
    state = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(state["state_dict"]) == set(
        torch.load(tmp_path / "eager" / "checkpoints" / "last.ckpt", weights_only=True)[
            "state_dict"
        ]
    )
    torch._dynamo.reset()


class RecordMatmulPrecision(pl.Callback):
    precision: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.precision = torch.get_float32_matmul_precision()


def test_float32_matmul_precision_holds_for_the_run_only(make_cfg):
    before = torch.get_float32_matmul_precision()
    record = RecordMatmulPrecision()
    cfg = make_cfg(
        "float32_matmul_precision=medium",
        "trainer.max_epochs=1",
        "evaluate_before=false",
        "compare.baselines=[]",
    )
    train(cfg, callbacks=[record])
    assert record.precision == "medium"
    assert torch.get_float32_matmul_precision() == before
    assert read_metrics(Path(cfg.paths.output_dir))["float32_matmul_precision"] == "medium"


def test_max_steps_within_the_first_epoch_ends_the_run_cleanly(make_cfg, tmp_path):
    # 5 batches per epoch; training stops after 2, before any epoch-end validation: the
    # run validates at its end, early stopping has its metric and the best checkpoint exists.
    train(make_cfg("trainer.max_steps=2", "evaluate_before=false", "compare.baselines=[]"))
    metrics = read_metrics(tmp_path / "run")
    assert metrics["global_step"] == 2 and "test/acc" in metrics["test"]
