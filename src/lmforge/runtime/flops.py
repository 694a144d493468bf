"""Training efficiency on record: the model FLOP/s a run achieved and its MFU (model FLOPs
utilisation: that rate over the peak matmul rate of the device in the run's arithmetic).

Model FLOPs per training batch of B sequences of T positions follow the usual accounting
(forward + backward = 3 forward passes): 6 * N * B * T for the weights (N: parameters outside
the embedding tables, which are lookups, not matmuls) plus 12 * L * d * B * T^2 for attention's
two matmuls per layer (L layers of width d). Padding counts: the device computes it.

The peak comes from a table for known GPUs (dense bf16/fp16 tensor-core figures of their data
sheets, tf32 for float32) and, for CPUs and other GPUs, from a short matmul probe in the run's
arithmetic, cached per machine beside the arithmetic probe (`<paths.cache_dir>/arithmetic/`).
Written here: Lightning's `ThroughputMonitor` needs the FLOPs per batch and the peak given to
it, and knows no CPU peaks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.runtime.arithmetic_probe import machine_key

log = logging.getLogger(__name__)

# Dense tensor-core peaks (FLOP/s) of data-center GPUs, by a part of their CUDA device name:
# (bf16/fp16, tf32). The first name that the device's name contains wins.
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989e12, 494e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494e12),
    ("A100", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L4", 121e12, 60e12),
    ("A10G", 70e12, 35e12),
    ("A10", 125e12, 62.5e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
)
# The probe's square matmul size and timed repetitions (after one warm-up).
PROBE_SIZE = 1024
PROBE_REPEATS = 8
PROBE_VERSION = 1


def arithmetic_of(precision: str, matmul: str | None = None) -> str:
    """The arithmetic of a run's matmuls: bf16, fp16, or float32 (tf32/medium where set)."""
    text = str(precision)
    if text.startswith("bf16"):
        return "bf16"
    if text.startswith("16"):
        return "fp16"
    return "float32_medium" if matmul in ("medium", "high") else "float32"


def dense_parameters(model: nn.Module) -> int:
    """Parameters outside embedding tables (those are looked up, not multiplied)."""
    embedded = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)


def _config_value(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


class ModelFlops:
    """FLOPs of one training batch of a Hugging Face model (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        self.parameters = dense_parameters(model)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "get_text_config"):
            config = config.get_text_config()
        layers = _config_value(config, "num_hidden_layers", "n_layer", "num_layers")
        if config is not None and getattr(config, "is_encoder_decoder", False):
            layers += _config_value(config, "decoder_layers", "num_decoder_layers")
        self.layers = layers
        self.width = _config_value(config, "hidden_size", "n_embd", "d_model")

    def per_batch(self, rows: int, positions: int) -> float:
        tokens = rows * positions
        return 6.0 * self.parameters * tokens + 12.0 * self.layers * self.width * tokens * positions


def gpu_peak(name: str, arithmetic: str) -> float | None:
    for part, half, tf32 in GPU_PEAKS:
        if part in name:
            return half if arithmetic in ("bf16", "fp16") else tf32
    return None


def peak_flops(device: torch.device, arithmetic: str, cache_dir: str | Path) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) of `device` in `arithmetic`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if (peak := gpu_peak(name, arithmetic)) is not None:
            return peak, f"the data sheet of the {name} ({arithmetic}, dense)"
    key = {**machine_key(), "device": str(device), "arithmetic": arithmetic}
    key["probe_version"] = PROBE_VERSION
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "arithmetic" / f"peak-{arithmetic}-{device.type}-{digest}.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return float(cached["flops_per_second"]), f"a matmul probe cached in {path}"
    except (OSError, ValueError, KeyError):
        pass
    peak = probe_matmul(device, arithmetic)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, "flops_per_second": peak}, indent=2))
        where = f"a matmul probe measured now, cached in {path}"
    except OSError:
        where = "a matmul probe measured now"
    return peak, where


def probe_matmul(device: torch.device, arithmetic: str, size: int = PROBE_SIZE) -> float:
    """FLOP/s of the best of a few square matmuls in `arithmetic` on `device`."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(arithmetic, torch.float32)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.bfloat16  # fp16 autocast is a GPU arithmetic
    previous = torch.get_float32_matmul_precision()
    if arithmetic == "float32_medium":
        torch.set_float32_matmul_precision("medium")
    try:
        with torch.random.fork_rng(devices=[]):
            a = torch.randn(size, size, device=device).to(dtype)
            b = torch.randn(size, size, device=device).to(dtype)
            best = float("inf")
            for index in range(PROBE_REPEATS + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                began = time.perf_counter()
                a @ b
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if index:  # the first builds the kernels
                    best = min(best, time.perf_counter() - began)
    finally:
        torch.set_float32_matmul_precision(previous)
    return 2.0 * size**3 / best


def efficiency_record(
    achieved: float | None,
    device: torch.device,
    arithmetic: str,
    cache_dir: str | Path,
    devices: int = 1,
) -> dict[str, Any] | None:
    """What metrics.json keeps: achieved model FLOP/s (all devices together), the peak of
    `devices` devices, its source and the MFU."""
    if not achieved:
        return None
    peak, source = peak_flops(device, arithmetic, cache_dir)
    peak *= devices
    return {
        "model_flops_per_second": round(achieved, 1),
        "peak_flops_per_second": round(peak, 1),
        "peak_source": source,
        "arithmetic": arithmetic,
        "mfu": round(achieved / peak, 4) if peak else None,
    }
