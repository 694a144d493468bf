"""How a run computes: its Lightning precision (`trainer.precision`, `auto` by default) and its
float32 matmul precision (`float32_matmul_precision`), settled once before the run starts.

On a CPU `auto` is decided by measurement (lmforge.runtime.arithmetic_probe), not by CPU
flags: bfloat16 instructions are fast on some CPUs and slower than float32 on others that
report the same flags. On a GPU `auto` is bf16-mixed where CUDA supports bfloat16.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, open_dict

from lmforge.runtime.arithmetic_probe import (
    BF16_AUTOCAST,
    FLOAT32_MEDIUM,
    ArithmeticProbe,
    cpu_arithmetic,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run computes in, and why (metrics.json: `precision_choice`)."""

    setting: str
    precision: str
    matmul: str | None
    reason: str
    probe: ArithmeticProbe | None = None

    def record(self) -> dict[str, object]:
        return {
            "setting": self.setting,
            "precision": self.precision,
            "float32_matmul_precision": self.matmul,
            "reason": self.reason,
            "probe": self.probe.record() if self.probe else None,
        }


def runs_on_cpu(accelerator: str | None) -> bool:
    """Whether a trainer with this `accelerator` setting trains on the CPU."""
    return accelerator == "cpu" or (accelerator in ("auto", None) and not torch.cuda.is_available())


def choose_precision(
    setting: str | int | None,
    matmul_setting: str | None,
    accelerator: str | None,
    cache_dir: str,
    min_speedup: float,
    refresh: bool = False,
) -> PrecisionChoice:
    """The Lightning precision and float32 matmul precision a run trains with.

    `auto` on a CPU: bf16-mixed where the arithmetic probe's bfloat16-autocast step ran at
    least `min_speedup` times as fast as its float32 step, 32-true elsewhere; on a GPU:
    bf16-mixed where CUDA supports bfloat16 (Ampere and newer), else 32-true.
    `float32_matmul_precision=auto`: medium on a CPU where the probe's float32 step under
    oneDNN's bfloat16 math mode was `min_speedup` times as fast; torch's default elsewhere
    (on a GPU medium would make CUDA matmuls truly bfloat16).
    """
    cpu = runs_on_cpu(accelerator)
    probe = None
    if cpu and "auto" in (setting, matmul_setting):
        probe = cpu_arithmetic(cache_dir, refresh=refresh)
    setting = str(setting)
    matmul = matmul_setting
    if matmul_setting == "auto":
        faster = probe is not None and probe.speedup(FLOAT32_MEDIUM) >= min_speedup
        matmul = "medium" if faster else None
    if setting != "auto":
        return PrecisionChoice(setting, setting, matmul, "set in the config", probe)
    if probe is not None:
        speedup = probe.speedup(BF16_AUTOCAST)
        precision = "bf16-mixed" if speedup >= min_speedup else "32-true"
        verdict = "at least" if speedup >= min_speedup else "less than"
        reason = (
            f"{probe.describe()}; bf16-mixed is chosen where bfloat16 is {verdict} "
            f"precision_probe.min_speedup={min_speedup:g}x as fast"
        )
        return PrecisionChoice(setting, precision, matmul, reason, probe)
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if gpu and torch.cuda.is_bf16_supported():
        return PrecisionChoice(setting, "bf16-mixed", matmul, "a CUDA GPU with bfloat16 support")
    return PrecisionChoice(setting, "32-true", matmul, "a GPU without bfloat16 support")


def settle_precision(cfg: DictConfig) -> PrecisionChoice:
    """Replace `auto` in `trainer.precision` and `float32_matmul_precision` by what it stands for
    on this machine (so config.yaml records what ran, and Lightning gets a value it knows)."""
    setting, matmul = cfg.trainer.get("precision"), cfg.get("float32_matmul_precision")
    # A resumed run's config.yaml holds settled values (and, made before the probe, no
    # precision_probe): the probe's settings are read only where something is still auto.
    probe_settings = cfg.precision_probe if "auto" in (setting, matmul) else None
    choice = choose_precision(
        setting,
        matmul,
        cfg.trainer.get("accelerator"),
        cache_dir=str(cfg.paths.cache_dir),
        min_speedup=float(probe_settings.min_speedup) if probe_settings else 0.0,
        refresh=bool(probe_settings.refresh) if probe_settings else False,
    )
    with open_dict(cfg):
        cfg.trainer.precision = choice.precision
        if "float32_matmul_precision" in cfg:
            cfg.float32_matmul_precision = choice.matmul
    if choice.setting == "auto":
        log.info(
            "Precision: %s (trainer.precision=auto: %s; set trainer.precision=32-true or "
            "bf16-mixed to choose yourself).",
            choice.precision,
            choice.reason,
        )
    if choice.matmul:
        log.info("float32 matmuls: %s precision (float32_matmul_precision).", choice.matmul)
    return choice


@contextmanager
def matmul_precision(precision: str | None) -> Iterator[None]:
    """`torch.set_float32_matmul_precision(precision)` for the block, then the previous
    setting again (None: leave it alone)."""
    if not precision:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
