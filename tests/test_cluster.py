"""Cluster launches, simulated on this machine: trainer=ddp_slurm run as SLURM runs it (one
process per task, started from outside with SLURM's environment, joined over gloo as two
"nodes"), a -m sweep through submitit's local launcher, and trainer=fsdp's spawned
processes (so sweeps make one run directory per job)."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lmforge.config.validation import check_machine
from lmforge.errors import LmforgeError
from tests.helpers import ENV, compose_config, finish, launch, quick, script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slurm_task(rank: int, tasks: int, job: str, port: int) -> dict[str, str]:
    """The environment SLURM gives task `rank` of a job of `tasks` tasks, one per node."""
    return {
        **ENV,
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NAME": "lmforge-test",
        "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": str(tasks),
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(rank),
        # What an sbatch script exports for the rendezvous (Lightning derives it from the job
        # id otherwise); a free port keeps parallel test runs apart.
        "MASTER_PORT": str(port),
    }


def test_ddp_slurm_runs_as_slurm_starts_it(tmp_path, tiny_model, tiny_data):
    job, port = "4242", free_port()
    command = [
        script("lmforge-train"),
        *quick(tiny_model, tiny_data, tmp_path),
        "trainer=ddp_slurm",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        "trainer.precision=32-true",
    ]
    tasks = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=slurm_task(rank, 2, job, port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [t.returncode for t in tasks] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    runs = tmp_path / "logs" / "train" / "runs"
    assert [p.name for p in runs.iterdir()] == [f"slurm-{job}"]
    assert len(list(tmp_path.rglob("metrics.json"))) == 1
    metrics = json.loads((runs / f"slurm-{job}" / "metrics.json").read_text())
    # Two processes shared the 96 training rows: 3 steps of 16 each, as trainer=ddp_sim.
    assert metrics["global_step"] == 3
    correct = metrics["test"]["test/acc"] * metrics["data"]["test"]
    assert abs(correct - round(correct)) < 1e-4, correct  # tested once, in rank 0

    # The same run with the processes Lightning spawns itself: the same training.
    spawned = launch(
        *quick(tiny_model, tiny_data, tmp_path / "spawned"),
        "trainer=ddp_sim",
        "trainer.precision=32-true",
        f"hydra.sweep.dir={tmp_path / 'spawned' / 'sweep'}",
        cwd=tmp_path,
    )
    output = finish(spawned)
    assert spawned.returncode == 0, output[-3000:]
    reference = json.loads((tmp_path / "spawned" / "sweep" / "0" / "metrics.json").read_text())
    assert reference["global_step"] == metrics["global_step"]
    for key, value in reference["test"].items():
        assert metrics["test"][key] == pytest.approx(value, abs=1e-5), key


def test_a_sweep_through_submitits_local_launcher(tmp_path, tiny_model, tiny_data):
    process = launch(
        *quick(tiny_model, tiny_data, tmp_path),
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "optimizer.lr=1e-3,3e-3",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    sweep = tmp_path / "sweep"
    records = sorted(sweep.glob("*/metrics.json"))
    assert [p.parent.name for p in records] == ["0", "1"]
    rates = [OmegaConf.load(p.parent / "config.yaml").optimizer.lr for p in records]
    assert rates == [1e-3, 3e-3]
    assert (sweep / ".submitit").is_dir()  # the jobs ran through submitit


def test_fsdp_spawns_its_processes_from_the_run():
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    cfg = compose_config(["trainer=fsdp", "trainer.accelerator=cpu"])
    with open_dict(cfg):
        cfg.paths.output_dir = "unused"
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    launcher = trainer.strategy.launcher
    assert isinstance(launcher, _MultiProcessingLauncher)
    assert launcher._start_method == "spawn"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_fsdp_is_refused_without_cuda():
    with pytest.raises(LmforgeError, match=r"trainer=fsdp\), which runs on CUDA GPUs only"):
        check_machine(compose_config(["trainer=fsdp"]))


def test_slurm_tasks_share_one_run_directory(monkeypatch):
    from lmforge.config.resources import run_dir

    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.delenv("SLURM_STEP_ID", raising=False)
    assert run_dir(None, "outputs/train/runs/2026-12-01_10-00-00") == "outputs/train/runs/slurm-77"
    monkeypatch.setenv("SLURM_STEP_ID", "2")
    assert run_dir(None, "outputs/train/runs/x") == "outputs/train/runs/slurm-77.2"
    monkeypatch.setenv("SLURM_NTASKS", "1")  # one task: a timestamped directory as anywhere
    assert run_dir(None, "outputs/train/runs/x") == "outputs/train/runs/x"
