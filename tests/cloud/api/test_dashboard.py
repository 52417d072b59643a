"""The dashboard's server side on SQLite and PostgreSQL: the page and its headers, the SQL
summaries, and the event stream's cookie ticket (issue, refuse, revoke)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cloud.api.dashboard import STATIC_DIR, STATIC_FILES
from cloud.api.routes import events
from cloud.fleet.records import FederationRound, StatusRecord, TelemetryRecord
from cloud.fleet.store import FleetStore
from tests.cloud.api.conftest import Api


def _seed(store: FleetStore, now: float) -> None:
    profiles = ["smart_camera", "smart_camera", "thermostat_sensor", None]
    for i, profile in enumerate(profiles):
        store.add_device(f"dev-{i}", hardware_id="hw-a", profile=profile, enrolled_at=now - 100)
    store.record_statuses(
        [
            StatusRecord("dev-0", "s0", now - 5, now - 5, "serving", {"model_version": "cnn@2"}),
            StatusRecord("dev-1", "s1", now - 4, now - 4, "serving", {"model_version": "cnn@1"}),
            StatusRecord("dev-2", "s2", now - 3, now - 3, "offline", {"model_version": "cnn@1"}),
        ]
    )

    def window(device: str, msg: str, version: str, p50: float, requests: int) -> TelemetryRecord:
        return TelemetryRecord(
            device, msg, now - 2, now - 2, version, requests, 0, p50, p50 * 2, p50 * 3, requests, {}
        )

    store.record_telemetry(
        [
            window("dev-0", "t0", "cnn@2", 0.4, 10),  # bucket ≤0.5
            window("dev-0", "t1", "cnn@2", 3.0, 5),  # bucket ≤5
            window("dev-1", "t2", "cnn@1", 3000.0, 7),  # the rest
        ]
    )


def test_summary_aggregates_the_fleet_and_latency(api: Api) -> None:
    now = time.time()
    _seed(api.store, now)
    api.store.mark_revoked("dev-3", at=now)
    r = api.client.get("/v1/dashboard/summary", headers=api.auth("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    fleet = body["fleet"]
    assert (fleet["devices"], fleet["online"], fleet["offline"], fleet["never_reported"]) == (
        3,
        2,
        1,
        0,
    )
    assert fleet["revoked"] == 1
    assert {(p["key"], p["devices"], p["online"]) for p in fleet["profiles"]} == {
        ("smart_camera", 2, 2),
        ("thermostat_sensor", 1, 0),
    }
    assert {(v["key"], v["devices"]) for v in fleet["versions"]} == {("cnn@1", 2), ("cnn@2", 1)}
    latency = {v["model_version"]: v for v in body["latency"]}
    edges = body["bucket_edges_ms"]
    assert len(latency["cnn@2"]["histogram"]) == len(edges) + 1
    assert latency["cnn@2"]["histogram"][0] == 10
    assert latency["cnn@2"]["histogram"][edges.index(5)] == 5
    assert latency["cnn@1"]["histogram"][-1] == 7
    assert latency["cnn@2"]["requests"] == 15


def test_summary_needs_a_token(api: Api) -> None:
    for who, status in (("none", 401), ("wrong", 401), ("revoked", 401)):
        assert api.client.get("/v1/dashboard/summary", headers=api.auth(who)).status_code == status


def test_page_is_served_with_a_strict_csp(api: Api) -> None:
    r = api.client.get("/")
    assert r.status_code == 200
    assert "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text  # no inline script: every script is a file of ours
    for name in STATIC_FILES:
        f = api.client.get(f"/dashboard/static/{name}")
        assert f.status_code == 200, name
        assert f.content == (STATIC_DIR / name).read_bytes()
    assert (STATIC_DIR / "vendor" / "LICENSE.uPlot").read_text().startswith("The MIT License")


@pytest.mark.parametrize("name", ["../__init__.py", "vendor/../../schemas.py", "nope.js", ""])
def test_only_the_listed_files_are_served(api: Api, name: str) -> None:
    assert api.client.get(f"/dashboard/static/{name}").status_code == 404


def test_watermark_moves_with_a_status_and_names_the_device(api: Api) -> None:
    now = time.time()
    _seed(api.store, now)
    before = api.store.fleet_watermark()
    assert api.store.devices_changed_since(before.device_time) == []
    api.store.record_statuses([StatusRecord("dev-2", "s9", now + 1, now + 1, "serving", {})])
    after = api.store.fleet_watermark()
    assert after != before
    changed = api.store.devices_changed_since(before.device_time)
    assert [(d.device_id, d.online) for d in changed] == [("dev-2", True)]
    api.store.create_run("run-1", plan={}, created_by="t", now=now)
    api.store.add_round("run-1", FederationRound(1, 0.5, 1.0, 2, 0, 0, 10, 10, 1.0, None))
    assert api.store.fleet_watermark().rounds == after.rounds + 1


def test_ticket_is_bound_to_its_key_and_expiry() -> None:
    key = b"k" * 32
    ticket = events.issue_ticket(key, "tok1", expires_at=2000.0)
    assert events.verify_ticket(key, ticket, now=1999.0) == "tok1"
    assert events.verify_ticket(key, ticket, now=2001.0) is None  # expired
    assert events.verify_ticket(b"x" * 32, ticket, now=1999.0) is None  # other key
    forged = ticket.replace("tok1", "tok2", 1)
    assert events.verify_ticket(key, forged, now=1999.0) is None  # tampered token id
    assert events.verify_ticket(key, "garbage", now=0.0) is None


def test_session_sets_an_httponly_cookie_and_the_stream_needs_it(api: Api) -> None:
    refused = api.client.get("/v1/events/stream")
    assert refused.status_code == 401
    assert refused.json()["code"] == "missing_token"
    r = api.client.post("/v1/events/session", headers=api.auth("viewer"))
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{events.COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/v1/events"):
        assert attribute.lower() in cookie.lower(), attribute
    assert api.tokens["viewer"] not in cookie  # the ticket names the token, never holds it
    assert api.client.post("/v1/events/session", headers=api.auth("none")).status_code == 401


class LiveServer:
    """An app served by uvicorn on a free loopback port, in a thread (SSE needs a real
    socket: the ASGI test client buffers a response until it ends, and a stream never does)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        from tests.helpers.mosquitto import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def read_events(lines: Iterator[str], count: int) -> list[tuple[str, dict[str, Any]]]:
    """The next ``count`` events of an open event stream's lines (name, decoded data)."""
    out: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            out.append((name, json.loads(line[6:])))
            if len(out) >= count:
                break
    return out


def test_stream_sends_hello_then_the_changed_device(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "POLL_S", 0.05)
    now = time.time()
    _seed(api.store, now)
    with LiveServer(api.client.app) as live, httpx.Client(base_url=live.url) as client:
        assert client.post("/v1/events/session", headers=api.auth("viewer")).status_code == 200
        with client.stream("GET", "/v1/events/stream", timeout=20) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            lines = r.iter_lines()
            assert read_events(lines, 1)[0][0] == "hello"  # the stream has its watermark now
            api.store.record_statuses(
                [StatusRecord("dev-1", "s10", time.time(), now + 2, "offline", {})]
            )
            got = read_events(lines, 2)
    assert [name for name, _ in got] == ["devices", "summary"]
    assert [(d["device_id"], d["online"]) for d in got[0][1]["items"]] == [("dev-1", False)]
    assert got[1][1]["online"] == 1


def test_stream_of_a_revoked_token_ends(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "POLL_S", 0.05)
    monkeypatch.setattr(events, "AUTH_RECHECK_S", 0.0)
    assert api.client.post("/v1/events/session", headers=api.auth("operator")).status_code == 200
    api.store.revoke_api_token(api.token_ids["operator"], at=time.time())
    # the cookie's ticket is still within its lifetime, but its token is revoked
    refused = api.client.get("/v1/events/stream")
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_ticket"
