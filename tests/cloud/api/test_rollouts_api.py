"""``/v1/rollouts`` on a real registry, store and key home (SQLite and PostgreSQL): create,
list, show, the timeline, controls with their state rules, roles, named policies, and
problem+json for what is refused. The leader's engine is stepped in-process with a scripted
fleet (the e2e tests run it against real agents)."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.rollout.engine import RolloutEngine
from tests.cloud.api.conftest import Api
from tests.cloud.rollout_fakes import Clock, Device, FakeFleet

POLICY: dict[str, Any] = {
    "target": {"groups": ["lab"]},
    "cohorts": [{"count": 1}, {"percent": 100}],
    "bake_s": 0,
    "gates": {"field": None},
}


def _enroll(api: Api, n: int = 3) -> list[str]:
    ids = [f"dev-{i}" for i in range(n)]
    for d in ids:
        api.enroll(d, groups=("lab",))
    return ids


def test_create_show_list_and_timeline(api: Api) -> None:
    ids = _enroll(api)
    made = api.client.post(
        "/v1/rollouts", json={"version": "cnn@1", "policy": POLICY}, headers=api.auth("operator")
    )
    assert made.status_code == 201, made.text
    body = made.json()
    rid = body["rollout_id"]
    assert made.headers["Location"] == f"/v1/rollouts/{rid}"
    assert body["state"] == "running" and body["phase"] == "start"
    assert [c["size"] for c in body["cohorts"]] == [1, 2]
    assert sorted(d["device_id"] for d in body["devices"]) == ids
    assert body["counts"] == {"pending": 3}

    # the leader steps it (here: in-process, a scripted fleet, the store of the API)
    clock = Clock()
    fleet = FakeFleet(api.store, clock, {d: Device() for d in ids}, ref="cnn@1")
    RolloutEngine(api.store, fleet, clock=clock).drive(rid)
    shown = api.client.get(f"/v1/rollouts/{rid}", headers=api.auth("viewer")).json()
    assert shown["state"] == "completed" and shown["counts"] == {"committed": 3}

    listed = api.client.get("/v1/rollouts", headers=api.auth("viewer")).json()
    assert [r["rollout_id"] for r in listed["items"]] == [rid]
    assert listed["items"][0]["devices"] is None and listed["items"][0]["counts"] == {
        "committed": 3
    }
    events = api.client.get(f"/v1/rollouts/{rid}/events", headers=api.auth("viewer")).json()
    kinds = [e["kind"] for e in events["items"]]
    assert kinds[0] == "created" and kinds[-1] == "completed"
    gate = next(e for e in events["items"] if e["kind"] == "gate")["detail"]
    assert gate["gate"] == "install" and gate["verdict"] == "pass"
    assert set(gate) == {"gate", "verdict", "reason", "values", "thresholds", "samples"}
    later = api.client.get(
        f"/v1/rollouts/{rid}/events",
        params={"after": events["items"][1]["event_id"]},
        headers=api.auth("viewer"),
    ).json()
    assert [e["kind"] for e in later["items"]] == kinds[2:]


def test_controls_follow_the_state_rules(api: Api) -> None:
    _enroll(api, 2)
    rid = api.client.post(
        "/v1/rollouts", json={"version": "cnn@1", "policy": POLICY}, headers=api.auth("operator")
    ).json()["rollout_id"]
    resumed = api.client.post(f"/v1/rollouts/{rid}/resume", headers=api.auth("operator"))
    assert resumed.status_code == 409
    assert resumed.headers["content-type"].startswith("application/problem+json")
    assert resumed.json()["code"] == "invalid_state"
    paused = api.client.post(f"/v1/rollouts/{rid}/pause", headers=api.auth("operator"))
    assert paused.status_code == 202 and paused.json()["control"] == "pause"
    # another request while one is pending is refused, nothing is lost
    refused = api.client.post(f"/v1/rollouts/{rid}/abort", headers=api.auth("operator"))
    assert refused.status_code == 409
    assert api.store.get_rollout(rid).control == "pause"
    audit = [e.action for e in api.store.list_audit(limit=50).items]
    assert "rollouts.pause" in audit and "rollouts.abort" in audit


def test_roles_and_refusals(api: Api) -> None:
    _enroll(api, 1)
    body = {"version": "cnn@1", "policy": POLICY}
    assert api.client.post("/v1/rollouts", json=body, headers=api.auth("viewer")).status_code == 403
    assert api.client.post("/v1/rollouts", json=body, headers=api.auth("none")).status_code == 401
    assert api.client.get("/v1/rollouts", headers=api.auth("none")).status_code == 401
    rejected = api.client.post(
        "/v1/rollouts", json={**body, "version": "cnn@2"}, headers=api.auth("operator")
    )
    assert rejected.status_code == 409 and rejected.json()["code"] == "not_deployable"
    empty = {"version": "cnn@1", "policy": {**POLICY, "target": {"groups": ["nobody"]}}}
    refused = api.client.post("/v1/rollouts", json=empty, headers=api.auth("operator"))
    assert refused.status_code == 400 and refused.json()["code"] == "empty_target"
    bad = {"version": "cnn@1", "policy": {**POLICY, "cohorts": [{"count": 1, "percent": 5}]}}
    invalid = api.client.post("/v1/rollouts", json=bad, headers=api.auth("operator"))
    assert invalid.status_code == 422
    missing = api.client.get("/v1/rollouts/nope", headers=api.auth("viewer"))
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert api.store.list_rollouts().items == []  # nothing was created by a refusal


@pytest.mark.parametrize(
    "version", ["cnn\x00@1", "cnn@1\x00", "c n n@1", "cnn@-1", "cnn@1@2", "../cnn@1", "@1"]
)
def test_a_version_outside_the_grammar_is_a_client_error(api: Api, version: str) -> None:
    """One version-reference grammar for every request that names a version: anything
    else is a 422 before it reaches the database (PostgreSQL refuses a NUL: that was a
    500), and nothing is created."""
    _enroll(api, 1)
    for path, body in (
        ("/v1/rollouts", {"version": version, "policy": POLICY}),
        ("/v1/deployments", {"version": version, "devices": ["dev-0"]}),
    ):
        r = api.client.post(path, json=body, headers=api.auth("operator"))
        assert r.status_code == 422, (path, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    assert api.store.list_rollouts().items == []


def test_named_policy_then_rollout_under_it(api: Api) -> None:
    _enroll(api, 2)
    put = api.client.put(
        "/v1/rollout-policies/canary-all", json=POLICY, headers=api.auth("operator")
    )
    assert put.status_code == 200, put.text
    names = api.client.get("/v1/rollout-policies", headers=api.auth("viewer")).json()
    assert [p["name"] for p in names["items"]] == ["canary-all"]
    made = api.client.post(
        "/v1/rollouts",
        json={"version": "cnn@1", "policy_name": "canary-all"},
        headers=api.auth("operator"),
    )
    assert made.status_code == 201 and made.json()["policy_name"] == "canary-all"
    unknown = api.client.post(
        "/v1/rollouts",
        json={"version": "cnn@1", "policy_name": "nope"},
        headers=api.auth("operator"),
    )
    assert unknown.status_code == 404
    coordinator = api.client.get("/v1/rollouts/coordinator", headers=api.auth("viewer")).json()
    assert coordinator == {"leader": False, "running": False}


def test_a_standby_serves_reads_but_starts_no_federated_run(api: Api) -> None:
    class Standby:
        leader = False

    api.resources.rollouts = Standby()
    try:
        refused = api.client.post(
            "/v1/federation/runs", json={"rounds": 1}, headers=api.auth("operator")
        )
        assert refused.status_code == 503 and refused.json()["code"] == "not_leader"
        assert api.store.list_runs().items == []  # nothing was started
        listed = api.client.get("/v1/federation/runs", headers=api.auth("viewer"))
        assert listed.status_code == 200
        coordinator = api.client.get("/v1/rollouts/coordinator", headers=api.auth("viewer"))
        assert coordinator.json() == {"leader": False, "running": True}
    finally:
        api.resources.rollouts = None
