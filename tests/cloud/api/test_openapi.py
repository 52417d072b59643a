"""The OpenAPI 3.1 document: valid, every operation's responses documented (errors as
problem+json), and schemathesis finds no 5xx or non-conforming response."""

from __future__ import annotations

from typing import Any

import pytest

from cloud.api import create_app
from cloud.config import Settings
from tests.cloud.api.conftest import Api

METHODS = {"get", "post", "put", "patch", "delete"}


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = create_app(Settings()).openapi()
    return schema


def test_the_schema_validates() -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    schema = _schema()
    assert schema["openapi"].startswith("3.1")
    validator.validate(schema)


def test_every_operation_documents_its_responses() -> None:
    schema = _schema()
    components = schema["components"]["schemas"]
    assert "Problem" in components
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            where = f"{method.upper()} {path}"
            responses = op["responses"]
            assert any(s.startswith("2") for s in responses) or "501" in responses, where
            assert "500" in responses, where
            for status, response in responses.items():
                assert response.get("description"), (where, status)
                content = response.get("content", {})
                if status[0] in "45":
                    assert list(content) == ["application/problem+json"], (where, status)
                    ref = content["application/problem+json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Problem"
                elif status[0] == "2" and path not in ("/metrics",):
                    assert content, (where, status)
            if path.startswith("/v1/") and path != "/v1/devices/enroll":
                assert "401" in responses, where
                assert op.get("security") == [{"bearer": []}], where
            if op.get("requestBody") or op.get("parameters"):
                assert "422" in responses, where
    assert "HTTPValidationError" not in components  # our 422 is a problem, not FastAPI's


def test_schemathesis_finds_no_server_error(api: Api) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    api.enroll("dev-a")
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.client.app)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    headers = api.auth("admin")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/v1/tokens/{token_id}/revoke":
            continue  # could revoke the admin token the other operations use
        if (operation.method.upper(), operation.path) == ("POST", "/v1/federation/runs"):
            continue  # a documented 501 on purpose

        @settings(
            max_examples=8,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=checks)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert failures == [], "\n\n".join(failures)
