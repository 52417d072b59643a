"""Loopback HTTP endpoint: JSON and .npy inference, health, and every kind of bad request."""

from __future__ import annotations

import http.client
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.inference import InferenceServer, ModelSet, Predictor
from edge.inference.http_codec import HttpError as _HttpError
from edge.inference.http_codec import array_from_json as _array_from_json
from edge.inference.http_codec import array_from_npy as _array_from_npy
from shared.errors import ConfigError
from tests.helpers.models import INPUT_SHAPE, BuiltModels

LIMIT = 64 * 1024


@pytest.fixture()
def server(models: BuiltModels) -> Iterator[InferenceServer]:
    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = InferenceServer(predictor, port=0, max_body_bytes=LIMIT)
    srv.start()
    yield srv
    srv.stop()


def _request(
    srv: InferenceServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _infer_json(srv: InferenceServer, doc: object) -> tuple[int, dict[str, object]]:
    status, _, body = _request(
        srv, "POST", "/v1/infer", json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(body)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _x() -> np.ndarray:
    return np.random.default_rng(0).random(INPUT_SHAPE, dtype=np.float32)


def _assert_still_serving(srv: InferenceServer) -> None:
    status, doc = _infer_json(srv, {"inputs": _x().tolist()})
    assert status == 200 and doc["model_version"] == "a"


def test_health_reports_the_active_version(server: InferenceServer) -> None:
    status, _, body = _request(server, "GET", "/v1/health")
    doc = json.loads(body)
    assert status == 200 and doc["status"] == "ok" and doc["model_version"] == "a"
    assert doc["model"]["input"] == {"shape": list(INPUT_SHAPE), "dtype": "int8"}


def test_health_without_model_is_503() -> None:
    srv = InferenceServer(Predictor(), port=0)
    srv.start()
    try:
        status, _, body = _request(srv, "GET", "/v1/health")
        assert status == 503 and json.loads(body)["model_version"] is None
        status, _, body = _request(
            srv, "POST", "/v1/infer", b'{"inputs": [1]}', {"Content-Type": "application/json"}
        )
        assert status == 503 and json.loads(body)["error"]["code"] == "no_model"
    finally:
        srv.stop()


def test_json_inference_matches_the_predictor(server: InferenceServer, models: BuiltModels) -> None:
    x = _x()
    status, doc = _infer_json(server, {"inputs": x.tolist()})
    assert status == 200 and doc["shape"] == [1, 10]
    reference = Predictor()
    reference.load(models.int8_a)
    np.testing.assert_allclose(np.asarray(doc["outputs"]), reference.predict(x), rtol=1e-6)


def test_json_int8_inputs(server: InferenceServer) -> None:
    q = np.zeros(INPUT_SHAPE, np.int8)
    status, doc = _infer_json(server, {"inputs": q.tolist(), "dtype": "int8"})
    assert status == 200 and doc["shape"] == [1, 10]


def test_npy_inference_and_npy_response(server: InferenceServer) -> None:
    x = _x()
    status, headers, body = _request(
        server,
        "POST",
        "/v1/infer",
        _npy(x),
        {"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    assert status == 200 and headers["X-Model-Version"] == "a"
    out = np.load(io.BytesIO(body), allow_pickle=False)
    _, doc = _infer_json(server, {"inputs": x.tolist()})
    np.testing.assert_allclose(out, np.asarray(doc["outputs"]), rtol=1e-6)


@pytest.mark.parametrize(
    ("body", "ctype", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_json"),
        (b'{"inputs": [1, [2]]}', "application/json", 400, "bad_inputs"),
        (b'{"inputs": ["a", "b"]}', "application/json", 400, "bad_inputs"),
        (b'{"inputs": [NaN]}', "application/json", 400, "bad_json"),
        (b'{"x": 1}', "application/json", 400, "bad_json"),
        (b'{"inputs": [1.5], "dtype": "int8"}', "application/json", 422, "wrong_dtype"),
        (b'{"inputs": [1], "dtype": "float64"}', "application/json", 422, "wrong_dtype"),
        (b'{"inputs": [1], "dtype": ["int8"]}', "application/json", 422, "wrong_dtype"),
        (b'{"inputs": [1], "dtype": {"int8": 1}}', "application/json", 422, "wrong_dtype"),
        (b'{"inputs": [true, 1.5]}', "application/json", 400, "bad_inputs"),
        (b'{"inputs": [1e39]}', "application/json", 422, "not_finite"),
        (b'{"inputs": [[1, 2], [3, 4]]}', "application/json", 422, "wrong_shape"),
        (b"[" * 100_00 + b"]" * 100_00, "application/json", 400, "bad_json"),
        (b"\x93NUMPY garbage", "application/x-npy", 400, "bad_npy"),
        (_npy(np.zeros((3, 3), np.float32)), "application/x-npy", 422, "wrong_shape"),
        (_npy(np.zeros(INPUT_SHAPE, np.float64)), "application/x-npy", 422, "wrong_dtype"),
        (_npy(np.array([{"a": 1}], dtype=object)), "application/x-npy", 400, "bad_npy"),
        (b"hello", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(
    server: InferenceServer, body: bytes, ctype: str, status: int, code: str
) -> None:
    got, _, raw = _request(server, "POST", "/v1/infer", body, {"Content-Type": ctype})
    assert got == status
    assert json.loads(raw)["error"]["code"] == code
    _assert_still_serving(server)


def test_oversized_body_is_413_without_reading_it(server: InferenceServer) -> None:
    body = b"0" * (LIMIT + 1)
    status, headers, raw = _request(
        server, "POST", "/v1/infer", body, {"Content-Type": "application/json"}
    )
    assert status == 413 and json.loads(raw)["error"]["code"] == "too_large"
    assert headers.get("Connection") == "close"
    _assert_still_serving(server)


def test_missing_length_and_chunked_bodies_are_411(server: InferenceServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/infer")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"5\r\nhello\r\n0\r\n\r\n")
    assert conn.getresponse().status == 411
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("POST", "/v1/infer")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()
    _assert_still_serving(server)


def test_unknown_routes_and_methods(server: InferenceServer) -> None:
    assert _request(server, "GET", "/nope")[0] == 404
    assert _request(server, "POST", "/v1/health", b"", {"Content-Length": "0"})[0] == 404
    assert _request(server, "GET", "/v1/infer")[0] == 405
    assert _request(server, "DELETE", "/v1/infer")[0] == 405
    _assert_still_serving(server)


def test_keep_alive_connection_serves_many_requests(server: InferenceServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps({"inputs": _x().tolist()}).encode()
    for _ in range(5):
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    conn.close()


@pytest.mark.parametrize(
    "npy_array",
    [np.asfortranarray(_x()), _x().astype(">f4"), np.zeros(INPUT_SHAPE, ">i1")],
    ids=["fortran-order", "big-endian-float32", "big-endian-int8"],
)
def test_valid_npy_variants_are_served(server: InferenceServer, npy_array: np.ndarray) -> None:
    status, _, body = _request(
        server,
        "POST",
        "/v1/infer",
        _npy(npy_array),
        {"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    assert status == 200
    out = np.load(io.BytesIO(body), allow_pickle=False)
    reference = server._models.default.predict(
        np.ascontiguousarray(npy_array).astype(npy_array.dtype.newbyteorder("="))
    )
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"max_body_bytes": 0},
        {"request_timeout": 0},
        {"request_timeout": -1.0},
        {"request_timeout": float("inf")},
        {"request_timeout": float("nan")},
    ],
    ids=["no-connections", "no-body", "zero-timeout", "negative-timeout", "inf", "nan"],
)
def test_server_refuses_unusable_limits(limits: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        InferenceServer(Predictor(), **limits)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_server_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ConfigError):
        InferenceServer(Predictor(), host=host)


def test_hot_swap_under_http_load(server: InferenceServer, models: BuiltModels) -> None:
    """Three HTTP clients and the model swapped twice: zero failed requests."""
    predictor: Predictor = server._models.default  # the server's own predictor
    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()
    body = json.dumps({"inputs": _x().tolist()}).encode()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while not stop.is_set():
            conn.request(
                "POST", "/v1/infer", body=body, headers={"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            statuses.append(resp.status)
            if resp.status == 200:
                versions.add(doc["model_version"])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for path, version in ((models.int8_b, "b"), (models.int8_a, "a2")):
            n = len(statuses)
            while len(statuses) < n + 30:
                stop.wait(0.01)
            predictor.load(path, version)
        n = len(statuses)
        while len(statuses) < n + 30:
            stop.wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses and set(statuses) == {200}
    assert versions == {"a", "b", "a2"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_body_decoders_raise_only_http_errors(data: bytes) -> None:
    for decoder in (_array_from_json, _array_from_npy):
        try:
            arr = decoder(data)
        except _HttpError as exc:
            assert 400 <= exc.status < 500
        else:
            assert isinstance(arr, np.ndarray)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inputs=_JSON_VALUES,
    dtype=st.one_of(st.none(), st.sampled_from(["float32", "int8", "uint8"]), _JSON_VALUES),
    with_dtype=st.booleans(),
)
def test_fuzz_json_documents_of_any_shape_raise_only_4xx(
    inputs: object, dtype: object, with_dtype: bool
) -> None:
    """Any JSON value in any field: a numeric array or a 4xx, never another exception."""
    doc: dict[str, object] = {"inputs": inputs}
    if with_dtype:
        doc["dtype"] = dtype
    try:
        arr = _array_from_json(json.dumps(doc).encode())
    except _HttpError as exc:
        assert 400 <= exc.status < 500
    else:
        assert arr.dtype in (np.float32, np.int8, np.uint8) and arr.size > 0


# --- several models by name -------------------------------------------------------------


@pytest.fixture()
def two_model_server(models: BuiltModels) -> Iterator[tuple[InferenceServer, ModelSet]]:
    default, other = Predictor(), Predictor()
    default.load(models.int8_a, "a")
    other.load(models.float_other_shape, "mlp1")
    model_set = ModelSet(default, default_name="cnn")
    model_set.add("mlp", other)
    srv = InferenceServer(model_set, port=0, max_body_bytes=LIMIT)
    srv.start()
    yield srv, model_set
    srv.stop()


def _post_json(srv: InferenceServer, path: str, doc: object) -> tuple[int, dict[str, Any]]:
    status, _, body = _request(
        srv, "POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(body)


def test_named_routes_reach_their_model(
    two_model_server: tuple[InferenceServer, ModelSet],
) -> None:
    srv, model_set = two_model_server
    mlp_in = np.random.default_rng(1).random((1, 8), dtype=np.float32)
    status, doc = _post_json(srv, "/v1/models/mlp/predict", {"inputs": mlp_in.tolist()})
    assert status == 200 and doc["model_version"] == "mlp1" and doc["shape"] == [1, 3]
    other = model_set.get("mlp")
    assert other is not None
    np.testing.assert_allclose(doc["outputs"], other.predict(mlp_in).tolist())
    for path in ("/v1/models/cnn/predict", "/v1/models/default/predict", "/v1/infer"):
        status, doc = _post_json(srv, path, {"inputs": _x().tolist()})
        assert status == 200 and doc["model_version"] == "a", path


def test_unknown_model_is_404_and_the_server_keeps_serving(
    two_model_server: tuple[InferenceServer, ModelSet],
) -> None:
    srv, _ = two_model_server
    status, doc = _post_json(srv, "/v1/models/nope/predict", {"inputs": _x().tolist()})
    assert status == 404 and doc["error"]["code"] == "unknown_model"
    status, doc = _post_json(srv, "/v1/models/Bad%20Name/predict", {"inputs": []})
    assert status == 404 and doc["error"]["code"] == "not_found"
    status, _, _ = _request(srv, "GET", "/v1/models/cnn/predict")
    assert status == 405
    status, doc = _post_json(srv, "/v1/infer", {"inputs": _x().tolist()})
    assert status == 200


def test_models_listing(two_model_server: tuple[InferenceServer, ModelSet]) -> None:
    srv, _ = two_model_server
    status, _, body = _request(srv, "GET", "/v1/models")
    doc = json.loads(body)
    assert status == 200 and doc["default"] == "cnn"
    assert set(doc["models"]) == {"cnn", "mlp"}
    assert doc["models"]["mlp"]["version"] == "mlp1"


def test_model_set_refuses_bad_and_duplicate_names(models: BuiltModels) -> None:
    model_set = ModelSet(Predictor(), default_name="cnn")
    model_set.add("det", Predictor())
    for name in ("det", "cnn", "default", "Bad", "", "a" * 64, "x/y"):
        with pytest.raises(ConfigError):
            model_set.add(name, Predictor())
    with pytest.raises(ConfigError):
        model_set.set_default_name("det")
    assert [n for n, _ in model_set.items()] == ["cnn", "det"]
