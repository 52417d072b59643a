"""Unix-socket inference endpoint: frames, limits, keep-alive, concurrency and hot swap."""

from __future__ import annotations

import contextlib
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

from edge.inference import ModelSet, Predictor, SocketClient, SocketClientError, SocketServer
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
        (lambda f: f[:7] + b"\x02" + f[8:], "bad_flags"),  # bit 0 is the model-name flag
        (lambda f: f[:7] + b"\x80" + f[8:], "bad_flags"),
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


def test_the_path_appears_only_once_the_socket_listens(
    models: BuiltModels, short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that waits for the file and connects at once is never refused.

    The server binds and listens under a private name and renames the socket into place,
    so at ``listen()`` the public path does not exist yet; the private name is gone after.
    """
    path = short_dir / "s.sock"
    seen_at_listen: list[bool] = []

    class Recording(socket.socket):
        def listen(self, backlog: int = 0) -> None:
            seen_at_listen.append(path.exists())
            super().listen(backlog)

    monkeypatch.setattr("edge.inference.socket_server.socket.socket", Recording)
    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = SocketServer(predictor, path)
    srv.start()
    try:
        assert seen_at_listen == [False]
        assert sorted(p.name for p in short_dir.iterdir()) == ["s.sock"]
        with SocketClient(path) as client:
            out, version = client.predict(_x())
        assert version == "a"
        np.testing.assert_array_equal(out, predictor.predict(_x()))
    finally:
        srv.stop()
    assert not path.exists()


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
            SocketServer(Predictor(), short_dir / "x.sock", **kw)


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


# --- several models by name -------------------------------------------------------------


def test_named_frame_round_trips_and_plain_frames_are_unchanged() -> None:
    x = _x()
    named = encode_request(x, model="classifier")
    req = parse_request(named[:HEADER_SIZE], named[HEADER_SIZE:])
    assert req.model == "classifier"
    np.testing.assert_array_equal(req.array, x)
    assert named[7] == 1  # flags bit 0
    plain = encode_request(x)
    assert plain[7] == 0 and parse_request(plain[:HEADER_SIZE], plain[HEADER_SIZE:]).model is None
    # The name only adds its length byte and bytes to the body.
    assert len(named) == len(plain) + 1 + len("classifier")


@pytest.mark.parametrize(
    ("name", "code"),
    [(b"", "bad_name"), (b"Upper", "bad_name"), (b"-lead", "bad_name"), (b"\xff\xfe", "bad_name")],
)
def test_bad_model_names_are_refused(name: bytes, code: str) -> None:
    x = np.zeros((2,), np.float32)
    body = bytes([len(name)]) + name + struct.pack(">I", 2) + x.tobytes()
    header = b"FEI1" + bytes([1, 0, 1, 1]) + struct.pack(">I", len(body))
    with pytest.raises(FrameError) as info:
        parse_request(header, body)
    assert info.value.code == code and not info.value.fatal


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.binary(max_size=70),
    declared=st.integers(0, 255),
    ndim=st.integers(0, 9),
    dims=st.lists(st.integers(0, 4), max_size=9),
    extra=st.binary(max_size=40),
)
def test_parse_named_frames_never_crash(
    name: bytes, declared: int, ndim: int, dims: list[int], extra: bytes
) -> None:
    body = bytes([declared]) + name + b"".join(struct.pack(">I", d) for d in dims) + extra
    header = b"FEI1" + bytes([1, 0, ndim, 1]) + struct.pack(">I", len(body))
    try:
        req = parse_request(header, body)
    except FrameError as exc:
        assert exc.code and exc.code.isascii()
    else:
        assert req.model is not None and req.array.ndim == ndim


@pytest.fixture()
def two_models(models: BuiltModels, short_dir: Path) -> Iterator[tuple[SocketServer, ModelSet]]:
    """The default model ("cnn", int8 a) and a second one ("other", float a)."""
    default, other = Predictor(), Predictor()
    default.load(models.int8_a, "a")
    other.load(models.float_a, "f1")
    model_set = ModelSet(default, default_name="cnn")
    model_set.add("other", other)
    srv = _start(model_set, short_dir / "m.sock")  # type: ignore[arg-type]
    yield srv, model_set
    srv.stop()


def test_requests_reach_the_model_they_name(two_models: tuple[SocketServer, ModelSet]) -> None:
    srv, model_set = two_models
    x = _x()
    with SocketClient(srv.path) as client:
        for name, version in ((None, "a"), ("cnn", "a"), ("default", "a"), ("other", "f1")):
            out, got = client.predict(x, model=name)
            assert got == version
            predictor = model_set.get(name)
            assert predictor is not None
            np.testing.assert_array_equal(out, predictor.predict(x))


def test_unknown_model_is_a_client_error_and_keeps_the_connection(
    two_models: tuple[SocketServer, ModelSet],
) -> None:
    srv, _ = two_models
    with SocketClient(srv.path) as client:
        with pytest.raises(SocketClientError) as info:
            client.predict(_x(), model="nope")
        assert info.value.status == STATUS_CLIENT_ERROR and info.value.code == "unknown_model"
        sock = client._sock
        assert client.predict(_x(), model="other")[1] == "f1"
        assert client._sock is sock  # the same connection served the next request


def test_two_models_concurrent_clients_with_a_hot_swap_of_one(
    models: BuiltModels, two_models: tuple[SocketServer, ModelSet]
) -> None:
    """Clients on both models while the default one is swapped: no failed request."""
    srv, model_set = two_models
    x = _x()
    other = model_set.get("other")
    assert other is not None
    expected_other = other.predict(x)
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: dict[str, set[str]] = {"cnn": set(), "other": set()}
    counts = {"cnn": 0, "other": 0}
    lock = threading.Lock()

    def worker(name: str) -> None:
        try:
            with SocketClient(srv.path, timeout=30) as client:
                while not stop.is_set():
                    out, version = client.predict(x, model=name)
                    if name == "other":
                        np.testing.assert_array_equal(out, expected_other)
                    with lock:
                        seen[name].add(version)
                        counts[name] += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("cnn", "cnn", "other", "other")]
    for t in threads:
        t.start()
    default = model_set.default

    def served_more(n: int) -> None:
        """Let the clients make ``n`` more requests on each model (bounded wait)."""
        with lock:
            target = {k: v + n for k, v in counts.items()}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not failures:
            with lock:
                if all(counts[k] >= target[k] for k in counts):
                    return
            time.sleep(0.005)

    served_more(5)
    for _ in range(3):  # each version is served a while, under load, on both models
        default.load(models.int8_b, "b")
        served_more(5)
        default.load(models.int8_a, "a")
        served_more(5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert seen["cnn"] == {"a", "b"} and seen["other"] == {"f1"}
    assert counts["cnn"] > 0 and counts["other"] > 0


def test_a_split_frame_is_reassembled(int8_server: tuple[SocketServer, Predictor]) -> None:
    """Header and body in pieces (the slow path of the reader) still give the answer."""
    srv, predictor = int8_server
    x = _x()
    frame = encode_request(x)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(srv.path))
    try:
        for piece in (frame[:5], frame[5:12], frame[12:40], frame[40:]):
            s.sendall(piece)
            time.sleep(0.02)
        from edge.inference.socket_client import decode_ok, read_response

        status, dtype_code, ndim, body = read_response(s)
        assert status == STATUS_OK
        out, version = decode_ok(dtype_code, ndim, body)
        assert version == "a"
        np.testing.assert_array_equal(out, predictor.predict(x))
    finally:
        s.close()


def test_pipelined_frames_are_answered_in_order(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    """Two requests in one write: the bytes past the first frame are kept for the second."""
    from edge.inference.socket_client import decode_ok, read_response

    srv, predictor = int8_server
    xs = [_x(1), _x(2)]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(srv.path))
    try:
        s.sendall(encode_request(xs[0]) + encode_request(xs[1]))
        for x in xs:
            status, dtype_code, ndim, body = read_response(s)
            assert status == STATUS_OK
            np.testing.assert_array_equal(
                decode_ok(dtype_code, ndim, body)[0], predictor.predict(x)
            )
    finally:
        s.close()


def test_a_request_larger_than_the_read_buffer_is_read_whole(
    int8_server: tuple[SocketServer, Predictor],
) -> None:
    """A 40 KB body (over the 16 KiB initial buffer, under the limit) keeps the stream in sync."""
    srv, _ = int8_server
    with SocketClient(srv.path) as client:
        with pytest.raises(SocketClientError) as info:
            client.predict(np.zeros((10_000,), np.float32))
        assert info.value.code == "wrong_shape"  # parsed whole: the model's check refused it
        assert client.predict(_x())[1] == "a"  # same connection, next frame


def test_the_agent_serves_extra_models_by_name(
    models: BuiltModels, short_dir: Path, tmp_path: Path
) -> None:
    """``--model det=PATH``: the agent serves it by name beside its default model."""
    from edge.agent import Agent, AgentConfig
    from edge.cli import parse_models
    from shared.profiles import profile_from_toml

    default, extra = parse_models([str(models.int8_a), f"mlp={models.float_other_shape}"])
    assert default == models.int8_a and extra == (("mlp", models.float_other_shape),)
    profile = profile_from_toml(Path("firmware_configs/smart_home_hub.toml").read_text())
    path = short_dir / "agent.sock"
    config = AgentConfig(
        device_id="hub-9",
        broker_url="mqtt://127.0.0.1:1",
        profile=profile,
        state_dir=tmp_path / "state",
        model_path=default,
        model_version="7",
        extra_models=extra,
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
        with SocketClient(path) as client:
            assert client.predict(np.zeros(INPUT_SHAPE, np.float32))[1] == "7"
            out, version = client.predict(np.zeros((1, 8), np.float32), model="mlp")
            assert version == models.float_other_shape.stem and out.shape == (1, 3)
            with pytest.raises(SocketClientError) as info:
                client.predict(np.zeros((1, 8), np.float32), model="det")
            assert info.value.code == "unknown_model"
    finally:
        agent.request_stop()
        thread.join(20)
    assert not thread.is_alive()


def test_parse_models_refuses_two_defaults_and_repeated_names() -> None:
    from edge.cli import parse_models

    with pytest.raises(ConfigError):
        parse_models(["a.tflite", "b.tflite"])
    with pytest.raises(ConfigError):
        parse_models(["x=a.tflite", "x=b.tflite"])
    # Not a valid name before "=": the whole value is the default model's path.
    assert parse_models(["./dir=1/m.tflite"]) == (Path("./dir=1/m.tflite"), ())
    assert parse_models(None) == (None, ())


def test_live_server_answers_any_bytes_with_error_frames_or_a_close(
    models: BuiltModels, short_dir: Path
) -> None:
    """Hypothesis against the running server (its buffered reader, not only the parser):
    whatever arrives, the answer is error frames and/or a close, and it keeps serving."""
    from edge.inference.socket_client import read_response

    predictor = Predictor()
    predictor.load(models.int8_a, "a")
    srv = _start(predictor, short_dir / "h.sock", request_timeout=2.0)
    named = encode_request(_x(), model="cnn")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        prefix=st.sampled_from([b"", named[:12], named[:20], b"FEI1\x01\x00\x04\x01"]),
        data=st.binary(max_size=300),
    )
    def check(prefix: bytes, data: bytes) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(srv.path))
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(prefix + data)
                s.shutdown(socket.SHUT_WR)  # EOF: a partial frame cannot wait for more
            while True:
                try:
                    status, _, _, body = read_response(s)
                except (ConnectionError, OSError):
                    break  # closed by the server: allowed
                assert status in (STATUS_CLIENT_ERROR, STATUS_SERVER_ERROR)
                assert decode_error(body)[0]
        finally:
            s.close()

    try:
        check()
        with SocketClient(srv.path) as client:
            assert client.predict(_x())[1] == "a"
    finally:
        srv.stop()
