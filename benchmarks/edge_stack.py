"""The timing harness and serving stack for ``benchmarks/edge_inference.py``.

Latency rows are interleaved (:func:`interleaved`); the stack is Predictor, Unix socket
and HTTP (:func:`stack_rows`, :func:`throughput`).

All rows serve one ``.tflite`` file with one interpreter thread, so each row's cost over
the raw invoke row of the same file is the stack's own.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from edge.inference import InferenceServer, Predictor, SocketClient, SocketServer

Call = Callable[[], object]


@dataclass(frozen=True)
class Servers:
    """Endpoints serving the model during a run."""

    predictor: Predictor
    http_port: int
    socket_path: Path


def http_client(
    port: int, body: bytes, ctype: str, opened: list[Callable[[], None]] | None = None
) -> Call:
    """One keep-alive connection posting ``body`` to ``/v1/infer`` (its close → ``opened``)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    if opened is not None:
        opened.append(conn.close)
    headers = {"Content-Type": ctype}

    def call() -> object:
        conn.request("POST", "/v1/infer", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return data

    return call


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@contextlib.contextmanager
def stack_rows(
    path: Path, x: np.ndarray
) -> Iterator[tuple[dict[str, tuple[Call, float]], Servers]]:
    """Rows through the stack (name → (call, share of calls)), servers up while inside."""
    predictor = Predictor(num_threads=1)
    predictor.load(path, "bench")
    info = predictor.active
    assert info is not None
    native = x
    if info.input_quant is not None:
        q = info.input_quant
        native = np.clip(np.rint(x / q.scale) + q.zero_point, -128, 127).astype(np.int8)
    server = InferenceServer(predictor, port=0)
    server.start()
    sock_dir = Path(tempfile.mkdtemp(prefix="fsb", dir="/tmp"))  # short: sun_path is 108 bytes
    sock = SocketServer(predictor, sock_dir / "infer.sock")
    sock.start()
    client = SocketClient(sock.path)
    json_body = json.dumps({"inputs": x.tolist()}).encode()
    rows: dict[str, tuple[Call, float]] = {
        f"Predictor ({info.input_dtype} in)": (lambda: predictor.predict(native), 1.0),
        "Predictor (float in)": (lambda: predictor.predict(x), 1.0),
        "Unix socket (float in)": (lambda: client.predict(x), 1.0),
        "HTTP npy (float in)": (http_client(server.port, _npy(x), "application/x-npy"), 0.3),
        "HTTP JSON (float in)": (http_client(server.port, json_body, "application/json"), 0.3),
    }
    try:
        yield rows, Servers(predictor, server.port, Path(sock.path))
    finally:
        client.close()
        sock.stop()
        server.stop()


def _rps(make: Callable[[], Call], clients: int, seconds: float) -> float:
    counts = [0] * clients
    stop = threading.Event()
    ready = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        call = make()
        ready.wait()
        try:
            while not stop.is_set():
                call()
                counts[i] += 1
        except BaseException as exc:  # surfaced below: a failed request voids the row
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a request failed during the throughput run: {errors[0]!r}")
    return sum(counts) / elapsed


def throughput(
    servers: Servers, x: np.ndarray, seconds: float, reps: int, progress: Progress
) -> dict[str, float]:
    """Requests/s with 1 and 4 clients (one connection each), interleaved, median of reps."""
    body = _npy(x)
    opened: list[Callable[[], None]] = []  # closed after each run: servers cap connections

    def socket_client() -> Call:
        client = SocketClient(servers.socket_path)
        opened.append(client.close)
        return lambda: client.predict(x)

    makers: dict[str, Callable[[], Call]] = {
        "Predictor": lambda: lambda: servers.predictor.predict(x),
        "Unix socket": socket_client,
        "HTTP npy": lambda: http_client(servers.http_port, body, "application/x-npy", opened),
    }
    runs = {f"{name} x{c}": (make, c) for c in (1, 4) for name, make in makers.items()}
    samples: dict[str, list[float]] = {k: [] for k in runs}
    task = progress.add_task("throughput", total=reps * len(runs))
    for _ in range(reps):
        for name, (make, clients) in runs.items():
            samples[name].append(_rps(make, clients, seconds))
            while opened:
                opened.pop()()
            progress.advance(task)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _time(call: Call, n: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    out = np.empty(n)
    for i in range(n):
        start = clock()
        call()
        out[i] = clock() - start
    return out / 1e3


def interleaved(
    rows: dict[str, tuple[Call, float]], n: int, reps: int, progress: Progress
) -> dict[str, dict[str, float]]:
    """Time every row once per repetition, rotating the order; medians of repetitions.

    Args:
        rows: name → (call, share of ``n`` to time: slow rows take fewer calls).
    """
    names = list(rows)
    per: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    task = progress.add_task("latency rows", total=reps * len(names))
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            call, share = rows[name]
            k = max(int(n * share), 20)
            us = _time(call, k, warmup=max(k // 10, 10))
            per[name].append((float(np.median(us)), float(np.percentile(us, 99))))
            progress.advance(task)
    out = {}
    for name, samples in per.items():
        medians = [m for m, _ in samples]
        out[name] = {
            "median_us": float(np.median(medians)),
            "p99_us": float(np.median([p for _, p in samples])),
            "rep_min_us": min(medians),
            "rep_max_us": max(medians),
            "calls_per_rep": max(int(n * rows[name][1]), 20),
        }
    return out
