"""Unix-socket inference endpoint: frames, limits, keep-alive, concurrency and hot swap."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.inference import Predictor, SocketClient, SocketClientError, SocketServer
from edge.inference.socket_client import decode_error
from edge.inference.socket_server import (
    HEADER_SIZE,
    STATUS_CLIENT_ERROR,
    STATUS_OK,
    STATUS_SERVER_ERROR,
    FrameError,
    Request,
    encode_request,
    parse_request,
)
from shared.errors import ConfigError
from tests.helpers.models import INPUT_SHAPE, BuiltModels

LIMIT = 64 * 1024


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~108 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="fsk", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _start(predictor: Predictor, path: Path, **kw: object) -> SocketServer:
    srv = SocketServer(predictor, path, max_body_bytes=LIMIT, **kw)  # type: ignore[arg-type]
    srv.start()
    return srv


@pytest.fixture()
def int8_server(models: BuiltModels, short_dir: Path) -> Iterator[tuple[SocketServer, Predictor]]:
    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = _start(predictor, short_dir / "run" / "infer.sock")
    yield srv, predictor
    srv.stop()


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(INPUT_SHAPE, dtype=np.float32)


def _raw(path: Path, data: bytes) -> tuple[int, str]:
    """Send raw bytes on a fresh connection; (status, code) of the answer."""
    with SocketClient(path, timeout=10) as client:
        status, _, _, body = client.send_raw(data)
    return status, decode_error(body)[0] if status != STATUS_OK else ""


# --- parser (pure) ---------------------------------------------------------------------


def test_parse_request_round_trips_an_encoded_frame() -> None:
    x = _x()
    frame = encode_request(x)
    req = parse_request(frame[:HEADER_SIZE], frame[HEADER_SIZE:])
    assert isinstance(req, Request)
    np.testing.assert_array_equal(req.array, x)
    assert req.array.dtype == np.float32


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda f: b"XXXX" + f[4:], "bad_magic"),
        (lambda f: f[:4] + b"\x02" + f[5:], "bad_version"),
        (lambda f: f[:5] + b"\x07" + f[6:], "wrong_dtype"),
        (lambda f: f[:6] + b"\x00" + f[7:], "bad_ndim"),
        (lambda f: f[:6] + b"\x09" + f[7:], "bad_ndim"),
        (lambda f: f[:7] + b"\x01" + f[8:], "bad_flags"),
        (lambda f: f[:-1], "bad_length"),
    ],
)
def test_parse_request_rejects_with_a_code(mutate, code: str) -> None:  # type: ignore[no-untyped-def]
    frame = mutate(encode_request(_x()))
    with pytest.raises(FrameError) as info:
        parse_request(frame[:HEADER_SIZE], frame[HEADER_SIZE:])
    assert info.value.code == code


def test_parse_request_rejects_length_not_matching_dims() -> None:
    frame = bytearray(encode_request(np.zeros((2, 3), np.float32)))
    frame[HEADER_SIZE + 4 : HEADER_SIZE + 8] = struct.pack(">I", 4)  # dims say 2x4
    with pytest.raises(FrameError) as info:
        parse_request(bytes(frame[:HEADER_SIZE]), bytes(frame[HEADER_SIZE:]))
    assert info.value.code == "bad_length"
    assert not info.value.fatal


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.binary(max_size=20), body=st.binary(max_size=200))
def test_parse_request_any_bytes_gives_request_or_frame_error(header: bytes, body: bytes) -> None:
    try:
        req = parse_request(header, body)
    except FrameError as exc:
        assert exc.code and exc.code.isascii()
    else:
        assert isinstance(req, Request)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from([0, 1, 2]),
    ndim=st.integers(0, 10),
    flags=st.integers(0, 1),
    dims=st.lists(st.integers(0, 6), max_size=10),
    extra=st.binary(max_size=64),
)
def test_parse_request_near_valid_frames(
    dtype: int, ndim: int, flags: int, dims: list[int], extra: bytes
) -> None:
    body = b"".join(struct.pack(">I", d) for d in dims) + extra
    header = b"FEI1" + bytes([1, dtype, ndim, flags]) + struct.pack(">I", len(body))
    try:
        req = parse_request(header, body)
    except FrameError as exc:
        assert exc.code
    else:
        assert req.array.ndim == ndim


# --- live server -------------------------------------------------------------------------


def test_round_trip_float32_equals_predict(models: BuiltModels, short_dir: Path) -> None:
    predictor = Predictor()
    predictor.load(models.float_a, "f1")
    srv = _start(predictor, short_dir / "s.sock")
    try:
        with SocketClient(srv.path) as client:
            for seed in range(3):  # keep-alive: several requests on one connection
                x = _x(seed)
                out, version = client.predict(x)
                assert version == "f1"
                np.testing.assert_array_equal(out, predictor.predict(x))
    finally:
        srv.stop()
    assert not srv.path.exists()


def test_round_trip_int8_input_equals_predict(int8_server: tuple[SocketServer, Predictor]) -> None:
    srv, predictor = int8_server
    q = np.random.default_rng(1).integers(-128, 128, INPUT_SHAPE, dtype=np.int8)
    x = _x()
    with SocketClient(srv.path) as client:
        out_q, version = client.predict(q)
        out_f, _ = client.predict(x)
    assert version == "a"
    np.testing.assert_array_equal(out_q, predictor.predict(q))
    np.testing.assert_array_equal(out_f, predictor.predict(x))


def test_wrong_shape_and_dtype_are_client_errors_and_keep_the_connection(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    srv, _ = int8_server
    with SocketClient(srv.path) as client:
        with pytest.raises(SocketClientError) as info:
            client.predict(np.zeros((3, 3), np.float32))
        assert (info.value.status, info.value.code) == (STATUS_CLIENT_ERROR, "wrong_shape")
        with pytest.raises(SocketClientError) as info:
            client.predict(np.zeros(INPUT_SHAPE, np.uint8))
        assert info.value.code == "wrong_dtype"
        out, _ = client.predict(_x())
        assert out.shape == (1, 10)


def test_garbage_frames_get_error_frames_then_a_good_request_works(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    srv, _ = int8_server
    good = encode_request(_x())
    garbage = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00" * HEADER_SIZE,
        b"FEI1\x01\x00\x04\x00" + struct.pack(">I", LIMIT + 1),  # too large: body unread
        b"FEI1\x01\x05\x04\x00" + struct.pack(">I", 16),
        b"FEI1\x01\x00\x00\x00" + struct.pack(">I", 0),
        good[:8] + struct.pack(">I", 16) + good[12:28],  # dims only, no tensor
    ]
    codes = [_raw(srv.path, g) for g in garbage]
    assert all(status == STATUS_CLIENT_ERROR for status, _ in codes)
    assert [c for _, c in codes] == [
        "bad_magic",
        "bad_magic",
        "body_too_large",
        "wrong_dtype",
        "bad_ndim",
        "bad_length",
    ]
    with SocketClient(srv.path) as client:
        out, version = client.predict(_x())
    assert version == "a" and out.shape == (1, 10)


def test_truncated_frame_then_close_does_not_hurt_the_server(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    srv, _ = int8_server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(srv.path))
    s.sendall(encode_request(_x())[:30])
    s.close()
    with SocketClient(srv.path) as client:
        assert client.predict(_x())[1] == "a"


def test_eight_concurrent_clients_fifty_requests_each(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    srv, predictor = int8_server
    x = _x()
    expected = predictor.predict(x)
    failures: list[BaseException] = []
    ok = [0] * 8

    def worker(i: int) -> None:
        try:
            with SocketClient(srv.path, timeout=30) as client:
                for _ in range(50):
                    out, _ = client.predict(x)
                    np.testing.assert_array_equal(out, expected)
                    ok[i] += 1
        except BaseException as exc:  # collected, asserted below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert ok == [50] * 8


def test_hot_swap_while_clients_hammer(
    models: BuiltModels, int8_server: tuple[SocketServer, Predictor]
) -> None:
    srv, predictor = int8_server
    x = _x()
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: set[str] = set()
    lock = threading.Lock()

    def worker() -> None:
        try:
            with SocketClient(srv.path, timeout=30) as client:
                while not stop.is_set():
                    _, version = client.predict(x)
                    with lock:
                        seen.add(version)
                # One more request after the swap is done: it must be on "b".
                _, version = client.predict(x)
                with lock:
                    seen.add(version)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):
        predictor.load(models.int8_b, "b")
        predictor.load(models.int8_a, "a")
    predictor.load(models.int8_b, "b")
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert {"a", "b"} <= seen
    with SocketClient(srv.path) as client:
        assert client.predict(x)[1] == "b"


def test_connection_cap_answers_busy(models: BuiltModels, short_dir: Path) -> None:
    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = _start(predictor, short_dir / "cap.sock", max_connections=2)
    holders = [SocketClient(srv.path) for _ in range(2)]
    try:
        for h in holders:  # a completed request proves the slot is taken
            assert h.predict(_x())[1] == "a"
        with SocketClient(srv.path) as extra, pytest.raises(SocketClientError) as info:
            extra.predict(_x())
        assert (info.value.status, info.value.code) == (STATUS_SERVER_ERROR, "busy")
        assert srv.refused_connections >= 1
        holders[0].close()
        for _ in range(100):  # the freed slot comes back once its thread notices the close
            try:
                with SocketClient(srv.path) as again:
                    assert again.predict(_x())[1] == "a"
                break
            except SocketClientError as exc:
                assert exc.code == "busy"
                threading.Event().wait(0.05)
        else:
            pytest.fail("slot never freed")
    finally:
        for h in holders:
            h.close()
        srv.stop()


def test_socket_file_is_0600_in_a_0700_directory(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    srv, _ = int8_server
    st_sock = os.stat(srv.path)
    assert stat.S_ISSOCK(st_sock.st_mode)
    assert stat.S_IMODE(st_sock.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(srv.path.parent).st_mode) == 0o700


def test_live_socket_is_refused_and_stale_one_replaced(
    models: BuiltModels, int8_server: tuple[SocketServer, Predictor], short_dir: Path
) -> None:
    srv, predictor = int8_server
    with pytest.raises(ConfigError, match="in use"):
        SocketServer(predictor, srv.path).start()
    # A stale socket: bound, never listened on, and its owner gone.
    stale_path = short_dir / "run" / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale_path))
    s.close()
    assert stale_path.exists()
    other = _start(predictor, stale_path)
    try:
        with SocketClient(stale_path) as client:
            assert client.predict(_x())[1] == "a"
    finally:
        other.stop()


def test_a_regular_file_at_the_path_is_refused(models: BuiltModels, short_dir: Path) -> None:
    path = short_dir / "file.sock"
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        SocketServer(Predictor(), path).start()
    assert path.read_text() == "not a socket"


def test_no_model_is_a_server_error(short_dir: Path) -> None:
    srv = _start(Predictor(), short_dir / "empty.sock")
    try:
        with SocketClient(srv.path) as client, pytest.raises(SocketClientError) as info:
            client.predict(_x())
        assert (info.value.status, info.value.code) == (STATUS_SERVER_ERROR, "no_model")
    finally:
        srv.stop()


def test_limits_are_validated(short_dir: Path) -> None:
    for kw in ({"max_body_bytes": 0}, {"max_connections": 0}, {"request_timeout": 0.0}):
        with pytest.raises(ConfigError):
            SocketServer(Predictor(), short_dir / "x.sock", **kw)  # type: ignore[arg-type]


def test_the_agent_serves_its_socket_and_removes_it_at_a_clean_stop(
    models: BuiltModels, short_dir: Path, tmp_path: Path
) -> None:
    """``AgentConfig.socket_path`` (``fedge edge run --socket``): served while the agent
    runs — with no broker reachable — and gone after a clean stop."""
    from edge.agent import Agent, AgentConfig
    from shared.profiles import profile_from_toml

    profile = profile_from_toml(Path("firmware_configs/smart_home_hub.toml").read_text())
    path = short_dir / "agent.sock"
    config = AgentConfig(
        device_id="hub-9",
        broker_url="mqtt://127.0.0.1:1",  # nothing listens: inference must not depend on it
        profile=profile,
        state_dir=tmp_path / "state",
        model_path=models.int8_a,
        model_version="7",
        socket_path=path,
        reconnect_max_s=1.0,
    )
    agent = Agent(config)
    thread = threading.Thread(target=agent.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert time.monotonic() < deadline, "the socket never appeared"
            time.sleep(0.05)
        client = SocketClient(path)
        out, version = client.predict(np.zeros(INPUT_SHAPE, np.float32))
        assert version == "7" and out.ndim >= 1
        client.close()
    finally:
        agent.request_stop()
        thread.join(20)
    assert not thread.is_alive()
    assert not path.exists()
