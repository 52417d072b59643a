"""Edge inference latency: raw interpreter vs Predictor vs local HTTP (torch eager for reference).

One run, one model (a ~106k-parameter CNN on 1x28x28, converted to int8 TFLite with
litert-torch + ai-edge-quantizer), one interpreter thread. Rows:

* ``raw invoke (int8)``        set_tensor(pre-quantized int8) + invoke + get_tensor
* ``raw + numpy quant``        the same with float input quantized / output dequantized by hand
* ``Predictor (int8 in/out)``  Predictor.predict(int8 input, dequantize=False): the same work
                                as the raw row plus validation, lock and stats
* ``Predictor (int8 in)``      the same, with the output dequantized to float32
* ``Predictor (float in)``     Predictor.predict on float32 input (adds quantization)
* ``HTTP JSON`` / ``HTTP npy`` POST /v1/infer on a keep-alive loopback connection
* ``Unix socket (float in)``   binary frames on a keep-alive Unix socket (SocketClient)
* ``torch eager float``        the original torch model, for reference

Throughput (requests/s) is measured for the Predictor and HTTP with 1 and 4 concurrent
clients. Prints a table and writes JSON (``benchmarks/results/edge_inference.json``).

Usage: ``python benchmarks/edge_inference.py [--iterations N] [--out PATH]``
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.inference import InferenceServer, Predictor, SocketClient, SocketServer  # noqa: E402
from edge.inference.runtime import make_interpreter  # noqa: E402
from tests.helpers.models import INPUT_SHAPE, build_models, torch_cnn  # noqa: E402


def _time(fn: Callable[[], object], iterations: int, warmup: int = 200) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    us = np.asarray(samples) * 1e6
    return {
        "median_us": float(np.median(us)),
        "p99_us": float(np.percentile(us, 99)),
        "n": len(samples),
    }


def _throughput(
    make_client: Callable[[], Callable[[], object]], clients: int, seconds: float
) -> float:
    counts = [0] * clients
    stop = threading.Event()
    ready = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        call = make_client()
        ready.wait()
        while not stop.is_set():
            call()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    return sum(counts) / elapsed


def _http_client(port: int, body: bytes, ctype: str) -> Callable[[], object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call() -> object:
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return data

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=3000, help="timed calls per row")
    parser.add_argument(
        "--seconds", type=float, default=2.0, help="duration of each throughput run"
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="reuse built models here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/edge_inference.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    models = build_models(args.models_dir or Path(tempfile.mkdtemp(prefix="fedge-bench-")))
    content = models.int8_a.read_bytes()
    x = np.random.default_rng(0).random(INPUT_SHAPE, dtype=np.float32)

    interp = make_interpreter(content, num_threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    s_in, z_in = inp["quantization"]
    s_out, z_out = out["quantization"]
    xq = np.clip(np.rint(x / s_in) + z_in, -128, 127).astype(np.int8)
    i_in, i_out = inp["index"], out["index"]

    def raw() -> object:
        interp.set_tensor(i_in, xq)
        interp.invoke()
        return interp.get_tensor(i_out)

    def raw_quant() -> object:
        interp.set_tensor(i_in, np.clip(np.rint(x / s_in) + z_in, -128, 127).astype(np.int8))
        interp.invoke()
        return (interp.get_tensor(i_out).astype(np.float32) - z_out) * s_out

    predictor = Predictor(num_threads=1)
    predictor.load_bytes(content, "bench")
    server = InferenceServer(predictor, port=0)
    server.start()
    json_body = json.dumps({"inputs": x.tolist()}).encode()
    buf = io.BytesIO()
    np.save(buf, x)
    npy_body = buf.getvalue()

    import torch

    torch.set_num_threads(1)
    model = torch_cnn(0)
    tx = torch.from_numpy(x)

    def torch_eager() -> object:
        with torch.inference_mode():
            return model(tx)

    n = args.iterations
    rows: dict[str, dict[str, float]] = {}
    rows["raw invoke (int8)"] = _summary(_time(raw, n))
    rows["raw + numpy quant"] = _summary(_time(raw_quant, n))
    rows["Predictor (int8 in/out)"] = _summary(
        _time(lambda: predictor.predict(xq, dequantize=False), n)
    )
    rows["Predictor (int8 in)"] = _summary(_time(lambda: predictor.predict(xq), n))
    rows["Predictor (float in)"] = _summary(_time(lambda: predictor.predict(x), n))
    rows["HTTP JSON"] = _summary(
        _time(_http_client(server.port, json_body, "application/json"), max(n // 3, 100))
    )
    rows["HTTP npy"] = _summary(
        _time(_http_client(server.port, npy_body, "application/x-npy"), max(n // 3, 100))
    )
    sock_dir = Path(tempfile.mkdtemp(prefix="fsb", dir="/tmp"))
    sock_server = SocketServer(predictor, sock_dir / "s" / "infer.sock")
    sock_server.start()
    sock_client = SocketClient(sock_server.path)
    rows["Unix socket (float in)"] = _summary(_time(lambda: sock_client.predict(x), n))
    sock_client.close()
    sock_server.stop()
    rows["torch eager float"] = _summary(_time(torch_eager, max(n // 3, 100)))

    throughput: dict[str, float] = {}
    for clients in (1, 4):
        throughput[f"Predictor x{clients}"] = _throughput(
            lambda: lambda: predictor.predict(x), clients, args.seconds
        )
        throughput[f"HTTP JSON x{clients}"] = _throughput(
            lambda: _http_client(server.port, json_body, "application/json"), clients, args.seconds
        )
        throughput[f"HTTP npy x{clients}"] = _throughput(
            lambda: _http_client(server.port, npy_body, "application/x-npy"), clients, args.seconds
        )
    server.stop()

    base = rows["raw invoke (int8)"]["median_us"]
    base_q = rows["raw + numpy quant"]["median_us"]
    ratios = {
        "predictor_int8_io_vs_raw_invoke": rows["Predictor (int8 in/out)"]["median_us"] / base,
        "predictor_int8_vs_raw_invoke": rows["Predictor (int8 in)"]["median_us"] / base,
        "predictor_float_vs_raw_invoke": rows["Predictor (float in)"]["median_us"] / base,
        "predictor_float_vs_raw_with_quant": rows["Predictor (float in)"]["median_us"] / base_q,
    }
    print(f"\nmodel: {models.int8_a.name} ({len(content)} bytes, int8 I/O), 1 interpreter thread")
    print(f"{'path':<24}{'median µs':>12}{'p99 µs':>12}{'× raw':>8}")
    for name, r in rows.items():
        print(f"{name:<24}{r['median_us']:>12.1f}{r['p99_us']:>12.1f}{r['median_us'] / base:>8.2f}")
    print(f"\n{'throughput':<24}{'req/s':>12}")
    for name, rps in throughput.items():
        print(f"{name:<24}{rps:>12.0f}")
    print("\nratios:", ", ".join(f"{k}={v:.2f}" for k, v in ratios.items()))

    result = {
        "model": {"file": models.int8_a.name, "bytes": len(content), "input_shape": INPUT_SHAPE},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "latency": rows,
        "throughput_rps": throughput,
        "ratios": ratios,
        "median_of_medians_us": statistics.median(r["median_us"] for r in rows.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
