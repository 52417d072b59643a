"""The loopback inference API under attack: malformed input, slow clients, connection floods.

Every test runs the real server (HTTP on a loopback port, or the Unix-socket endpoint) with
a real int8 model and talks to it over raw sockets or ``http.client``. A client mistake
must get a 4xx JSON error (an error frame on the socket) that does not quote the request
back (never a 500 or a traceback), and the server must still answer
a correct request afterwards. Timeouts are kept small and only their effect (a closed
connection) is asserted, never how long it took.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
from collections.abc import Iterator

import numpy as np
import pytest

from edge.inference import InferenceServer, Predictor, SocketClient, SocketServer
from edge.inference.frames import encode_request
from edge.inference.server import DEFAULT_MAX_CONNECTIONS, DEFAULT_REQUEST_TIMEOUT
from edge.inference.socket_client import decode_error
from tests.helpers.models import INPUT_SHAPE, BuiltModels

LIMIT = 64 * 1024
MARKER = "ZZECHOZZ"  # put in attack payloads; must never come back in a response


def _start(
    models: BuiltModels,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> InferenceServer:
    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = InferenceServer(
        predictor,
        port=0,
        max_body_bytes=LIMIT,
        max_connections=max_connections,
        request_timeout=request_timeout,
    )
    srv.start()
    return srv


@pytest.fixture(scope="module")
def server(models: BuiltModels) -> Iterator[InferenceServer]:
    """One server for every malformed-request test: it must survive all of them in a row."""
    srv = _start(models, request_timeout=5.0)
    yield srv
    srv.stop()


def _connect(srv: InferenceServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def _raw(srv: InferenceServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection; parse the one response (status line required).

    Callers send nothing the server will leave unread: closing a socket with unread data
    makes the kernel send a reset, which can swallow the response.
    """
    method = data.split(b" ", 1)[0].decode("latin-1")
    with _connect(srv) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def _post(body: bytes, ctype: str = "application/json", extra: str = "") -> bytes:
    return (
        f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def _x() -> list[object]:
    out: list[object] = np.random.default_rng(0).random(INPUT_SHAPE, dtype=np.float32).tolist()
    return out


def _with_first_leaf(value: object) -> list[object]:
    """A correctly shaped input whose first number is replaced by ``value``."""
    x = _x()
    leaf: list[object] = x
    while isinstance(leaf[0], list):
        leaf = leaf[0]
    leaf[0] = value
    return x


def _assert_client_error(
    got: tuple[int, dict[str, str], bytes], status: int, code: str | None = None
) -> None:
    got_status, headers, body = got
    assert got_status == status, body
    assert headers["content-type"] == "application/json"
    err = json.loads(body)["error"]
    assert set(err) == {"code", "message"} and err["message"]
    if code is not None:
        assert err["code"] == code
    assert MARKER.encode() not in body and b"Traceback" not in body


def _assert_still_serving(srv: InferenceServer) -> None:
    status, _, body = _raw(srv, _post(json.dumps({"inputs": _x()}).encode()))
    assert status == 200 and json.loads(body)["model_version"] == "a"


def _doc(doc: object) -> bytes:
    return _post(json.dumps(doc).encode())


# --- request body: wrong JSON types, ranges, depth, encoding -----------------------------


@pytest.mark.parametrize(
    ("doc", "status", "code"),
    [
        # The reported bug: an unhashable dtype made `dtype in {...}` raise -> 500.
        ({"inputs": _x(), "dtype": ["int8"]}, 422, "wrong_dtype"),
        ({"inputs": _x(), "dtype": {MARKER: 1}}, 422, "wrong_dtype"),
        ({"inputs": _x(), "dtype": 8}, 422, "wrong_dtype"),
        ({"inputs": _x(), "dtype": None}, 422, "wrong_dtype"),
        ({"inputs": _x(), "dtype": True}, 422, "wrong_dtype"),
        ({"inputs": _x(), "dtype": MARKER}, 422, "wrong_dtype"),
        ({"inputs": MARKER}, 400, "bad_inputs"),
        ({"inputs": {MARKER: [1.0]}}, 400, "bad_inputs"),
        ({"inputs": None}, 400, "bad_inputs"),
        ({"inputs": True}, 400, "bad_inputs"),
        ({"inputs": []}, 400, "bad_inputs"),
        ({"inputs": [[], []]}, 400, "bad_inputs"),
        # Booleans mixed with numbers used to be converted silently to 1.0/0.0.
        ({"inputs": _with_first_leaf(True)}, 400, "bad_inputs"),
        ({"inputs": _with_first_leaf(None)}, 400, "bad_inputs"),
        ({"inputs": _with_first_leaf(MARKER)}, 400, "bad_inputs"),
        ({"inputs": _with_first_leaf([0.5])}, 400, "bad_inputs"),
        ([{"inputs": _x()}], 400, "bad_json"),
        (MARKER, 400, "bad_json"),
        (3, 400, "bad_json"),
        (None, 400, "bad_json"),
    ],
    ids=[
        "dtype-list",
        "dtype-object",
        "dtype-number",
        "dtype-null",
        "dtype-bool",
        "dtype-unknown",
        "inputs-string",
        "inputs-object",
        "inputs-null",
        "inputs-bool",
        "inputs-empty",
        "inputs-empty-rows",
        "leaf-bool",
        "leaf-null",
        "leaf-string",
        "leaf-list",
        "doc-list",
        "doc-string",
        "doc-number",
        "doc-null",
    ],
)
def test_wrong_json_types_anywhere_are_4xx(
    server: InferenceServer, doc: object, status: int, code: str
) -> None:
    _assert_client_error(_raw(server, _doc(doc)), status, code)
    _assert_still_serving(server)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (json.dumps({"inputs": _with_first_leaf(1e39)}).encode(), 422, "not_finite"),
        (json.dumps({"inputs": _with_first_leaf(-1e39)}).encode(), 422, "not_finite"),
        (
            json.dumps({"inputs": _with_first_leaf(12345.5)}).replace("12345.5", "1e400").encode(),
            422,
            "not_finite",
        ),
        (b'{"inputs": [1e400]}', 422, "not_finite"),
        (json.dumps({"inputs": _with_first_leaf(10**30)}).encode(), 400, "bad_inputs"),
        (b'{"inputs": [-1, 18446744073709551615], "dtype": "int8"}', 422, "wrong_dtype"),
        (b'{"inputs": [-1, 2, 3], "dtype": "uint8"}', 422, "wrong_dtype"),
        (b'{"inputs": [-129], "dtype": "int8"}', 422, "wrong_dtype"),
        (b'{"inputs": [1' + b"0" * 5000 + b"]}", 400, "bad_json"),
        (b'{"inputs": [-Infinity]}', 400, "bad_json"),
    ],
    ids=[
        "over-float32",
        "under-float32",
        "1e400-leaf",
        "inf-literal",
        "bigint",
        "uint64-mix",
        "negative-uint8",
        "below-int8",
        "5000-digits",
        "-Infinity",
    ],
)
def test_out_of_range_and_negative_numbers_are_4xx(
    server: InferenceServer, body: bytes, status: int, code: str | None
) -> None:
    _assert_client_error(_raw(server, _post(body)), status, code)
    _assert_still_serving(server)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize(
    ("inputs", "status", "code"),
    [
        (json.dumps([_x()]).encode(), 422, "wrong_shape"),  # one dimension too many
        (json.dumps(np.zeros(28 * 28).tolist()).encode(), 422, "wrong_shape"),  # too flat
        (json.dumps([[[[0.0] * 28] * 27]]).encode(), 422, "wrong_shape"),  # one row short
        (json.dumps([[[[0.0] * 28] * 27 + [[0.0] * 27]]]).encode(), 400, "bad_inputs"),
        (_nested(70), 400, "bad_inputs"),  # more dimensions than numpy allows (64)
        (_nested(500), 400, "bad_inputs"),
        (_nested(30_000), 400, "bad_json"),  # deeper than the JSON parser recurses
    ],
    ids=["5d", "flat", "short-row", "ragged", "70-deep", "500-deep", "30k-deep"],
)
def test_nested_lists_of_wrong_depth_are_4xx(
    server: InferenceServer, inputs: bytes, status: int, code: str
) -> None:
    _assert_client_error(_raw(server, _post(b'{"inputs": ' + inputs + b"}")), status, code)
    _assert_still_serving(server)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": "\xff\xfe' + MARKER.encode() + b'"}',
        b"\xff\xfe\x00\x00garbage",
        b'{"inputs": [1], "dtype": "int8\xc3"}',
        '{"inputs": ["\u00e9\u4e2d\u0661"]}'.encode(),  # valid UTF-8, not numbers
        b"",
    ],
    ids=["invalid-utf8", "bom-garbage", "truncated-utf8", "non-ascii-strings", "empty"],
)
def test_non_ascii_and_non_utf8_bodies_are_400(server: InferenceServer, body: bytes) -> None:
    got = _raw(server, _post(body))
    _assert_client_error(got, 400)
    assert json.loads(got[2])["error"]["code"] in {"bad_json", "bad_inputs"}
    _assert_still_serving(server)


# --- headers: Content-Length, Content-Type, Expect ---------------------------------------


def _headers_only(length_lines: str, ctype: str = "application/json") -> bytes:
    # No body bytes: the server answers without reading one, and a close with unread
    # data would turn into a reset that can swallow the response.
    return (
        f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n{length_lines}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("lines", "status", "code"),
    [
        ("Content-Length: -1\r\n", 400, "bad_length"),
        ("Content-Length: +5\r\n", 400, "bad_length"),  # int() would take it
        ("Content-Length: 1_0\r\n", 400, "bad_length"),  # int() would read 10
        ("Content-Length: \u0661\u0662\r\n", 400, "bad_length"),  # non-ASCII digits
        (f"Content-Length: {MARKER}\r\n", 400, "bad_length"),
        ("Content-Length: 5, 5\r\n", 400, "bad_length"),
        ("Content-Length: 5\r\nContent-Length: 7\r\n", 400, "bad_length"),
        ("Content-Length: 99999999999999999999999999\r\n", 413, "too_large"),
        ("Content-Length: " + "9" * 5000 + "\r\n", 413, "too_large"),
        (f"Content-Length: {LIMIT + 1}\r\n", 413, "too_large"),
        ("", 411, "length_required"),
        ("Transfer-Encoding: chunked\r\n", 411, "length_required"),
    ],
    ids=[
        "negative",
        "plus",
        "underscore",
        "arabic-digits",
        "text",
        "list",
        "duplicate",
        "huge",
        "5000-digits",
        "over-limit",
        "missing",
        "chunked",
    ],
)
def test_bad_content_length_is_4xx_and_closes(
    server: InferenceServer, lines: str, status: int, code: str
) -> None:
    got = _raw(server, _headers_only(lines))
    _assert_client_error(got, status, code)
    assert got[1]["connection"] == "close"  # the body, if any, is never read
    _assert_still_serving(server)


@pytest.mark.parametrize(
    "ctype",
    ["", "text/plain", "application/jsonx", f"application/{MARKER}", "application/\u00e9\u00ff"],
    ids=["missing", "text", "near-miss", "marker", "non-ascii"],
)
def test_bad_content_type_is_415(server: InferenceServer, ctype: str) -> None:
    body = json.dumps({"inputs": _x()}).encode()
    head = f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    got = _raw(server, (head + "\r\n").encode("latin-1", "replace") + body)
    _assert_client_error(got, 415, "unsupported_media_type")
    _assert_still_serving(server)


def test_expect_100_continue_with_oversized_body_is_refused_before_the_body(
    server: InferenceServer,
) -> None:
    with _connect(server) as sock:
        sock.sendall(_headers_only(f"Content-Length: {LIMIT + 1}\r\nExpect: 100-continue\r\n"))
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    # A "100 Continue" would invite the client to send the body the server will not read.
    assert data.startswith(b"HTTP/1.1 413 ")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_large"
    _assert_still_serving(server)


# --- the HTTP layer itself: request line and headers ---------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (f"{MARKER} /v1/infer HTTP/1.1\r\n\r\n".encode(), 405, "method_not_allowed"),
        (b"HEAD /v1/infer HTTP/1.1\r\n\r\n", 405, "method_not_allowed"),
        (b"OPTIONS /v1/infer HTTP/1.1\r\n\r\n", 405, "method_not_allowed"),
        (f"GET /{MARKER} HTTP/1.1\r\n\r\n".encode(), 404, "not_found"),
        (f"POST /{MARKER} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".encode(), 404, "not_found"),
        # Refused at the request line: no headers follow, so nothing is left unread.
        (b"GET /v1/health HTTP/2.0\r\n", 400, "bad_version"),
        (f"GET /v1/health HTTP/1.{MARKER}\r\n".encode(), 400, "bad_request"),
        (f"GET /v1/health HTTP/1.1 {MARKER}\r\n".encode(), 400, "bad_request"),
        (f"{MARKER}\r\n".encode(), 400, "bad_request"),
        (b"GET /v1/health\r\n\r\n", 400, "bad_request"),  # HTTP/0.9
        # Exactly one byte over the parser's line limits, and nothing behind it.
        (b"GET /" + b"a" * 65_532, 414, "uri_too_long"),
        (b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * 65_530, 431, "headers_too_large"),
        (
            b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)),
            431,
            "headers_too_large",
        ),
    ],
    ids=[
        "unknown-method",
        "head",
        "options",
        "get-unknown-route",
        "post-unknown-route",
        "http2",
        "bad-version",
        "four-words",
        "one-word",
        "http09",
        "uri-too-long",
        "header-too-long",
        "too-many-headers",
    ],
)
def test_malformed_http_is_a_json_4xx(
    server: InferenceServer, request_bytes: bytes, status: int, code: str
) -> None:
    got = _raw(server, request_bytes)
    if request_bytes.startswith(b"HEAD "):
        assert got[0] == status and got[2] == b""  # HEAD: headers only
    else:
        _assert_client_error(got, status, code)
    _assert_still_serving(server)


def test_get_with_a_body_does_not_desync_keep_alive(server: InferenceServer) -> None:
    # The GET body is never read; if the connection stayed open, the body would be
    # parsed as a second request ("smuggled" past whatever is in front of the server).
    smuggled = b"DELETE /v1/infer HTTP/1.1\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(
            b"GET /v1/health HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(smuggled) + smuggled
        )
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        resp.read()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(4096) == b""  # no second response
    _assert_still_serving(server)


# --- slow and idle clients -----------------------------------------------------------------


def _closed_by_peer(sock: socket.socket) -> bool:
    """Wait (bounded) for the server to close ``sock``; True if it did."""
    try:
        while True:
            data = sock.recv(4096)  # the client socket's own 10 s timeout bounds this
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_keep_alive_connection_is_closed_after_the_timeout(models: BuiltModels) -> None:
    srv = _start(models, request_timeout=0.3)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/v1/health")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200 and resp.getheader("Connection") != "close"
        assert conn.sock is not None
        assert _closed_by_peer(conn.sock)  # then idle: the server hangs up
        conn.close()
        with _connect(srv) as sock:  # a connection that never sends anything
            assert _closed_by_peer(sock)
        _assert_still_serving(srv)
    finally:
        srv.stop()


def test_slow_loris_headers_are_dropped(models: BuiltModels) -> None:
    """One header byte at a time, each well inside the timeout: the request deadline hits."""
    srv = _start(models, request_timeout=0.5)
    try:
        stream = b"POST /v1/infer HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 10_000
        closed = False
        with _connect(srv) as sock:
            for byte in stream:  # bounded: 10k bytes at 10 ms is far past any deadline
                try:
                    sock.send(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    closed = _closed_by_peer(sock)
                    break
        assert closed, "the server kept a trickling connection open"
        _assert_still_serving(srv)
    finally:
        srv.stop()


def test_stalled_body_gets_408_and_is_dropped(models: BuiltModels) -> None:
    srv = _start(models, request_timeout=0.5)
    try:
        with _connect(srv) as sock:
            sock.sendall(_headers_only("Content-Length: 1000\r\n") + b'{"inputs": [')
            data = b""
            while chunk := sock.recv(4096):  # the client's 10 s timeout bounds this
                data += chunk
        assert data.startswith(b"HTTP/1.1 408 ")
        body = data.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["error"]["code"] == "timeout"
        _assert_still_serving(srv)
    finally:
        srv.stop()


# --- connection flood ------------------------------------------------------------------------


def test_connections_past_the_cap_get_503_and_the_others_keep_working(
    models: BuiltModels,
) -> None:
    cap, extra = 3, 4
    # Long timeout: the idle connections must hold their slots for the whole test.
    srv = _start(models, max_connections=cap, request_timeout=60.0)
    held: list[socket.socket] = []
    try:
        # The kernel hands connections to accept() in order, and slots are taken in the
        # accept loop, so these `cap` idle sockets hold every slot before the next ones.
        held = [_connect(srv) for _ in range(cap)]
        for _ in range(extra):
            with _connect(srv) as sock:
                resp = http.client.HTTPResponse(sock)
                resp.begin()
                assert resp.status == 503
                assert json.loads(resp.read())["error"]["code"] == "busy"
                assert sock.recv(1) == b""  # and closed
        assert srv.refused_connections == extra
        # A held connection is unaffected: it is served normally.
        held[0].sendall(_post(json.dumps({"inputs": _x()}).encode()))
        resp = http.client.HTTPResponse(held[0])
        resp.begin()
        assert resp.status == 200 and json.loads(resp.read())["model_version"] == "a"
        # Free one slot: a new client is served once the server has noticed the close.
        held.pop().close()
        for _ in range(200):  # bounded retry; only the eventual 200 is asserted
            status, _, _ = _raw(srv, _post(json.dumps({"inputs": _x()}).encode()))
            if status == 200:
                break
            assert status == 503
            select.select([], [], [], 0.05)
        assert status == 200
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def _fill(srv: InferenceServer, n: int) -> list[socket.socket]:
    """``n`` keep-alive connections that have each been served once (so each holds a slot).

    Retries (bounded) while slots of closed connections are still being released.
    """
    for _ in range(200):
        socks = [_connect(srv) for _ in range(n)]
        statuses = []
        for sock in socks:
            sock.sendall(b"GET /v1/health HTTP/1.1\r\n\r\n")
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            resp.read()
            statuses.append(resp.status)
        if statuses == [200] * n:
            return socks
        assert set(statuses) <= {200, 503}
        for sock in socks:
            sock.close()
        select.select([], [], [], 0.05)
    pytest.fail(f"never got {n} connections served at once: slots leaked")


def test_refused_connections_do_not_leak_slots(models: BuiltModels) -> None:
    cap = 2
    srv = _start(models, max_connections=cap, request_timeout=60.0)
    try:
        for _ in range(3):  # fill, overflow, release; three times over
            held = _fill(srv, cap)
            assert _raw(srv, b"GET /v1/health HTTP/1.1\r\n\r\n")[0] == 503
            for sock in held:
                sock.close()
        _fill(srv, cap)  # every slot came back, refused connections never took one
    finally:
        srv.stop()


# --- the Unix-socket endpoint: the same bounds, enforced by kernel timeouts -------------------


@contextlib.contextmanager
def _socket_server(models: BuiltModels, request_timeout: float) -> Iterator[SocketServer]:
    import shutil
    import tempfile
    from pathlib import Path

    d = Path(tempfile.mkdtemp(prefix="fla", dir="/tmp"))
    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = SocketServer(
        predictor, d / "s.sock", max_body_bytes=LIMIT, request_timeout=request_timeout
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)


def _unix(srv: SocketServer) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(srv.path))
    return s


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):  # the client's 10 s timeout bounds this
            data += chunk
    return data


def _error_code(frame: bytes) -> str:
    assert frame[:4] == b"FEO1" and frame[4] != 0
    return decode_error(frame[12:])[0]


def test_socket_idle_connection_gets_timeout_and_is_closed(models: BuiltModels) -> None:
    with _socket_server(models, 0.3) as srv:
        with _unix(srv) as sock:
            assert _error_code(_read_all(sock)) == "timeout"  # then EOF: closed
        with SocketClient(srv.path) as client:
            assert client.predict(np.zeros(INPUT_SHAPE, np.float32))[1] == "a"


def test_socket_slow_loris_is_dropped_by_the_request_deadline(models: BuiltModels) -> None:
    """Bytes trickled well inside the timeout each: the whole-request deadline still hits."""
    frame = encode_request(np.zeros(INPUT_SHAPE, np.float32))
    with _socket_server(models, 0.5) as srv:
        closed = False
        with _unix(srv) as sock:
            for byte in frame:  # 3 KB at 10 ms a byte is far past any deadline
                try:
                    sock.send(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    assert _error_code(_read_all(sock)) == "timeout"
                    closed = True
                    break
        assert closed, "the server kept a trickling connection open"
        with SocketClient(srv.path) as client:
            assert client.predict(np.zeros(INPUT_SHAPE, np.float32))[1] == "a"


def test_socket_stalled_body_gets_timeout(models: BuiltModels) -> None:
    frame = encode_request(np.zeros(INPUT_SHAPE, np.float32))
    with _socket_server(models, 0.5) as srv, _unix(srv) as sock:
        sock.sendall(frame[:100])  # header and part of the body, then nothing
        assert _error_code(_read_all(sock)) == "timeout"


def test_socket_oversized_body_is_refused_before_it_is_read(models: BuiltModels) -> None:
    header = b"FEI1" + bytes([1, 0, 1, 0]) + (LIMIT + 1).to_bytes(4, "big")
    with _socket_server(models, 5.0) as srv, _unix(srv) as sock:
        sock.sendall(header)  # no body follows: the answer cannot depend on reading it
        assert _error_code(_read_all(sock)) == "body_too_large"


def test_socket_errors_never_quote_the_request(models: BuiltModels) -> None:
    name = b"zzechozz"  # a valid model name nobody serves: the answer must not echo it
    arr = np.zeros(INPUT_SHAPE, np.float32)
    body = bytes([len(name)]) + name + b"".join(d.to_bytes(4, "big") for d in INPUT_SHAPE)
    body += arr.tobytes()
    frame = b"FEI1" + bytes([1, 0, len(INPUT_SHAPE), 1]) + len(body).to_bytes(4, "big") + body
    with _socket_server(models, 5.0) as srv, SocketClient(srv.path) as client:
        status, _, _, answer = client.send_raw(frame)
        assert status == 1 and decode_error(answer)[0] == "unknown_model"
        assert name not in answer
