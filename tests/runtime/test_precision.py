"""`trainer.precision=auto`: decided on a CPU by a measured probe (cached per machine), on a
GPU by CUDA's bfloat16 support; the choice and its figures are logged and recorded."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lmforge.runtime import arithmetic_probe
from lmforge.runtime import precision as precision_module
from lmforge.runtime.arithmetic_probe import (
    ARITHMETICS,
    BF16_AUTOCAST,
    FLOAT32,
    FLOAT32_MEDIUM,
    ArithmeticProbe,
    cpu_arithmetic,
    machine_key,
    measure,
)
from lmforge.runtime.precision import choose_precision, settle_precision
from lmforge.train import train


def fake_probe(bf16: float, medium: float = 1.0) -> ArithmeticProbe:
    """A probe whose bfloat16 and medium steps ran `bf16` and `medium` times as fast."""
    return ArithmeticProbe(
        machine={"cpu": "Test CPU", "torch": "0", "threads": 2, "probe_version": 1},
        seconds_per_step={FLOAT32: 0.2, FLOAT32_MEDIUM: 0.2 / medium, BF16_AUTOCAST: 0.2 / bf16},
        measured_at="2026-01-01T00:00:00+00:00",
        probe_seconds=3.0,
    )


@pytest.fixture
def probed(monkeypatch):
    """Replace the probe by one with given speed-ups; counts how often it was asked."""
    calls: list[str] = []

    def install(bf16: float, medium: float = 1.0) -> list[str]:
        def answer(cache_dir, refresh=False):
            calls.append(str(cache_dir))
            return fake_probe(bf16, medium)

        monkeypatch.setattr(precision_module, "cpu_arithmetic", answer)
        return calls

    return install


@pytest.mark.parametrize(
    ("bf16", "expected"),
    [
        (1.9, "bf16-mixed"),  # the AMD EPYC of the README
        (1.1, "bf16-mixed"),  # exactly the margin
        (1.05, "32-true"),  # within the probe's noise: float32 is never the slower bet
        (0.7, "32-true"),  # the Intel Xeon with avx512_bf16 but no AMX
    ],
)
def test_auto_on_a_cpu_follows_the_measured_speedup(probed, bf16, expected):
    calls = probed(bf16)
    choice = choose_precision("auto", None, "cpu", "/cache", min_speedup=1.1)
    assert choice.precision == expected
    assert calls == ["/cache"]
    assert f"{bf16:.2f}x as fast under bfloat16" in choice.reason
    assert choice.record()["probe"]["speedup"][BF16_AUTOCAST] == pytest.approx(bf16, rel=1e-3)


def test_the_margin_is_a_setting(probed):
    probed(1.3)
    assert choose_precision("auto", None, "cpu", "/c", min_speedup=1.5).precision == "32-true"
    assert choose_precision("auto", None, "cpu", "/c", min_speedup=1.2).precision == "bf16-mixed"


@pytest.mark.parametrize(
    ("accelerator", "cuda_bf16", "expected"),
    [
        ("gpu", True, "bf16-mixed"),  # Ampere or newer
        ("gpu", False, "32-true"),
        ("auto", True, "bf16-mixed"),
        ("cuda", False, "32-true"),
    ],
)
def test_auto_on_a_gpu_keeps_the_cuda_rule_and_never_probes(
    probed, monkeypatch, accelerator, cuda_bf16, expected
):
    calls = probed(0.5)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    choice = choose_precision("auto", "auto", accelerator, "/c", min_speedup=1.1)
    assert (choice.precision, choice.matmul, calls) == (expected, None, [])


def test_auto_accelerator_without_a_gpu_probes_the_cpu(probed, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = probed(0.8)
    assert choose_precision("auto", None, "auto", "/c", min_speedup=1.1).precision == "32-true"
    assert len(calls) == 1


@pytest.mark.parametrize(("medium", "expected"), [(1.5, "medium"), (1.05, None), (0.6, None)])
def test_auto_matmul_precision_is_medium_only_where_it_measured_faster(probed, medium, expected):
    probed(2.0, medium)
    choice = choose_precision("32-true", "auto", "cpu", "/c", min_speedup=1.1)
    assert (choice.precision, choice.matmul) == ("32-true", expected)


def test_set_values_are_kept_and_nothing_is_probed(probed):
    calls = probed(2.0)
    choice = choose_precision("32-true", "high", "cpu", "/c", min_speedup=1.1)
    assert (choice.precision, choice.matmul, choice.probe, calls) == ("32-true", "high", None, [])
    assert choose_precision("bf16-mixed", None, "cpu", "/c", 1.1).precision == "bf16-mixed"


def test_a_resumed_run_config_without_probe_settings_settles(make_cfg, probed):
    calls = probed(2.0)
    cfg = make_cfg("trainer.precision=bf16-mixed")
    with open_dict(cfg):
        del cfg["precision_probe"]  # a config.yaml written before the probe existed
    assert settle_precision(cfg).precision == "bf16-mixed"
    assert calls == []


@pytest.mark.parametrize(("bf16", "expected"), [(1.8, "bf16-mixed"), (0.7, "32-true")])
def test_the_choice_is_logged_recorded_and_rebuilt_from_config_yaml(
    make_cfg, probed, caplog, bf16, expected
):
    probed(bf16)
    cfg = make_cfg(
        "trainer.precision=auto",
        "trainer.max_epochs=1",
        "evaluate_before=false",
        "compare.baselines=[]",
    )
    with caplog.at_level(logging.INFO, logger="lmforge.runtime.precision"):
        train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == expected
    record = metrics["precision_choice"]
    assert (record["setting"], record["precision"]) == ("auto", expected)
    assert record["probe"]["speedup"][BF16_AUTOCAST] == pytest.approx(bf16, rel=1e-3)
    assert record["probe"]["machine"]["cpu"] == "Test CPU"
    assert metrics["test"]["test/acc"] is not None
    assert f"Precision: {expected} (trainer.precision=auto: on Test CPU" in caplog.text
    # config.yaml holds what ran, so resume and lmforge-eval use the same precision.
    assert OmegaConf.load(run_dir / "config.yaml").trainer.precision == expected


# The cache and the measurement.


@pytest.fixture
def counted_measure(monkeypatch):
    """`measure` replaced by a fake that counts its calls (no timing in these tests)."""
    calls: list[dict] = []

    def fake(machine, rounds=5, step=None):
        calls.append(machine)
        return ArithmeticProbe(**{**vars(fake_probe(1.5)), "machine": machine})

    monkeypatch.setattr(arithmetic_probe, "measure", fake)
    return calls


def test_the_probe_runs_once_per_machine_and_is_read_from_the_cache(tmp_path, counted_measure):
    first = cpu_arithmetic(tmp_path)
    second = cpu_arithmetic(tmp_path)
    assert len(counted_measure) == 1
    assert (first.cached, second.cached) == (False, True)
    assert second.seconds_per_step == first.seconds_per_step
    assert Path(second.cache_file).parent == tmp_path / "arithmetic"
    cpu_arithmetic(tmp_path, refresh=True)
    assert len(counted_measure) == 2


def test_another_thread_count_torch_or_cpu_generation_measures_again(
    tmp_path, counted_measure, monkeypatch
):
    cpu_arithmetic(tmp_path)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        cpu_arithmetic(tmp_path)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    cpu_arithmetic(tmp_path)
    # Another generation of a CPU sold under the same model name.
    monkeypatch.setattr(arithmetic_probe, "cpu_features", lambda: "family 25 model 17; avx512f")
    cpu_arithmetic(tmp_path)
    assert [m["threads"] for m in counted_measure] == [threads, threads + 1, threads, threads]
    assert len(list((tmp_path / "arithmetic").glob("*.json"))) == 4


@pytest.mark.parametrize("damage", ["", "{not json", '{"machine": {}}', "[1, 2]"])
def test_a_damaged_cache_file_is_measured_again_and_rewritten(tmp_path, counted_measure, damage):
    path = Path(cpu_arithmetic(tmp_path).cache_file)
    path.write_text(damage)
    again = cpu_arithmetic(tmp_path)
    assert (len(counted_measure), again.cached) == (2, False)
    assert json.loads(path.read_text())["machine"] == machine_key()
    assert cpu_arithmetic(tmp_path).cached


def test_an_unwritable_cache_still_gives_a_verdict(tmp_path, counted_measure, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING):
        probe = cpu_arithmetic(blocked)
    assert probe.speedup(BF16_AUTOCAST) == pytest.approx(1.5)
    assert "Cannot write the arithmetic probe's cache" in caplog.text


def test_measure_rotates_the_order_and_keeps_the_median():
    order: list[str] = []
    seconds = {FLOAT32: [9.0, 0.2, 0.3, 0.1, 0.2, 0.2], FLOAT32_MEDIUM: [9.0] + [0.15] * 5}
    seconds[BF16_AUTOCAST] = [9.0, 0.1, 0.1, 5.0, 0.1, 0.1]  # one slow spell

    def step(arithmetic: str) -> float:
        order.append(arithmetic)
        return seconds[arithmetic][order.count(arithmetic) - 1]

    probe = measure(machine_key(), rounds=5, step=step)
    # One warm-up each (not counted), then rounds whose first arithmetic rotates.
    assert order[:3] == list(ARITHMETICS)
    firsts = [order[3 + 3 * i] for i in range(5)]
    assert firsts == [FLOAT32, FLOAT32_MEDIUM, BF16_AUTOCAST, FLOAT32, FLOAT32_MEDIUM]
    assert probe.seconds_per_step == {FLOAT32: 0.2, FLOAT32_MEDIUM: 0.15, BF16_AUTOCAST: 0.1}
    assert probe.speedup(BF16_AUTOCAST) == pytest.approx(2.0)
    # The slow spell made bf16's slowest round 50x its fastest: too unsteady to cache.
    assert probe.spread == {FLOAT32: 3.0, FLOAT32_MEDIUM: 1.0, BF16_AUTOCAST: 50.0}
    assert not probe.steady


@pytest.mark.parametrize(
    ("seconds", "load", "steady"),
    [
        ([0.2, 0.21, 0.22], 0.5, True),
        ([0.2, 0.21, 0.22], None, True),  # a platform without a load average
        ([0.2, 0.21, 0.4], 0.5, False),  # one round 2x the fastest
        ([0.2, 0.21, 0.22], 9.0, False),  # other work on every core
    ],
)
def test_a_probe_taken_on_a_busy_machine_is_not_steady(monkeypatch, seconds, load, steady):
    monkeypatch.setattr(arithmetic_probe, "_load_average", lambda: load)
    monkeypatch.setattr(arithmetic_probe, "_cores", lambda: 2)
    counts: dict[str, int] = {}

    def step(arithmetic: str) -> float:
        counts[arithmetic] = counts.get(arithmetic, 0) + 1
        return [0.5, *seconds][counts[arithmetic] - 1]

    probe = measure(machine_key(), rounds=3, step=step)
    assert probe.steady is steady
    assert (probe.load_average, probe.cores) == (load, 2)


def test_an_unsteady_probe_gives_a_verdict_but_is_not_cached(tmp_path, monkeypatch, caplog):
    calls: list[int] = []

    def busy(machine, rounds=5, step=None):
        calls.append(1)
        return ArithmeticProbe(
            **{**vars(fake_probe(0.2)), "machine": machine, "steady": False, "load_average": 5.0}
        )

    monkeypatch.setattr(arithmetic_probe, "measure", busy)
    with caplog.at_level(logging.WARNING):
        first = cpu_arithmetic(tmp_path)
    assert first.speedup(BF16_AUTOCAST) == pytest.approx(0.2) and not first.cached
    assert "while the machine was busy" in caplog.text and "not cached" in first.describe()
    assert not list((tmp_path / "arithmetic").glob("*.json"))
    cpu_arithmetic(tmp_path)
    assert len(calls) == 2  # measured again: nothing was cached


def test_the_real_probe_leaves_the_run_state_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    before = (torch.get_float32_matmul_precision(), torch.get_num_threads())
    probe = measure(machine_key(), rounds=1)
    assert torch.rand(3).tolist() == expected.tolist()  # the run's random stream is untouched
    assert (torch.get_float32_matmul_precision(), torch.get_num_threads()) == before
    assert all(seconds > 0 for seconds in probe.seconds_per_step.values())
    assert set(probe.seconds_per_step) == set(ARITHMETICS)
