"""``/metrics`` needs a bearer token (any role) unless ``metrics_public`` is set; the probes
``/healthz`` and ``/readyz`` never do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from cloud.api import Resources, create_app
from cloud.api.errors import install_error_handlers
from cloud.api.routes import health
from cloud.config import Settings
from tests.cloud.api.conftest import Api

PROBLEM = "application/problem+json"


def _problem_401(response: Any, code: str) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith('Bearer realm="fedge"')
    body: dict[str, Any] = response.json()
    assert body["status"] == 401 and body["code"] == code
    assert body["type"] == f"https://fedge.dev/problems/{code}"
    assert body["instance"] == "/metrics"
    return body


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def _app(resources: Resources, *, metrics_public: bool) -> FastAPI:
    """The health routes as :func:`cloud.api.create_app` mounts them, with the error
    handlers and resources of the real app (``create_app`` mounts the default router)."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health.build_router(metrics_public=metrics_public))
    app.state.resources = resources
    return app


# --- refused ------------------------------------------------------------------------------


def test_no_token_is_the_api_s_401_problem(api: Api) -> None:
    r = api.client.get("/metrics")
    body = _problem_401(r, "missing_token")
    # The same problem, challenge included, as any other route without a token.
    other = api.client.get("/v1/devices")
    assert other.status_code == 401
    assert {**other.json(), "instance": "/metrics"} == body
    assert other.headers["www-authenticate"] == r.headers["www-authenticate"]
    assert "fedge_devices" not in r.text


@pytest.mark.parametrize("who", ["wrong", "revoked"])
def test_bad_or_revoked_token_is_refused(api: Api, who: str) -> None:
    r = api.client.get("/metrics", headers=api.auth(who))
    _problem_401(r, "invalid_token")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_not_a_bearer_scheme_is_refused(api: Api) -> None:
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    _problem_401(api.client.get("/metrics", headers=basic), "missing_token")


# --- allowed ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_any_role_scrapes_the_exposition_format(api: Api, role: str) -> None:
    api.enroll("dev-a")
    r = api.client.get("/metrics", headers=api.auth(role))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    families = _families(r.text)
    assert families["fedge_devices"].type == "gauge"
    online = {s.labels["online"]: s.value for s in families["fedge_devices"].samples}
    assert sum(online.values()) == 1.0  # the enrolled device, refreshed on the scrape
    assert "fedge_api_requests" in families


def test_metrics_public_serves_without_a_token(api: Api) -> None:
    api.enroll("dev-a")
    with TestClient(_app(api.resources, metrics_public=True)) as client:
        r = client.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == CONTENT_TYPE_LATEST
        assert "fedge_devices" in _families(r.text)
        assert client.get("/metrics", headers=api.auth("wrong")).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_metrics_public_off_is_the_default_router(api: Api) -> None:
    with TestClient(_app(api.resources, metrics_public=False)) as client:
        _problem_401(client.get("/metrics"), "missing_token")
        assert client.get("/metrics", headers=api.auth("viewer")).status_code == 200


def test_create_app_honours_metrics_public(api: Api, tmp_path: Path) -> None:
    public = Settings(home=tmp_path / "home", metrics_public=True)
    with TestClient(create_app(public, api.resources)) as client:
        assert client.get("/metrics").status_code == 200
    private = Settings(home=tmp_path / "home", metrics_public=False)
    with TestClient(create_app(private, api.resources)) as client:
        _problem_401(client.get("/metrics"), "missing_token")


# --- probes -------------------------------------------------------------------------------


def test_probes_stay_open(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    r = api.client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["database"]["ok"] is True


# --- OpenAPI ------------------------------------------------------------------------------


def _operation(app: FastAPI, path: str) -> dict[str, Any]:
    op: dict[str, Any] = app.openapi()["paths"][path]["get"]
    return op


def test_openapi_shows_the_token_requirement(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path / "home"))
    op = _operation(app, "/metrics")
    assert op["security"] == [{"bearer": []}]
    assert list(op["responses"]["401"]["content"]) == [PROBLEM]
    for probe in ("/healthz", "/readyz"):
        assert "security" not in _operation(app, probe), probe


def test_openapi_of_public_metrics_has_no_requirement(api: Api) -> None:
    op = _operation(_app(api.resources, metrics_public=True), "/metrics")
    assert "security" not in op
    assert "401" not in op["responses"] and "200" in op["responses"]


# --- the setting --------------------------------------------------------------------------


def test_metrics_public_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fedge.toml"
    monkeypatch.setenv("FEDGE_CONFIG", str(config))
    monkeypatch.delenv("FEDGE_METRICS_PUBLIC", raising=False)
    assert Settings().metrics_public is False  # no file, no variable: a token is needed
    config.write_text("metrics_public = true\n", encoding="utf-8")
    assert Settings().metrics_public is True
    monkeypatch.setenv("FEDGE_METRICS_PUBLIC", "false")  # the environment beats the file
    assert Settings().metrics_public is False
    config.unlink()
    monkeypatch.setenv("FEDGE_METRICS_PUBLIC", "1")
    assert Settings().metrics_public is True
