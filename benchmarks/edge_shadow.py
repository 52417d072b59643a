"""Edge socket endpoint and shadow evaluation: what a local caller pays.

Three measurements on one model (default: the test CNN's int8 file, one thread), each
against its baseline in the same run, interleaved so machine noise hits both sides:

* ``latency``: one request at a time — raw interpreter invoke, ``Predictor.predict``, the
  Unix socket with an in-process :class:`SocketClient` and with a client in another
  process (as a C application on the device would call it), and optionally the socket
  server of an older git revision (``--baseline-rev``) beside the current one;
* ``clients``: requests/s with N client *processes*, one keep-alive connection each
  (:func:`bench_socket_clients`), plus the same with client threads in the server's
  process;
* ``shadow``: the caller's p50/p99 over the socket with shadow evaluation on vs off, on
  the same requests (:func:`bench_shadow`), with the device's default sampling (0.25 of
  requests, at most 100 samples/s) and as a stress case without the rate cap (every
  fourth request of ~25k/s), with the candidate's evaluated sample count.

Prints a table and writes JSON (``benchmarks/results/edge_shadow.json``), with the load
average before and after. ``bench_shadow`` and ``bench_socket_clients`` are also imported
by ``benchmarks/edge_inference.py``.

Usage: ``python benchmarks/edge_shadow.py [--model PATH] [--quick] [--json]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.inference import Predictor, ShadowConfig, SocketClient, SocketServer  # noqa: E402
from edge.inference.frames import encode_request, encode_response  # noqa: E402
from edge.inference.runtime import make_interpreter  # noqa: E402
from shared.precision import Precision  # noqa: E402
from shared.protocol.messages import ServingInfo  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "edge_shadow.json"

# A client process: a pre-encoded frame on one keep-alive connection, no numpy, no fedge
# imports (the cost a C caller would add is close to nothing). Commands on stdin:
# "n COUNT" runs COUNT requests, "t SECONDS" runs for that long; each answers one JSON line
# with the count and latency percentiles (microseconds).
_CHILD = r"""
import json, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
frame = open(sys.argv[2], "rb").read()
buf = bytearray(1 << 16); view = memoryview(buf)
def once():
    sock.sendall(frame)
    got = 0
    while got < 12:
        k = sock.recv_into(view[got:], 12 - got)
        if not k: raise SystemExit("server closed")
        got += k
    if buf[4] != 0: raise SystemExit("error frame")
    n = 12 + int.from_bytes(buf[8:12], "big")
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k: raise SystemExit("server closed")
        got += k
for _ in range(200): once()
print("ready", flush=True)
for line in sys.stdin:
    cmd, arg = line.split()
    lat = []
    clock = time.perf_counter
    if cmd == "n":
        for _ in range(int(arg)):
            a = clock(); once(); lat.append(clock() - a)
    else:
        end = clock() + float(arg)
        while True:
            a = clock(); once(); b = clock(); lat.append(b - a)
            if b >= end: break
    lat.sort()
    n = len(lat)
    print(json.dumps({"n": n, "seconds": sum(lat), "p50_us": lat[n // 2] * 1e6,
                      "p99_us": lat[min(n - 1, int(n * 0.99))] * 1e6}), flush=True)
"""


def _input_of(model_path: Path, seed: int = 0) -> np.ndarray:
    """A float32 request of the model's input shape (callers send real values)."""
    interpreter = make_interpreter(Path(model_path).read_bytes(), num_threads=1)
    shape = tuple(int(d) for d in interpreter.get_input_details()[0]["shape"])
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@contextlib.contextmanager
def _served(
    model_path: Path, server_cls: type[Any] = SocketServer
) -> Iterator[tuple[Predictor, Any, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="fsb", dir="/tmp"))  # short: sun_path is 108 bytes
    predictor = Predictor(num_threads=1)
    predictor.load(model_path, "bench")
    server = server_cls(predictor, tmp / "s.sock")
    server.start()
    try:
        yield predictor, server, tmp
    finally:
        predictor.stop_shadow()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


class _Child:
    """One client process on the socket (see ``_CHILD``)."""

    def __init__(self, sock_path: Path, frame_path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(sock_path), str(frame_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmark client did not start")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, float]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark client died")
        out: dict[str, float] = json.loads(line)
        return out

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _time_calls(fn: Callable[[], object], n: int) -> list[float]:
    for _ in range(min(200, n)):
        fn()
    out = []
    clock = time.perf_counter
    for _ in range(n):
        a = clock()
        fn()
        out.append(clock() - a)
    return out


def _p(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1e6, q))


def _info(path: Path) -> ServingInfo:
    import hashlib

    return ServingInfo(
        model_id="bench",
        version=2,
        artifact_id="0" * 32,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        precision=Precision.INT8,
        slot="b",
    )


def bench_shadow(
    model_path: Path,
    *,
    candidate: Path | None = None,
    requests: int = 3000,
    reps: int = 6,
    config: ShadowConfig | None = None,
) -> dict[str, Any]:
    """The caller's socket latency with shadow evaluation on vs off, interleaved.

    A client process sends the same request ``requests`` times per repetition; shadow
    is switched on (``candidate``, default the model itself) and off between
    repetitions, alternating which goes first.

    Returns:
        ``p50_us``/``p99_us`` per mode (median over repetitions), ``p50_ratio``
        (on / off), and what the shadow did (``samples``, ``errors``, ``dropped``).
    """
    config = config or ShadowConfig()  # what a device runs
    candidate = candidate or model_path
    x = _input_of(model_path)
    per: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    evaluated = {"samples": 0, "errors": 0, "timeouts": 0, "dropped": 0}
    with _served(model_path) as (predictor, server, tmp):
        frame_path = tmp / "frame"
        frame_path.write_bytes(encode_request(x))
        child = _Child(server.path, frame_path)
        try:
            for rep in range(reps):
                for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                    if mode == "on":
                        predictor.start_shadow(candidate, _info(candidate), config=config)
                    child.send(f"n {requests}")
                    per[mode].append(child.result())
                    shadow = predictor.stop_shadow()
                    if shadow is not None:
                        time.sleep(0.05)  # let the worker finish its queue before counting
                        report = shadow.report(serving_version=1)
                        for key in evaluated:
                            evaluated[key] += int(getattr(report, key))
        finally:
            child.close()
    out: dict[str, Any] = {
        "requests_per_rep": requests,
        "reps": reps,
        "sample_rate": config.sample_rate,
        "max_samples_per_s": config.max_samples_per_s,
    }
    for mode, rows in per.items():
        out[mode] = {
            "p50_us": statistics.median(r["p50_us"] for r in rows),
            "p99_us": statistics.median(r["p99_us"] for r in rows),
            "rep_p50_us": [round(r["p50_us"], 2) for r in rows],
        }
    out["p50_ratio"] = out["on"]["p50_us"] / out["off"]["p50_us"]
    out["p99_ratio"] = out["on"]["p99_us"] / out["off"]["p99_us"]
    out["shadow"] = evaluated
    return out


def bench_socket_clients(
    model_path: Path, clients: int, *, seconds: float = 2.0, reps: int = 3
) -> dict[str, Any]:
    """Requests/s through the socket with ``clients`` client processes (one connection each).

    Returns:
        ``rps`` (median over repetitions), per-request ``p50_us``/``p99_us`` (median over
        repetitions of the clients' pooled percentiles, approximated by their median), and
        the same throughput with client threads in this process (``rps_threads``).
    """
    x = _input_of(model_path)
    rps: list[float] = []
    p50: list[float] = []
    p99: list[float] = []
    rps_threads: list[float] = []
    with _served(model_path) as (_predictor, server, tmp):
        frame_path = tmp / "frame"
        frame_path.write_bytes(encode_request(x))
        children = [_Child(server.path, frame_path) for _ in range(clients)]
        try:
            for _ in range(reps):
                for child in children:
                    child.send(f"t {seconds}")
                results = [child.result() for child in children]
                rps.append(sum(r["n"] for r in results) / seconds)
                p50.append(statistics.median(r["p50_us"] for r in results))
                p99.append(statistics.median(r["p99_us"] for r in results))
                rps_threads.append(_thread_rps(server.path, x, clients, seconds))
        finally:
            for child in children:
                child.close()
    return {
        "clients": clients,
        "seconds": seconds,
        "reps": reps,
        "rps": statistics.median(rps),
        "rps_reps": [round(r) for r in rps],
        "p50_us": statistics.median(p50),
        "p99_us": statistics.median(p99),
        "rps_threads": statistics.median(rps_threads),
    }


def _thread_rps(path: Path, x: np.ndarray, clients: int, seconds: float) -> float:
    import threading

    counts = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def work(i: int) -> None:
        with SocketClient(path) as client:
            client.predict(x)
            barrier.wait()
            while not stop.is_set():
                client.predict(x)
                counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def _baseline_server(rev: str) -> type[Any] | str:
    """``SocketServer`` of ``edge/inference/socket_server.py`` at git ``rev`` (read-only)."""
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:edge/inference/socket_server.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"git show {rev} failed: {exc}"
    tmp = Path(tempfile.mkdtemp(prefix="fedge-baseline-"))
    path = tmp / "socket_server_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("socket_server_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # an old revision may not import against today's package
        del sys.modules[spec.name]
        return f"{rev} does not import: {exc}"
    server_cls: type[Any] = module.SocketServer
    return server_cls


class _EchoServer:
    """The transport floor: a thread per connection that reads a frame and answers a fixed
    ok frame, without parsing or inference (the same blocking-socket reads as the server)."""

    def __init__(self, path: Path, answer: bytes) -> None:
        import socket
        import threading

        self.path = path
        self._answer = answer
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        with conn:
            while True:
                got = 0
                while got < 12:
                    k = conn.recv_into(view[got:])
                    if not k:
                        return
                    got += k
                n = 12 + int.from_bytes(buf[8:12], "big")
                while got < n:
                    k = conn.recv_into(view[got:])
                    if not k:
                        return
                    got += k
                conn.sendall(self._answer)

    def stop(self) -> None:
        self._sock.close()


def bench_latency(
    model_path: Path, *, requests: int = 3000, reps: int = 5, baseline_rev: str | None = None
) -> dict[str, Any]:
    """One request at a time: raw invoke vs Predictor vs socket (in-process, another process)."""
    x = _input_of(model_path)
    interpreter = make_interpreter(model_path.read_bytes(), num_threads=1)
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    native = np.zeros(inp["shape"], inp["dtype"])

    def raw() -> object:
        interpreter.set_tensor(inp["index"], native)
        interpreter.invoke()
        return interpreter.get_tensor(outp["index"])

    servers: dict[str, type[Any]] = {"socket": SocketServer}
    notes: dict[str, str] = {}
    if baseline_rev:
        baseline = _baseline_server(baseline_rev)
        if isinstance(baseline, str):
            notes[f"socket@{baseline_rev}"] = baseline
        else:
            servers[f"socket@{baseline_rev}"] = baseline
    samples: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        calls: dict[str, Callable[[], object] | _Child] = {"raw invoke": raw}
        for name, cls in servers.items():
            predictor, server, tmp = stack.enter_context(_served(model_path, cls))
            client = stack.enter_context(SocketClient(server.path))
            if name == "socket":
                calls["Predictor.predict"] = functools.partial(predictor.predict, x)
            calls[f"{name} (in-process client)"] = functools.partial(client.predict, x)
            frame_path = tmp / "frame"
            frame_path.write_bytes(encode_request(x))
            child = _Child(server.path, frame_path)
            stack.callback(child.close)
            calls[f"{name} (client process)"] = child
            info = predictor.active
            if name == "socket" and info is not None and info.input_quant is not None:
                # The protocol also takes the model's native dtype: no quantization step.
                q = info.input_quant
                native_x = np.clip(np.rint(x / q.scale) + q.zero_point, -128, 127).astype(np.int8)
                native_path = tmp / "frame_native"
                native_path.write_bytes(encode_request(native_x))
                native_child = _Child(server.path, native_path)
                stack.callback(native_child.close)
                calls[f"{name}, {info.input_dtype} in (client process)"] = native_child
        echo_dir = Path(tempfile.mkdtemp(prefix="fse", dir="/tmp"))
        stack.callback(shutil.rmtree, echo_dir, True)
        answer = encode_response(predictor.predict(x), "bench")  # what the model answers
        echo = _EchoServer(echo_dir / "e.sock", answer)
        stack.callback(echo.stop)
        (echo_dir / "frame").write_bytes(encode_request(x))
        echo_child = _Child(echo.path, echo_dir / "frame")
        stack.callback(echo_child.close)
        calls["transport floor (echo, client process)"] = echo_child
        names = list(calls)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                call = calls[name]
                if isinstance(call, _Child):
                    call.send(f"n {requests}")
                    r = call.result()
                    samples.setdefault(name, []).append(r["p50_us"])
                    samples.setdefault(name + " p99", []).append(r["p99_us"])
                else:
                    lat = _time_calls(call, requests)
                    samples.setdefault(name, []).append(_p(lat, 50))
                    samples.setdefault(name + " p99", []).append(_p(lat, 99))
    rows: dict[str, dict[str, Any]] = {
        name: {
            "p50_us": statistics.median(samples[name]),
            "p99_us": statistics.median(samples[name + " p99"]),
            "rep_p50_us": [round(v, 2) for v in samples[name]],
        }
        for name in names
    }
    raw_p50 = rows["raw invoke"]["p50_us"]
    for row in rows.values():
        row["x_raw"] = row["p50_us"] / raw_p50
    return {"rows": rows, "requests_per_rep": requests, "reps": reps, "notes": notes}


def _default_model(models_dir: Path | None) -> Path:
    from tests.helpers.models import build_models

    directory = models_dir or Path(os.environ.get("FEDGE_TEST_MODELS_DIR", "/tmp/fedge-models"))
    return build_models(directory).int8_a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help=".tflite (default: test CNN)")
    parser.add_argument("--models-dir", type=Path, default=None, help="build/reuse models here")
    parser.add_argument("--requests", type=int, default=3000, help="requests per repetition")
    parser.add_argument("--reps", type=int, default=6, help="interleaved repetitions")
    parser.add_argument("--seconds", type=float, default=2.0, help="each throughput run")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--baseline-rev", default="HEAD", help="git rev of the old socket server")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", action="store_true", help="print the JSON, not the table")
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.reps, args.seconds = 300, 2, 0.3
    load_before = os.getloadavg()
    started = time.perf_counter()
    model = args.model or _default_model(args.models_dir)
    result: dict[str, Any] = {
        "benchmark": "edge_shadow",
        "model": model.name,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "latency": bench_latency(
            model, requests=args.requests, reps=args.reps, baseline_rev=args.baseline_rev or None
        ),
        "clients": {
            str(c): bench_socket_clients(
                model, c, seconds=args.seconds, reps=max(2, args.reps // 2)
            )
            for c in args.clients
        },
        "shadow": bench_shadow(model, requests=args.requests, reps=args.reps),
        "shadow_uncapped": bench_shadow(
            model,
            requests=args.requests,
            reps=args.reps,
            config=ShadowConfig(sample_rate=0.25, max_samples_per_s=1e9),
        ),
    }
    result["load_avg_before"] = load_before
    result["load_avg_after"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
        print(f"wrote {args.out}")
    return 0


def _print(result: dict[str, Any]) -> None:
    print(f"model {result['model']}, load average before {result['load_avg_before']}")
    print(f"\n{'latency, one request at a time':<44}{'p50 µs':>10}{'p99 µs':>10}{'× raw':>8}")
    for name, row in result["latency"]["rows"].items():
        print(f"{name:<44}{row['p50_us']:>10.1f}{row['p99_us']:>10.1f}{row['x_raw']:>8.2f}")
    for name, note in result["latency"]["notes"].items():
        print(f"{name:<44}unavailable: {note}")
    print(f"\n{'socket throughput':<44}{'req/s':>10}{'p50 µs':>10}{'threads':>10}")
    for c, row in result["clients"].items():
        label = f"{c} client process(es)"
        print(f"{label:<44}{row['rps']:>10.0f}{row['p50_us']:>10.1f}{row['rps_threads']:>10.0f}")
    for key, title in (("shadow", "default sampling"), ("shadow_uncapped", "no rate cap")):
        s = result[key]
        head = f"shadow, {title} (rate {s['sample_rate']}, cap {s['max_samples_per_s']:g}/s)"
        print(f"\n{head:<44}{'p50 µs':>10}{'p99 µs':>10}")
        for mode in ("off", "on"):
            print(f"{'shadow ' + mode:<44}{s[mode]['p50_us']:>10.1f}{s[mode]['p99_us']:>10.1f}")
        print(
            f"p50 on/off {s['p50_ratio']:.3f}, p99 on/off {s['p99_ratio']:.3f}; "
            f"candidate evaluated {s['shadow']['samples']} samples "
            f"(errors {s['shadow']['errors']}, dropped {s['shadow']['dropped']})"
        )
    print(f"load average after {result['load_avg_after']}")


if __name__ == "__main__":
    sys.exit(main())
