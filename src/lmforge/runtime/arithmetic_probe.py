"""Which arithmetic trains fastest on this CPU, measured once per machine and cached.

CPU flags do not tell: an AMD EPYC with AVX512-BF16 trains about 1.4-2x faster under bfloat16
autocast than in float32, while an Intel Xeon with the same flag (but no AMX) trains at about
0.7x, and an AMD EPYC of an earlier generation (no AVX512 at all) emulates bfloat16 at 0.07x.
So `trainer.precision=auto` on a CPU times a few training steps of a small transformer
(MiniLM's width: 384 hidden, 12 heads, 1536 feed-forward; two layers, 8 x 128 tokens, fused
AdamW and clipping, like a run) in three arithmetics, in rounds of rotated order, and keeps the
median step time of each. The verdict is cached per CPU (model name, family, arithmetic
instruction sets), torch version and thread count under `<paths.cache_dir>/arithmetic/`, so
it costs a few seconds once, never per run.

Written here rather than taken from a library: none times training arithmetic per machine
(torch.utils.benchmark times single statements, not a training step in rotated rounds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Part of the cache key: a changed probe measures again instead of reading old verdicts.
PROBE_VERSION = 2
# The arithmetics timed: plain float32, float32 with oneDNN's bfloat16 math mode for matmuls
# (float32_matmul_precision=medium), and bfloat16 autocast (trainer.precision=bf16-mixed).
FLOAT32, FLOAT32_MEDIUM, BF16_AUTOCAST = "float32", "float32_medium", "bf16_autocast"
ARITHMETICS = (FLOAT32, FLOAT32_MEDIUM, BF16_AUTOCAST)
# Timed steps per arithmetic (after one untimed warm-up step that builds oneDNN's kernels).
ROUNDS = 5
# A probe taken while other work competed for the cores says little about this machine (on a
# 2-core machine under a parallel test run, a float32 step took 4.5x as long as on the quiet
# machine and bf16's ratio to it moved from 0.07x to 0.19x). It is used for the run at hand but
# not cached when one arithmetic's slowest round took this many times its fastest, or when the
# load average exceeded the cores by more than the probe itself accounts for.
MAX_SPREAD = 1.5


@dataclass(frozen=True)
class ArithmeticProbe:
    """Seconds per probe training step in each arithmetic on one machine, and when and where
    they were measured."""

    machine: dict[str, str | int]
    seconds_per_step: dict[str, float]
    measured_at: str
    probe_seconds: float
    cache_file: str | None = None
    cached: bool = False
    # The slowest round over the fastest, per arithmetic; the 1-minute load average before the
    # probe and the cores this process may use; whether the machine was quiet enough to cache.
    spread: dict[str, float] = field(default_factory=dict)
    load_average: float | None = None
    cores: int | None = None
    steady: bool = True

    def speedup(self, arithmetic: str) -> float:
        """How many times faster than plain float32 a step ran in `arithmetic`."""
        return self.seconds_per_step[FLOAT32] / self.seconds_per_step[arithmetic]

    def describe(self) -> str:
        """One line for the log: the machine, the speed-ups and where the figures are kept."""
        where = f"cached in {self.cache_file}" if self.cached else "measured now"
        if not self.steady:
            where = "measured now on a busy machine, so not cached"
        bf16, medium = self.speedup(BF16_AUTOCAST), self.speedup(FLOAT32_MEDIUM)
        return (
            f"on {self.machine['cpu']} ({self.machine.get('cpu_features', '?')}) with "
            f"{self.machine['threads']} threads and torch "
            f"{self.machine['torch']}, a probe training step ran {bf16:.2f}x as fast under "
            f"bfloat16 autocast and {medium:.2f}x under float32_matmul_precision=medium as in "
            f"plain float32 ({where}, {self.measured_at[:10]})"
        )

    def record(self) -> dict[str, object]:
        """What metrics.json keeps of it."""
        return {
            **asdict(self),
            "speedup": {name: round(self.speedup(name), 3) for name in ARITHMETICS},
        }


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux), else what the platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# The instruction sets that decide how bfloat16 and float32 run: CPUs sold under one model
# name differ in them (an "AMD EPYC" of one generation has AVX512-BF16, of another no AVX512).
ARITHMETIC_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def cpu_features() -> str:
    """The CPU's family, model and arithmetic instruction sets (`/proc/cpuinfo`), so machines
    that share a model name but not a generation keep separate verdicts."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "flags") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        return platform.machine() or "unknown"
    flags = set(fields.get("flags", "").split())
    present = " ".join(flag for flag in ARITHMETIC_FLAGS if flag in flags) or "none"
    return f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}; {present}"


def machine_key() -> dict[str, str | int]:
    """What a verdict holds for: the CPU (model name, generation, arithmetic instruction sets),
    the torch build and the thread count."""
    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "probe_version": PROBE_VERSION,
    }


def cpu_arithmetic(cache_dir: str | Path, refresh: bool = False) -> ArithmeticProbe:
    """This machine's probe figures: from the cache, or measured now and cached.

    Concurrent runs on one machine (parallel sweep workers) wait for one another's probe
    instead of timing at once and slowing each other down.
    """
    from filelock import FileLock

    machine = machine_key()
    digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / "arithmetic"
    path = folder / f"{digest}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        log.warning(
            "Cannot write the arithmetic probe's cache in %s (%s); it runs again next time.",
            folder,
            err,
        )
        return measure(machine)
    with FileLock(str(path) + ".lock"):
        if not refresh and (cached := _read(path, machine)) is not None:
            return cached
        probe = measure(machine)
        if not probe.steady:
            log.warning(
                "The arithmetic probe ran while the machine was busy (load average %s on %s "
                "cores; slowest over fastest round: %s): this run uses its verdict, but it is not "
                "cached and the next run measures again. Start runs on a quiet machine, or set "
                "trainer.precision explicitly.",
                probe.load_average,
                probe.cores,
                ", ".join(f"{name} {value:.2f}x" for name, value in probe.spread.items()),
            )
            return probe
        _write(path, probe)
        return ArithmeticProbe(**{**asdict(probe), "cache_file": str(path)})


def _read(path: Path, machine: dict[str, str | int]) -> ArithmeticProbe | None:
    """A cached probe for this machine, or None (absent, unreadable or another machine's)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        probe = ArithmeticProbe(
            machine=payload["machine"],
            seconds_per_step={
                name: float(payload["seconds_per_step"][name]) for name in ARITHMETICS
            },
            measured_at=str(payload["measured_at"]),
            probe_seconds=float(payload["probe_seconds"]),
            cache_file=str(path),
            cached=True,
            spread={name: float(v) for name, v in dict(payload.get("spread") or {}).items()},
            load_average=payload.get("load_average"),
            cores=payload.get("cores"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning(
            "The arithmetic probe's cache %s is unreadable (%s); measuring again.", path, err
        )
        return None
    if probe.machine != machine or min(probe.seconds_per_step.values()) <= 0:
        return None
    return probe


def _write(path: Path, probe: ArithmeticProbe) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half."""
    payload = {
        key: value for key, value in asdict(probe).items() if key not in ("cache_file", "cached")
    }
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as err:
        log.warning(
            "Cannot cache the arithmetic probe in %s (%s); it runs again next time.", path, err
        )
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)


def measure(
    machine: dict[str, str | int], rounds: int = ROUNDS, step: Callable[[str], float] | None = None
) -> ArithmeticProbe:
    """Time the probe's training step in every arithmetic, `rounds` times each in rotated order
    (so a slow spell of the machine touches all of them), after one warm-up step each."""
    started = time.perf_counter()
    load, cores = _load_average(), _cores()
    with torch.random.fork_rng(devices=[]):  # the run's random state stays as it was
        timed = step or _probe_step()
        for arithmetic in ARITHMETICS:
            timed(arithmetic)
        times: dict[str, list[float]] = {name: [] for name in ARITHMETICS}
        for index in range(rounds):
            shift = index % len(ARITHMETICS)
            for arithmetic in ARITHMETICS[shift:] + ARITHMETICS[:shift]:
                times[arithmetic].append(timed(arithmetic))
    spread = {
        name: round(max(values) / max(min(values), 1e-9), 3) for name, values in times.items()
    }
    # The probe's own process counts in the load average: allow it half a core of slack.
    busy = load is not None and load > cores + 0.5
    return ArithmeticProbe(
        machine=machine,
        seconds_per_step={
            name: round(statistics.median(values), 5) for name, values in times.items()
        },
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        probe_seconds=round(time.perf_counter() - started, 2),
        spread=spread,
        load_average=load,
        cores=cores,
        steady=not busy and max(spread.values()) <= MAX_SPREAD,
    )


def _load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _probe_step(
    batch: int = 8, length: int = 128, width: int = 384, layers: int = 2, vocab: int = 8192
) -> Callable[[str], float]:
    """One timed training step of a small transformer encoder in a given arithmetic."""
    from torch import nn

    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(
            width, nhead=12, dim_feedforward=4 * width, activation="gelu", batch_first=True
        ),
        layers,
        enable_nested_tensor=False,
    )
    model = nn.ModuleDict(
        {"embed": nn.Embedding(vocab, width), "encoder": encoder, "head": nn.Linear(width, 12)}
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, vocab, (batch, length))
    labels = torch.randint(0, 12, (batch,))

    def step(arithmetic: str) -> float:
        with _arithmetic(arithmetic):
            began = time.perf_counter()
            with _autocast(arithmetic):
                hidden = model["encoder"](model["embed"](tokens))  # (batch, length, width)
                logits = model["head"](hidden[:, 0])
            loss = nn.functional.cross_entropy(logits.float(), labels)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - began

    return step


@contextlib.contextmanager
def _arithmetic(arithmetic: str) -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium" if arithmetic == FLOAT32_MEDIUM else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _autocast(arithmetic: str) -> contextlib.AbstractContextManager[object]:
    if arithmetic == BF16_AUTOCAST:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
