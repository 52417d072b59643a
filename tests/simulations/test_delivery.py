"""The simulated deployment plane: cohorts of a real RolloutPolicy, gates, injected faults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.errors import ConfigError
from simulations.delivery import (
    FALLBACK_INSTALL_MS,
    InstallCost,
    Release,
    int8_payload_bytes,
    load_install_cost,
    simulate_rollout,
)
from simulations.population import Fleet, build_fleet
from simulations.scenario import FaultSection, OutageSection, Scenario, load_scenario

TINY = Path(__file__).with_name("tiny.toml")
COST = InstallCost(100.0, "test")


@pytest.fixture
def scenario() -> Scenario:
    return load_scenario(str(TINY))


@pytest.fixture
def fleet(scenario: Scenario) -> Fleet:
    return build_fleet(scenario)


def _release(index: int = 1, accuracy: float = 0.9) -> Release:
    return Release(index, f"m@{index}", "fedavg", 2, accuracy, 200_000, ready_s=0.0)


def _roll(scenario: Scenario, fleet: Fleet, faults: FaultSection, **kw: object):  # type: ignore[no-untyped-def]
    return simulate_rollout(
        kw.pop("release", _release()),  # type: ignore[arg-type]
        fleet,
        kw.pop("section", scenario.rollout),  # type: ignore[arg-type]
        faults,
        start_s=0.0,
        current_accuracy=kw.pop("current", 0.8),  # type: ignore[arg-type]
        install=COST,
        rng=np.random.default_rng(0),
    )


def test_a_healthy_release_reaches_every_targeted_device(scenario: Scenario, fleet: Fleet) -> None:
    report = _roll(scenario, fleet, FaultSection())
    assert report.state == "completed"
    assert [s.devices for s in report.stages] == [2, 8]  # the policy's cohorts: 2, then the rest
    assert report.installed == len(fleet.devices)
    assert report.bytes_down == len(fleet.devices) * (200_000 + 2048 + 4 * 64)
    # The canary bakes before the next cohort starts.
    assert report.stages[1].started_s >= report.stages[0].finished_s + 60.0


def test_a_model_failing_its_canary_aborts_and_no_later_cohort_starts(
    scenario: Scenario, fleet: Fleet
) -> None:
    report = _roll(scenario, fleet, FaultSection(canary_failure_release=1))
    assert report.state == "aborted"
    assert len(report.stages) == 1 and not report.stages[0].gate_passed
    assert report.stages[0].reverted == 2 and report.installed == 0
    assert "reverted in probation" in report.reason
    # Only the canary downloaded the model.
    assert report.bytes_down == 2 * (200_000 + 2048 + 4 * 64)


def test_a_broker_outage_delays_the_rollout_by_the_overlap(
    scenario: Scenario, fleet: Fleet
) -> None:
    calm = _roll(scenario, fleet, FaultSection())
    outage = _roll(
        scenario, fleet, FaultSection(broker_outage=OutageSection(start_s=0.0, duration_s=500.0))
    )
    assert outage.state == "completed"
    assert outage.stages[0].finished_s == pytest.approx(calm.stages[0].finished_s + 500.0)
    # An outage longer than the devices' timeout: nobody answers, the canary gate aborts.
    long = _roll(
        scenario, fleet, FaultSection(broker_outage=OutageSection(start_s=0.0, duration_s=7200.0))
    )
    assert long.state == "aborted" and long.stages[0].timed_out == 2


def test_churned_devices_fail_the_gate_under_offline_fail_and_are_skipped_under_skip(
    scenario: Scenario, fleet: Fleet
) -> None:
    skip = _roll(scenario, fleet, FaultSection(churn=1.0))
    assert skip.state == "aborted"  # nobody answered: 0% committed < the 100% threshold
    assert skip.stages[0].timed_out == 2 and skip.bytes_down == 0
    policy = scenario.rollout.policy.model_copy(update={"offline": "fail"})
    strict = _roll(
        scenario,
        fleet,
        FaultSection(churn=1.0),
        section=scenario.rollout.model_copy(update={"policy": policy}),
    )
    assert strict.state == "aborted" and "failed >= threshold" in strict.reason


def test_a_release_worse_than_the_fleets_model_is_not_promoted(
    scenario: Scenario, fleet: Fleet
) -> None:
    report = _roll(scenario, fleet, FaultSection(), release=_release(accuracy=0.5), current=0.9)
    assert report.state == "aborted" and "accuracy drop 40.00 pts" in report.reason


def test_install_cost_comes_from_the_ota_benchmark_else_the_documented_fallback(
    tmp_path: Path,
) -> None:
    assert load_install_cost(tmp_path) == InstallCost(
        FALLBACK_INSTALL_MS, "fallback: no benchmarks/results/ota*.json"
    )
    (tmp_path / "ota.json").write_text(json.dumps({"device_work_alone_ms": {"total_ms": 42.5}}))
    cost = load_install_cost(tmp_path)
    assert cost.ms == 42.5 and cost.source.startswith("measured: ota.json")


def test_model_bytes_are_measured_int8_zstd() -> None:
    rng = np.random.default_rng(0)
    weights = {"w": rng.normal(size=(100, 100)).astype(np.float32)}
    size = int8_payload_bytes(weights)
    assert 0 < size <= 10_000 + 8  # at most one byte per weight: int8, then zstd


def test_a_policy_that_targets_nobody_is_a_config_error(scenario: Scenario, fleet: Fleet) -> None:
    policy = scenario.rollout.policy.model_copy(
        update={"target": scenario.rollout.policy.target.model_copy(update={"groups": ["mars"]})}
    )
    with pytest.raises(ConfigError, match="matches no simulated device"):
        _roll(
            scenario,
            fleet,
            FaultSection(),
            section=scenario.rollout.model_copy(update={"policy": policy}),
        )
