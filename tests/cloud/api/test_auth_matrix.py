"""Every mutating endpoint × every kind of caller → the expected status; refused calls
change nothing and are in the audit log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud.api.federation_jobs import FederationJobs
from cloud.federation.plan import FederationPlan, FederationResult
from cloud.federation.server import RoundCallback
from cloud.registry import Registry
from tests.cloud.api.conftest import Api

CALLERS = ("none", "wrong", "revoked", "viewer", "operator", "admin")
REFUSED = {"none": 401, "wrong": 401, "revoked": 401}


@dataclass(frozen=True)
class Case:
    action: str
    method: str
    path: str
    body: dict[str, Any] | None
    minimum: str  # the lowest role allowed
    ok: int  # status when allowed
    #: A snapshot of the state the call changes (must be unchanged when refused).
    state: Callable[[Api], object]


def _devices(api: Api) -> object:
    page = api.store.list_devices(revoked=None, limit=500)
    return [(d.device_id, d.groups, d.tags, d.revoked_at) for d in page.items]


def _tokens(api: Api) -> object:
    return sorted((t.token_id, t.revoked_at) for t in api.store.list_api_tokens())


def _deployments(api: Api) -> object:
    return [d.deployment_id for d in api.store.list_deployments(limit=200).items]


def _fleet(api: Api) -> object:
    return {k: (v.groups, v.revoked) for k, v in api.home.fleet().items()}


CASES = [
    Case(
        "devices.enrollment_token",
        "POST",
        "/v1/devices/enrollment-tokens",
        {"device_id": "dev-new", "hardware_id": "hw-a"},
        "operator",
        201,
        _devices,
    ),
    Case(
        "devices.patch",
        "PATCH",
        "/v1/devices/dev-a",
        {"groups": ["lab"], "tags": ["t1"]},
        "operator",
        200,
        lambda api: (_devices(api), _fleet(api)),
    ),
    Case(
        "devices.revoke",
        "POST",
        "/v1/devices/dev-a/revoke",
        None,
        "admin",
        200,
        lambda api: (_devices(api), _fleet(api)),
    ),
    Case(
        "deployments.create",
        "POST",
        "/v1/deployments",
        {"version": "cnn@1", "devices": ["dev-a"]},
        "operator",
        202,
        _deployments,
    ),
    Case(
        "federation.start",
        "POST",
        "/v1/federation/runs",
        {"data": "digits", "clients": 2, "rounds": 1, "secagg": False, "quantize": False},
        "operator",
        202,
        lambda api: [r.run_id for r in api.store.list_runs().items],
    ),
    Case("tokens.create", "POST", "/v1/tokens", {"role": "viewer"}, "admin", 201, _tokens),
    Case(
        "tokens.revoke",
        "POST",
        "/v1/tokens/{viewer_id}/revoke",
        None,
        "admin",
        200,
        _tokens,
    ),
]
RANK = {"viewer": 0, "operator": 1, "admin": 2}


def _expected(case: Case, caller: str) -> int:
    if caller in REFUSED:
        return REFUSED[caller]
    return case.ok if RANK[caller] >= RANK[case.minimum] else 403


def _instant_run(
    plan: FederationPlan,
    registry: Registry,
    *,
    engine: str,
    on_round: RoundCallback | None,
    num_cpus: int,
    home: Path | None,
) -> FederationResult:
    """A run that ends at once (the matrix tests who may start one, not training)."""
    return FederationResult(plan.run_id, plan.strategy, initial_accuracy=0.0)


@pytest.fixture(autouse=True)
def _no_training(api: Api) -> None:
    res = api.resources
    if res.federation is not None:
        res.federation.shutdown()
    res.federation = FederationJobs(
        res.registry, res.store, home=res.home.path.parent, runner=_instant_run, now=res.now
    )


@pytest.mark.parametrize("case", CASES, ids=[c.action for c in CASES])
def test_auth_matrix(api: Api, case: Case) -> None:
    api.enroll("dev-a")
    path = case.path.format(viewer_id=api.token_ids["viewer"])
    for caller in CALLERS:
        expected = _expected(case, caller)
        before = case.state(api) if expected >= 400 else None
        audit_before = len(api.store.list_audit(limit=500).items)
        response = api.client.request(case.method, path, json=case.body, headers=api.auth(caller))
        assert response.status_code == expected, (caller, response.text)
        entries = api.store.list_audit(limit=500).items
        assert len(entries) == audit_before + 1, (caller, "one audit entry per call")
        entry = entries[0]
        assert entry.action == case.action
        if expected >= 400:
            body = response.json()
            assert response.headers["content-type"] == "application/problem+json"
            assert body["status"] == expected
            assert body["type"] == f"https://fedge.dev/problems/{body['code']}"
            assert {"title", "detail", "instance"} <= body.keys()
            assert entry.result == body["code"]
            if expected != 501:
                assert case.state(api) == before, (caller, "a refused call changed state")
            if expected == 401:
                assert entry.actor == "anonymous"
                assert "WWW-Authenticate" in response.headers
            else:
                assert entry.actor == api.token_ids[caller]
        else:
            assert entry.result == "ok"
            assert entry.actor == api.token_ids[caller]
            if case.action == "federation.start":  # let the instant run end before the next
                jobs = api.resources.federation
                assert jobs is not None
                jobs.wait(response.json()["run_id"], timeout=30)
            if case.action == "devices.revoke":  # make the next allowed caller meaningful
                return
            if case.action == "tokens.revoke":
                return


def test_viewer_reads_but_no_token_does_not(api: Api) -> None:
    for path in ("/v1/devices", "/v1/models", "/v1/deployments", "/v1/telemetry/aggregates"):
        assert api.client.get(path, headers=api.auth("viewer")).status_code == 200
        refused = api.client.get(path)
        assert refused.status_code == 401
        assert refused.json()["code"] == "missing_token"
    assert api.client.get("/v1/tokens", headers=api.auth("operator")).status_code == 403
    assert api.client.get("/v1/audit", headers=api.auth("admin")).status_code == 200
