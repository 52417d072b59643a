"""Control characters in the URL and NULs in JSON bodies are refused once, for every route,
by the API's request middleware (a NUL reached PostgreSQL, which refuses it in a text
parameter: a 500 that the schemathesis test found on several routes).

The middleware tests run on an app whose one route takes any text, so the middleware is the
only defence in the way; the last test shows it on the real API's routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Body, FastAPI
from fastapi.testclient import TestClient

from cloud.api.errors import install_error_handlers
from cloud.api.middleware import BodyLimitMiddleware
from tests.cloud.api.conftest import Api


@pytest.fixture(scope="module")
def echo() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)

    @app.get("/echo/{word}")
    def echo_get(word: str, q: str = "") -> dict[str, str]:
        return {"word": word, "q": q}

    @app.post("/echo")
    def echo_post(body: Any = Body()) -> Any:
        return body

    return TestClient(app)


def _refused(r: Any, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == code


@pytest.mark.parametrize(
    "url", ["/echo/a%00b", "/echo/a%0Ab", "/echo/ok?q=a%00b", "/echo/ok?q=%1F", "/echo/ok?q=%7F"]
)
def test_control_characters_in_the_url_are_refused(echo: TestClient, url: str) -> None:
    _refused(echo.get(url), 422, "invalid_characters")


def test_ordinary_text_in_the_url_passes(echo: TestClient) -> None:
    r = echo.get("/echo/caf%C3%A9?q=a+b%20c%25")
    assert r.json() == {"word": "café", "q": "a b c%"}


def _json(body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "Content-Length": str(len(body))}


def test_a_nul_in_a_json_body_is_refused(echo: TestClient) -> None:
    body = b'{"name": "a\\u0000b"}'
    _refused(echo.post("/echo", content=body, headers=_json(body)), 422, "invalid_characters")


def test_an_escaped_backslash_before_u0000_is_text_not_a_nul(echo: TestClient) -> None:
    body = b'{"name": "a\\\\u0000b"}'  # the JSON text a\\u0000b: a backslash, then "u0000"
    r = echo.post("/echo", content=body, headers=_json(body))
    assert r.status_code == 200 and r.json() == {"name": "a\\u0000b"}


@pytest.mark.parametrize("split", range(1, 12))
def test_a_nul_escape_split_across_chunks_is_still_refused(echo: TestClient, split: int) -> None:
    body = b'{"n": "x\\u0000"}'
    cut = body.index(b"\\u0000") - 4 + split  # every cut around and through the escape

    def chunks() -> Iterator[bytes]:
        yield body[:cut]
        yield body[cut:]

    r = echo.post("/echo", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, (cut, r.text)


@pytest.mark.parametrize("split", range(1, 12))
def test_an_escaped_backslash_split_across_chunks_passes(echo: TestClient, split: int) -> None:
    body = b'{"n": "x\\\\\\\\u0000"}'  # x, two escaped backslashes, then the text u0000
    cut = body.index(b"u0000") - 5 + split

    def chunks() -> Iterator[bytes]:
        yield body[:cut]
        yield body[cut:]

    r = echo.post("/echo", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {"n": "x\\\\u0000"}, (cut, r.text)


def test_the_api_refuses_a_nul_in_a_query_before_the_database(api: Api) -> None:
    h = api.auth("viewer")
    for url in (
        "/v1/devices?cursor=%00",
        "/v1/telemetry/aggregates?model_version=a%00b",
        "/v1/models/cnn%00@1",
    ):
        _refused(api.client.get(url, headers=h), 422, "invalid_characters")
