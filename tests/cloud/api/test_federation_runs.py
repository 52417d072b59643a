"""Federated runs through the control API: start, follow per-round metrics, refuse a second
run, stop after the current round, roles and validation.

Two kinds of runs: real ones (Flower's Simulation Engine on Ray: digits, 2 clients, fp32
updates, no SecAgg+, no quantization — kept tiny) and a scripted runner that streams rounds
when the test says so (the stop and error paths, no Ray).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloud.api.federation_jobs import FederationJobs, FederationStopped
from cloud.federation.plan import FederationPlan, FederationResult, RoundReport
from cloud.federation.server import RoundCallback
from cloud.observability import REGISTRY
from cloud.registry import Registry, VersionSource
from shared.errors import ConfigError
from tests.cloud.api.conftest import Api

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
TINY: dict[str, Any] = {
    "data": "digits",
    "clients": 2,
    "rounds": 2,
    "local_epochs": 1,
    "update": "fp32",
    "secagg": False,
    "quantize": False,
}
RUNS = "/v1/federation/runs"


def _wait_final(api: Api, run_id: str, timeout: float = 240.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = api.client.get(f"{RUNS}/{run_id}", headers=api.auth("viewer"))
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        if body["state"] in ("succeeded", "failed", "stopped"):
            return body
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


def _wait_state(api: Api, run_id: str, states: set[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.store.get_run(run_id).state in states:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {states}")


def _audit(api: Api, action: str) -> list[tuple[str | None, str]]:
    return [
        (e.target, e.result) for e in api.store.list_audit(limit=500).items if e.action == action
    ]


def _gauge(run_id: str, metric: str) -> float | None:
    return REGISTRY.get_sample_value(
        "fedge_federation_round_metric", {"run": run_id, "metric": metric}
    )


# --- real runs (Simulation Engine) ------------------------------------------------------------


@SQLITE
def test_a_tiny_run_streams_its_rounds_and_a_second_run_is_refused(api: Api) -> None:
    started = api.client.post(RUNS, json=TINY, headers=api.auth("operator"))
    assert started.status_code == 202, started.text
    run = started.json()
    run_id = run["run_id"]
    assert run["state"] == "pending" and run["rounds"] == []
    assert started.headers["Location"] == f"{RUNS}/{run_id}"
    assert run["plan"]["clients"] == 2 and run["plan"]["secure_aggregation"] is False
    assert run["created_by"] == api.token_ids["operator"]

    second = api.client.post(RUNS, json=TINY, headers=api.auth("operator"))
    assert second.status_code == 409, second.text
    assert second.headers["content-type"].startswith("application/problem+json")
    assert second.json()["code"] == "run_in_progress"
    assert second.json()["run_id"] == run_id

    done = _wait_final(api, run_id)
    assert done["state"] == "succeeded", done["error"]
    assert [r["round"] for r in done["rounds"]] == [1, 2]
    for r in done["rounds"]:
        assert math.isfinite(r["accuracy"]) and 0.0 <= r["accuracy"] <= 1.0
        assert math.isfinite(r["loss"])
        assert (r["participants"], r["rejected"], r["failed"]) == (2, 0, 0)
        assert r["bytes_up"] > 0 and r["bytes_down"] > 0
    assert done["started_at"] is not None and done["finished_at"] >= done["started_at"]
    best = api.resources.registry.get_version(done["best_version"])
    assert best.source == VersionSource.FEDERATED
    assert best.source_ref in {f"{run_id}/round-1", f"{run_id}/round-2"}
    assert done["name"] == best.model == "cnn-digits-fl"
    assert _gauge(run_id, "round") == 2.0
    assert _gauge(run_id, "accuracy") == pytest.approx(done["rounds"][-1]["accuracy"])

    listed = api.client.get(RUNS, headers=api.auth("viewer")).json()
    assert [r["run_id"] for r in listed["items"]] == [run_id] and listed["next_cursor"] is None
    assert _audit(api, "federation.start") == [(None, "run_in_progress"), (run_id, "ok")]


@pytest.mark.slow
@SQLITE
def test_stop_during_round_1_ends_the_run_stopped_with_one_round(api: Api) -> None:
    body = {**TINY, "rounds": 3}
    run_id = api.client.post(RUNS, json=body, headers=api.auth("operator")).json()["run_id"]
    _wait_state(api, run_id, {"running"})
    stopping = api.client.post(f"{RUNS}/{run_id}/stop", headers=api.auth("operator"))
    assert stopping.status_code == 200, stopping.text
    assert stopping.json()["state"] == "stopping"

    done = _wait_final(api, run_id)
    assert done["state"] == "stopped" and done["error"] is None
    assert [r["round"] for r in done["rounds"]] == [1]
    assert done["best_version"] == done["rounds"][0]["version"]
    assert api.resources.registry.get_version(done["best_version"]).source_ref == (
        f"{run_id}/round-1"
    )
    import ray

    assert not ray.is_initialized()  # the Simulation Engine shut Ray down
    # The coordinator takes the next run.
    api.resources.federation.wait(run_id, timeout=30)  # type: ignore[union-attr]
    assert api.resources.federation.active() is None  # type: ignore[union-attr]


@pytest.mark.slow
@SQLITE
def test_a_stop_exception_propagates_out_of_the_simulation_engine(registry: Registry) -> None:
    """What FederationJobs relies on: a round callback's exception ends the run cleanly."""
    from cloud.federation.simulation import run_simulated_federation

    plan = FederationPlan(
        data="digits",
        num_clients=2,
        rounds=3,
        local_epochs=1,
        update_mode="fp32",
        secure_aggregation=False,
        quantize=False,
    )
    seen: list[int] = []

    def on_round(report: RoundReport) -> None:
        seen.append(report.round)
        raise FederationStopped("stop")

    with pytest.raises(FederationStopped):
        run_simulated_federation(plan, registry, on_round=on_round)
    assert seen == [1]
    import ray

    assert not ray.is_initialized()


# --- a scripted runner: stop semantics, failures, validation -----------------------------------


class Scripted:
    """Streams one round each time :meth:`step` is called (no Ray, no training)."""

    def __init__(self) -> None:
        self.steps = threading.Semaphore(0)
        self.fail_with: BaseException | None = None
        self.plans: list[FederationPlan] = []

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self.steps.release()

    def __call__(
        self,
        plan: FederationPlan,
        registry: Registry,
        *,
        engine: str,
        on_round: RoundCallback | None,
        num_cpus: int,
        home: Path | None,
    ) -> FederationResult:
        self.plans.append(plan)
        result = FederationResult(plan.run_id, plan.strategy, initial_accuracy=0.1)
        for n in range(1, plan.rounds + 1):
            assert self.steps.acquire(timeout=30), "the test never released the round"
            if self.fail_with is not None:
                raise self.fail_with
            report = RoundReport(
                round=n,
                accuracy=[0.5, 0.9, 0.7][(n - 1) % 3],
                loss=1.0 / n,
                participants=plan.num_clients,
                rejected=0,
                failed=0,
                bytes_up=100,
                bytes_down=200,
                raw_bytes_up=400,
                seconds=0.01,
                version=f"cnn@{n}",
            )
            result.rounds.append(report)
            if on_round is not None:
                on_round(report)
        result.best_version = "cnn@2"
        return result


@pytest.fixture()
def scripted(api: Api) -> Scripted:
    runner = Scripted()
    res = api.resources
    assert res.federation is not None
    res.federation.shutdown()
    res.federation = FederationJobs(
        res.registry, res.store, home=res.home.path.parent, runner=runner, now=res.now
    )
    return runner


def _start(api: Api, **body: Any) -> str:
    started = api.client.post(RUNS, json={**TINY, **body}, headers=api.auth("operator"))
    assert started.status_code == 202, started.text
    run_id: str = started.json()["run_id"]
    return run_id


def test_stop_keeps_the_rounds_so_far_and_frees_the_coordinator(
    api: Api, scripted: Scripted
) -> None:
    run_id = _start(api, rounds=3)
    _wait_state(api, run_id, {"running"})
    scripted.step()  # round 1 ends
    deadline = time.monotonic() + 10
    while not api.store.get_run(run_id).rounds:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stop = api.client.post(f"{RUNS}/{run_id}/stop", headers=api.auth("operator"))
    assert stop.status_code == 200 and stop.json()["state"] == "stopping"
    again = api.client.post(f"{RUNS}/{run_id}/stop", headers=api.auth("operator"))
    assert again.status_code == 200 and again.json()["state"] == "stopping"  # idempotent
    scripted.step()  # round 2 (in progress when the stop came) ends; no round 3
    done = _wait_final(api, run_id, timeout=30)
    assert done["state"] == "stopped"
    assert [r["round"] for r in done["rounds"]] == [1, 2]
    assert done["best_version"] == "cnn@2"  # the most accurate round kept
    assert done["name"] == "cnn"

    finished = api.client.post(f"{RUNS}/{run_id}/stop", headers=api.auth("operator"))
    assert finished.status_code == 409 and finished.json()["code"] == "run_finished"
    unknown = api.client.post(f"{RUNS}/run-nope/stop", headers=api.auth("operator"))
    assert unknown.status_code == 404
    assert _audit(api, "federation.stop") == [
        ("run-nope", "not_found"),
        (run_id, "run_finished"),
        (run_id, "ok"),
        (run_id, "ok"),
    ]
    # The next run starts.
    next_id = _start(api, rounds=1)
    scripted.step()
    assert _wait_final(api, next_id, timeout=30)["state"] == "succeeded"
    assert len(scripted.plans) == 2


def test_a_failing_run_is_recorded_failed_with_its_rounds(api: Api, scripted: Scripted) -> None:
    run_id = _start(api, rounds=3)
    scripted.step()
    deadline = time.monotonic() + 10
    while not api.store.get_run(run_id).rounds:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    scripted.fail_with = ConfigError("the data went away")
    scripted.step()
    done = _wait_final(api, run_id, timeout=30)
    assert done["state"] == "failed"
    assert done["error"] == "config_error: the data went away"
    assert [r["round"] for r in done["rounds"]] == [1]
    assert done["best_version"] == "cnn@1"


def test_runs_page_newest_first_with_a_cursor(api: Api, scripted: Scripted) -> None:
    ids = []
    for _ in range(3):
        ids.append(_start(api, rounds=1))
        scripted.step()
        _wait_final(api, ids[-1], timeout=30)
    first = api.client.get(RUNS, params={"limit": 2}, headers=api.auth("viewer")).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = api.client.get(
        RUNS, params={"limit": 2, "cursor": first["next_cursor"]}, headers=api.auth("viewer")
    ).json()
    got = [r["run_id"] for r in first["items"] + rest["items"]]
    assert sorted(got) == sorted(ids) and len(set(got)) == 3
    assert rest["next_cursor"] is None
    assert all(len(r["rounds"]) == 1 for r in first["items"])
    bad = api.client.get(RUNS, params={"cursor": "bm90LWEtY3Vyc29y"}, headers=api.auth("viewer"))
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_cursor"


def test_a_run_left_unfinished_by_a_previous_coordinator_can_be_stopped(api: Api) -> None:
    api.store.create_run("run-stale", plan={}, created_by="cli", now=1.0)
    stopped = api.client.post(f"{RUNS}/run-stale/stop", headers=api.auth("operator"))
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == "stopped"
    assert "not running on this coordinator" in stopped.json()["error"]


def test_roles_and_validation(api: Api, scripted: Scripted) -> None:
    viewer = api.client.post(RUNS, json=TINY, headers=api.auth("viewer"))
    assert viewer.status_code == 403 and viewer.json()["code"] == "insufficient_role"
    assert api.client.post(RUNS, json=TINY).status_code == 401
    assert api.client.get(RUNS).status_code == 401
    assert api.client.post(f"{RUNS}/run-x/stop", headers=api.auth("viewer")).status_code == 403
    h = api.auth("operator")

    def refused(body: dict[str, Any]) -> tuple[int, str]:
        r = api.client.post(RUNS, json={**TINY, **body}, headers=h)
        return r.status_code, r.json()["code"]

    assert refused({"devices": ["dev-a"]}) == (422, "validation_error")  # simulation engine
    assert refused({"data": "/etc/passwd.npz"}) == (422, "validation_error")
    assert refused({"strategy": "nope"}) == (422, "validation_error")
    assert refused({"rounds": 0}) == (422, "validation_error")
    assert refused({"surprise": 1}) == (422, "validation_error")
    assert refused({"strategy": "median", "secagg": True}) == (400, "config_error")
    assert refused({"init": "nope@1"}) == (404, "not_found")
    deploy = {"engine": "deployment", "devices": ["dev-nope"], "clients": None}
    assert refused(deploy) == (404, "not_found")
    api.enroll("dev-a")
    api.client.post("/v1/devices/dev-a/revoke", headers=api.auth("admin"))
    assert refused({**deploy, "devices": ["dev-a"]}) == (400, "device_revoked")
    assert api.store.list_runs().items == []  # nothing was recorded
    assert scripted.plans == []
    assert api.client.get(f"{RUNS}/run-nope", headers=api.auth("viewer")).status_code == 404


def test_cli_options_are_the_request(api: Api, scripted: Scripted) -> None:
    """``fedge cloud federate --api`` sends every option by name: the API accepts them all."""
    body = {
        "data": "digits",
        "clients": 2,
        "rounds": 1,
        "strategy": "fedprox",
        "fraction": 1.0,
        "min_clients": None,
        "round_timeout": 300.0,
        "local_epochs": 1,
        "lr": 0.05,
        "lr_decay": 1.0,
        "batch_size": 16,
        "proximal_mu": 0.01,
        "update": "int8",
        "topk_fraction": 0.1,
        "alpha": None,
        "init": "cnn@1",
        "name": None,
        "quantize": False,
        "max_drop": 1.0,
        "seed": 3,
        "secagg": None,
        "secagg_timeout": 120.0,
        "engine": "simulation",
    }
    started = api.client.post(RUNS, json=body, headers=api.auth("operator"))
    assert started.status_code == 202, started.text
    assert started.json()["name"] == "cnn"  # the model line it continues
    scripted.step()
    _wait_final(api, started.json()["run_id"], timeout=30)
    plan = scripted.plans[0]
    assert (plan.strategy, plan.proximal_mu, plan.seed, plan.init_version) == (
        "fedprox",
        0.01,
        3,
        "cnn@1",
    )
    assert plan.uses_secagg  # the CLI's default for the FedAvg family
    assert plan.participation.min_clients == 2
