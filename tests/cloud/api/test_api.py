"""The control API end to end on each database: enrollment, devices, models and artifacts,
deployments through the in-memory broker, telemetry, federation, health, metrics, errors."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from typing import Any

from cloud.fleet.records import DeploymentState, StatusRecord, TelemetryRecord
from cloud.registry import ArtifactStatus, VersionSource
from cloud.registry.registry import NewArtifact
from tests.cloud.api.conftest import FLOAT32, INT8, Api
from tests.cloud.test_publish_session import FakeDevice

PROBLEM = "application/problem+json"


def _problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"https://fedge.dev/problems/{body['code']}"
    assert isinstance(body["title"], str) and isinstance(body["detail"], str)
    assert body["instance"] == response.request.url.path
    if code is not None:
        assert body["code"] == code
    return body


# --- enrollment ---------------------------------------------------------------------------


def test_enrollment_flow(api: Api) -> None:
    made = api.client.post(
        "/v1/devices/enrollment-tokens",
        json={
            "device_id": "dev-a",
            "hardware_id": "hw-a",
            "groups": ["lab"],
            "tags": ["t1"],
            "profile": "pi4",
        },
        headers=api.auth("operator"),
    )
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    secret = made.json()["token"]
    bundle = api.client.post("/v1/devices/enroll", json={"token": secret})
    assert bundle.status_code == 201, bundle.text
    assert bundle.headers["cache-control"] == "no-store"
    body = bundle.json()
    assert body["device_id"] == "dev-a" and body["groups"] == ["lab"]
    assert body["file_mode"] == "0600"
    on_disk = {p.name: p.read_bytes() for p in api.home.device_dir("dev-a").iterdir()}
    decoded = {name: base64.b64decode(data) for name, data in body["files"].items()}
    assert decoded == on_disk
    assert {"signing.key", "box.key", "client.crt", "client.key", "root.pub"} <= decoded.keys()
    assert "dev-a" in api.home.fleet()
    device = api.store.get_device("dev-a")
    assert (device.groups, device.tags, device.profile) == (["lab"], ["t1"], "pi4")
    again = api.client.post("/v1/devices/enroll", json={"token": secret})
    _problem(again, 403, "token_used")
    _problem(api.client.post("/v1/devices/enroll", json={"token": "nope"}), 403, "invalid_token")
    audit = [e for e in api.store.list_audit(limit=50).items if e.action == "devices.enroll"]
    assert [e.result for e in audit] == ["invalid_token", "token_used", "ok"]
    assert all(e.actor == "enrollment" for e in audit)
    # a second token for an enrolled device is refused up front
    dup = api.client.post(
        "/v1/devices/enrollment-tokens",
        json={"device_id": "dev-a", "hardware_id": "hw-a"},
        headers=api.auth("operator"),
    )
    _problem(dup, 409, "already_enrolled")


def test_reserved_and_invalid_names_are_refused(api: Api) -> None:
    for device_id, code in (("fedge-coordinator", "reserved_name"), ("a/b", "validation_error")):
        r = api.client.post(
            "/v1/devices/enrollment-tokens",
            json={"device_id": device_id, "hardware_id": "hw-a"},
            headers=api.auth("operator"),
        )
        _problem(r, 422, code)


def test_expired_enrollment_token(api: Api) -> None:
    r = api.client.post(
        "/v1/devices/enrollment-tokens",
        json={"device_id": "dev-x", "hardware_id": "hw-a", "ttl_s": 5},
        headers=api.auth("operator"),
    )
    secret = r.json()["token"]
    api.resources.now = lambda: time.time() + 60
    _problem(api.client.post("/v1/devices/enroll", json={"token": secret}), 403, "token_expired")
    assert "dev-x" not in api.home.fleet()


# --- devices ------------------------------------------------------------------------------


def test_list_filter_paginate_patch_revoke(api: Api) -> None:
    for i in range(3):
        api.enroll(f"dev-{i}", groups=("lab",) if i < 2 else ())
    viewer = api.auth("viewer")
    page = api.client.get("/v1/devices", params={"limit": 2}, headers=viewer).json()
    assert [d["device_id"] for d in page["items"]] == ["dev-0", "dev-1"]
    rest = api.client.get(
        "/v1/devices", params={"limit": 2, "cursor": page["next_cursor"]}, headers=viewer
    ).json()
    assert [d["device_id"] for d in rest["items"]] == ["dev-2"] and rest["next_cursor"] is None
    lab = api.client.get("/v1/devices", params={"group": "lab"}, headers=viewer).json()
    assert [d["device_id"] for d in lab["items"]] == ["dev-0", "dev-1"]
    _problem(api.client.get("/v1/devices", params={"limit": 501}, headers=viewer), 422)

    patched = api.client.patch(
        "/v1/devices/dev-2", json={"groups": ["lab", "east"]}, headers=api.auth("operator")
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["groups"] == ["east", "lab"]
    assert api.home.fleet()["dev-2"].groups == ["east", "lab"]  # the ACL source
    _problem(
        api.client.patch("/v1/devices/nope", json={"tags": []}, headers=api.auth("operator")),
        404,
        "not_found",
    )

    revoked = api.client.post("/v1/devices/dev-1/revoke", headers=api.auth("admin"))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["device"]["revoked_at"] is not None
    assert revoked.json()["broker"]["configured"] is False
    assert api.home.fleet()["dev-1"].revoked
    listed = api.client.get("/v1/devices", headers=viewer).json()
    assert "dev-1" not in [d["device_id"] for d in listed["items"]]
    _problem(api.client.post("/v1/devices/nope/revoke", headers=api.auth("admin")), 404)


def test_device_detail_has_history_and_telemetry(api: Api) -> None:
    api.enroll("dev-a")
    now = time.time()
    api.store.record_statuses(
        [
            StatusRecord("dev-a", f"m{i}", now + i, now + i, "online", {"state": "online"})
            for i in range(7)
        ]
    )
    api.store.record_telemetry(
        [TelemetryRecord("dev-a", "t1", now, now, "cnn@1", 10, 1, 1.0, 2.0, 3.0, 10, {})]
    )
    detail = api.client.get("/v1/devices/dev-a", headers=api.auth("viewer")).json()
    assert len(detail["status_history"]) == 5
    assert detail["status_history"][0]["msg_id"] == "m6"
    assert detail["latest_telemetry"]["msg_id"] == "t1"
    latest = api.client.get(
        "/v1/telemetry/latest", params={"device_id": "dev-a"}, headers=api.auth("viewer")
    ).json()
    assert latest["items"][0]["telemetry"]["requests"] == 10
    agg = api.client.get(
        "/v1/telemetry/aggregates", params={"window_s": 600}, headers=api.auth("viewer")
    ).json()
    assert agg["items"][0]["requests"] == 10 and agg["items"][0]["errors"] == 1
    _problem(
        api.client.get(
            "/v1/telemetry/latest", params={"device_id": "nope"}, headers=api.auth("viewer")
        ),
        404,
    )


# --- models and artifacts -----------------------------------------------------------------


def test_models_with_lineage(api: Api) -> None:
    items = api.client.get("/v1/models", headers=api.auth("viewer")).json()["items"]
    assert [v["ref"] for v in items] == ["cnn@1", "cnn@2"]
    assert items[1]["parent"] == "cnn@1" and items[1]["source"] == "trained"
    art = items[0]["artifacts"][0]
    assert art["sha256"] == hashlib.sha256(INT8).hexdigest()
    assert art["url"] == f"/v1/artifacts/{art['sha256']}"
    one = api.client.get("/v1/models/cnn/versions/2", headers=api.auth("viewer")).json()
    assert one["artifacts"][0]["status"] == "rejected"
    _problem(api.client.get("/v1/models/cnn/versions/9", headers=api.auth("viewer")), 404)


def test_artifact_download_etag_and_ranges(api: Api) -> None:
    sha = hashlib.sha256(INT8).hexdigest()
    url, h = f"/v1/artifacts/{sha}", api.auth("viewer")
    full = api.client.get(url, headers=h)
    assert full.status_code == 200 and full.content == INT8
    assert full.headers["etag"] == f'"{sha}"'
    assert full.headers["accept-ranges"] == "bytes"
    assert int(full.headers["content-length"]) == len(INT8)
    cached = api.client.get(url, headers={**h, "If-None-Match": f'"{sha}"'})
    assert cached.status_code == 304 and cached.content == b""
    assert api.client.get(url, headers={**h, "If-None-Match": '"other"'}).status_code == 200
    part = api.client.get(url, headers={**h, "Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == INT8[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(INT8)}"
    tail = api.client.get(url, headers={**h, "Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == INT8[-5:]
    open_end = api.client.get(url, headers={**h, "Range": f"bytes={len(INT8) - 3}-"})
    assert open_end.content == INT8[-3:]
    clipped = api.client.get(url, headers={**h, "Range": "bytes=0-999999"})
    assert clipped.status_code == 206 and clipped.content == INT8
    for bad in (f"bytes={len(INT8)}-", "bytes=5-2", "bytes=0-1,4-5", "items=0-1", "bytes=-0"):
        body = _problem(api.client.get(url, headers={**h, "Range": bad}), 416)
        assert body["code"] == "range_not_satisfiable"
    stale = api.client.get(url, headers={**h, "Range": "bytes=0-1", "If-Range": '"x"'})
    assert stale.status_code == 200 and stale.content == INT8
    _problem(api.client.get("/v1/artifacts/" + "0" * 64, headers=h), 404)
    _problem(api.client.get("/v1/artifacts/XYZ", headers=h), 422)
    _problem(api.client.get(url), 401)


# --- deployments --------------------------------------------------------------------------


def test_deployment_job_reaches_succeeded_through_the_broker(api: Api) -> None:
    api.enroll("dev-a", groups=("lab",))
    api.enroll("dev-b", groups=("lab",))
    devices = [FakeDevice(api.broker, d) for d in ("dev-a", "dev-b")]
    for device in devices:
        device.start()
    r = api.client.post(
        "/v1/deployments", json={"version": "cnn@1", "group": "lab"}, headers=api.auth("operator")
    )
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["state"] == "pending" and created["version_ref"] == "cnn@1"
    assert r.headers["location"] == f"/v1/deployments/{created['deployment_id']}"
    assert created["created_by"] == api.token_ids["operator"]
    api.resources.jobs.wait(created["deployment_id"], timeout=30)
    got = api.client.get(
        f"/v1/deployments/{created['deployment_id']}", headers=api.auth("viewer")
    ).json()
    assert got["state"] == DeploymentState.SUCCEEDED, got
    assert {d["device_id"]: d["outcome"] for d in got["devices"]} == {
        "dev-a": "committed",
        "dev-b": "committed",
    }
    assert all(d["precision"] == "int8" for d in got["devices"])
    # The report says which variant and why (§15): one approved variant, nothing measured.
    assert all(
        (d["variant"]["precision"], d["variant"]["basis"]) == ("int8", "static")
        for d in got["devices"]
    )
    assert got["finished_at"] is not None and got["bytes_sent"] > 0
    assert all(d.manifests for d in devices)
    listed = api.client.get("/v1/deployments", headers=api.auth("viewer")).json()
    assert [d["deployment_id"] for d in listed["items"]] == [created["deployment_id"]]


def test_a_silent_device_fails_the_deployment(api: Api) -> None:
    api.enroll("dev-a")
    FakeDevice(api.broker, "dev-a", answer="silent").start()
    r = api.client.post(
        "/v1/deployments",
        json={"version": "cnn@1", "devices": ["dev-a"]},
        headers=api.auth("admin"),
    )
    assert r.status_code == 202, r.text
    deployment_id = r.json()["deployment_id"]
    api.resources.jobs.wait(deployment_id, timeout=30)
    got = api.store.get_deployment(deployment_id)
    assert got.state is DeploymentState.FAILED


def test_deployments_refused_up_front(api: Api) -> None:
    api.enroll("dev-a")
    h = api.auth("operator")
    _problem(
        api.client.post(
            "/v1/deployments", json={"version": "cnn@2", "devices": ["dev-a"]}, headers=h
        ),
        409,
        "not_deployable",
    )
    _problem(
        api.client.post(
            "/v1/deployments", json={"version": "cnn@9", "devices": ["dev-a"]}, headers=h
        ),
        404,
    )
    _problem(
        api.client.post(
            "/v1/deployments", json={"version": "cnn@1", "devices": ["nope"]}, headers=h
        ),
        404,
    )
    _problem(
        api.client.post(
            "/v1/deployments", json={"version": "cnn@1", "group": "none-such"}, headers=h
        ),
        400,
    )
    _problem(
        api.client.post(
            "/v1/deployments",
            json={"version": "cnn@1", "devices": ["dev-a"], "group": "lab"},
            headers=h,
        ),
        422,
        "validation_error",
    )
    assert api.store.list_deployments().items == []
    _problem(api.client.get("/v1/deployments/nope", headers=h), 404)


# --- federation, health, metrics ----------------------------------------------------------


def test_federation_runs(api: Api) -> None:
    reg = api.resources.registry
    for n in (1, 2):
        reg.create_version(
            "fed",
            spec={},
            source=VersionSource.FEDERATED,
            source_ref=f"run-1/round-{n}",
            metrics={"loss": 1.0 / n},
            artifacts=[
                NewArtifact("tflite", "float32", FLOAT32 + bytes([n]), ArtifactStatus.APPROVED)
            ],
        )
    # Runs are listed from the fleet database (tests/cloud/api/test_federation_runs.py runs
    # them); registry versions alone make no run, and a run needs a valid body.
    runs = api.client.get("/v1/federation/runs", headers=api.auth("viewer")).json()["items"]
    assert runs == []
    _problem(api.client.post("/v1/federation/runs", headers=api.auth("operator")), 422)


def test_health_and_readiness(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"]["ok"]
    api.health["broker"] = (False, "down")
    body = _problem(api.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["broker"] == {"ok": False, "detail": "down"}
    api.health["broker"] = (True, "up")
    api.health["database"] = (False, "gone")
    _problem(api.client.get("/readyz"), 503)


def test_metrics(api: Api) -> None:
    api.enroll("dev-a")
    api.store.record_statuses(
        [
            StatusRecord(
                "dev-a",
                "m1",
                time.time(),
                time.time(),
                "online",
                {
                    "state": "online",
                    "serving": {
                        "model_id": "cnn",
                        "version": 1,
                        "artifact_id": "ab" * 16,
                        "sha256": "0" * 64,
                        "precision": "int8",
                        "slot": "a",
                    },
                },
            )
        ]
    )
    api.client.get("/v1/devices", headers=api.auth("viewer"))
    r = api.client.get("/metrics", headers=api.auth("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "fedge_devices{" in text
    assert "fedge_api_requests_total{" in text and 'route="/v1/devices"' in text


# --- errors -------------------------------------------------------------------------------


def test_every_error_is_a_problem(api: Api) -> None:
    h = api.auth("admin")
    _problem(api.client.get("/v1/nope", headers=h), 404, "not_found")
    r = api.client.delete("/v1/devices", headers=h)
    _problem(r, 405, "method_not_allowed")
    assert "allow" in r.headers
    big = b'{"role": "viewer", "name": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    _problem(
        api.client.post(
            "/v1/tokens", content=big, headers={**h, "Content-Type": "application/json"}
        ),
        413,
        "payload_too_large",
    )

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 65536

    _problem(
        api.client.post(
            "/v1/tokens", content=chunks(), headers={**h, "Content-Type": "application/json"}
        ),
        413,
    )
    _problem(
        api.client.post(
            "/v1/tokens", content=b"role=viewer", headers={**h, "Content-Type": "text/plain"}
        ),
        415,
        "unsupported_media_type",
    )
    _problem(
        api.client.post(
            "/v1/tokens", content=b"{", headers={**h, "Content-Type": "application/json"}
        ),
        422,
        "validation_error",
    )
    body = _problem(api.client.post("/v1/tokens", json={"role": "root"}, headers=h), 422)
    assert body["errors"] and body["errors"][0]["loc"] == ["body", "role"]
    assert api.store.list_api_tokens() and all(
        t.role != "root" for t in api.store.list_api_tokens()
    )


def test_an_unexpected_error_is_a_500_problem(api: Api) -> None:
    from fastapi.testclient import TestClient

    def boom(*_a: object, **_k: object) -> object:
        raise RuntimeError("secret internals")

    api.resources.registry.list_versions = boom  # type: ignore[method-assign,assignment]
    client = TestClient(api.client.app, raise_server_exceptions=False)
    r = client.get("/v1/models", headers=api.auth("viewer"))
    body = _problem(r, 500, "internal_error")
    assert "secret" not in str(body["detail"])


def test_tokens_api(api: Api) -> None:
    made = api.client.post(
        "/v1/tokens", json={"role": "operator", "name": "ci"}, headers=api.auth("admin")
    )
    assert made.status_code == 201 and made.headers["cache-control"] == "no-store"
    secret, token_id = made.json()["token"], made.json()["token_id"]
    assert (
        api.client.get("/v1/devices", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 200
    )
    listed = api.client.get("/v1/tokens", headers=api.auth("admin")).json()["items"]
    assert token_id in [t["token_id"] for t in listed] and "token" not in listed[0]
    r = api.client.post(f"/v1/tokens/{token_id}/revoke", headers=api.auth("admin"))
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    _problem(api.client.get("/v1/devices", headers={"Authorization": f"Bearer {secret}"}), 401)
    _problem(api.client.post("/v1/tokens/nope/revoke", headers=api.auth("admin")), 404)
