"""Edge inference, one run, one model: LiteRT variants and layouts, peer runtimes, the stack.

The model is the benchmark's default CNN (``tests.helpers.models.torch_cnn(0)``, ~106k
parameters on 1x28x28, seeded weights; int8 calibrated on 64 seeded uniform samples, the
same samples for LiteRT and onnxruntime). Sections, all measured in this run:

* **variants** LiteRT float32 / float16 / dynamic-int8 / int8, NCHW and NHWC input, raw
  ``set_tensor + invoke + get_tensor`` on one thread and on the profile's threads (int8
  input pre-quantized); plus float32/int8 NCHW vs NHWC of the zoo's CNN on 3x32x32, where
  NCHW input costs a real TRANSPOSE (and a camera's NHWC frame a transpose by the caller);
* **peers** onnxruntime float32 and int8 QDQ, ExecuTorch + XNNPACK float32 and int8
  (PT2E, same calibration samples), torch eager;
* **stack** on the variant the agent chooses: raw invoke, Predictor, Unix socket, HTTP
  (keep-alive; npy and JSON bodies); throughput with 1 and 4 clients;
* **choice** the agent's own bounded timing (``edge.inference.time_variant``) and the
  selection rule vs this run's medians: chosen / fastest (target <= 1.05);
* **shadow** caller latency with shadow evaluation on vs off and socket clients, from
  ``benchmarks/edge_shadow.py`` when it exists.

Latency rows are interleaved: each repetition times every row once, in rotated order, so
load noise hits all rows alike; a row's median (p99) is the median of its repetitions'
medians (p99s). The machine load (``os.getloadavg``) is recorded before and after.

    .venv/bin/python benchmarks/edge_inference.py [--quick] [--json] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # torch/onnx thread pools: one core each

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks import edge_peers as peers  # noqa: E402
from benchmarks.edge_choice import agent_choice  # noqa: E402
from benchmarks.edge_stack import interleaved, stack_rows, throughput  # noqa: E402
from cloud.training.models import CompactCNN  # noqa: E402
from shared.precision import Precision  # noqa: E402
from shared.profiles import profile_from_toml  # noqa: E402
from tests.helpers.models import INPUT_SHAPE, torch_cnn  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "edge_inference.json"
DEFAULT_PROFILE = ROOT / "firmware_configs" / "smart_camera.toml"
Call = Callable[[], object]
RGB_SHAPE = (3, 32, 32)  # the layout comparison's second model: the zoo's CNN on RGB
RGB_VARIANTS = (Precision.FLOAT32, Precision.INT8)
PEER_ROWS = (
    "onnxruntime float32 1t",
    "onnxruntime int8 QDQ 1t",
    "ExecuTorch XNNPACK float32 1t",
    "ExecuTorch XNNPACK int8 1t",
)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls per row/rep")
    parser.add_argument("--repetitions", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--seconds", type=float, default=2.0, help="each throughput run")
    parser.add_argument("--budget", type=float, default=2.0, help="agent timing s per variant")
    parser.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="device profile")
    parser.add_argument("--models-dir", type=Path, default=None, help="build/reuse models here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", action="store_true", help="print the JSON, not the table")
    parser.add_argument("--quick", action="store_true", help="smoke run: every row, few calls")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.repetitions, args.seconds, args.budget = 60, 2, 0.2, 0.05
    console = Console(stderr=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    profile = profile_from_toml(args.profile.read_text(), source=str(args.profile))
    threads = profile.inference_threads
    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="fedge-bench-edge-"))

    import torch

    torch.set_num_threads(1)
    model = torch_cnn(0)
    rng = np.random.default_rng(0)
    x = rng.random(INPUT_SHAPE, dtype=np.float32)
    calibration = rng.random((64, *INPUT_SHAPE[1:]), dtype=np.float32)
    with console.status("building LiteRT variants, ONNX and ExecuTorch programs"):
        files = peers.build_litert(model, INPUT_SHAPE[1:], calibration, models_dir)
        onnx_fp32 = peers.build_onnx(model, x, calibration, models_dir)
        et_call = peers.executorch_call(model, x, 1, models_dir)
        et_int8 = peers.executorch_call(model, x, 1, models_dir, calibration=calibration)
        # Three channels: here NCHW input costs a real TRANSPOSE (one channel: a RESHAPE).
        torch.manual_seed(0)
        rgb_model = CompactCNN(RGB_SHAPE, 10).eval()
        rgb_calib = rng.random((64, *RGB_SHAPE), dtype=np.float32)
        rgb_files = peers.build_litert(
            rgb_model, RGB_SHAPE, rgb_calib, models_dir, precisions=RGB_VARIANTS, stem="rgb"
        )
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    x_rgb = rng.random((1, *RGB_SHAPE), dtype=np.float32)

    unavailable: dict[str, str] = {}
    rows: dict[str, tuple[Call, float]] = {}
    variant_rows: dict[str, dict[str, Any]] = {}
    for f in files:
        xin = x_nhwc if f.layout == "NHWC" else x
        for t in sorted({1, threads}):
            if t != 1 and f.layout != "NHWC":
                continue  # the profile's threads only for the layout devices are sent
            call, dtype = peers.litert_raw(f.path, xin, t)
            name = f"LiteRT {f.precision} {f.layout} {t}t"
            rows[name] = (call, 1.0)
            variant_rows[name] = {
                "precision": f.precision,
                "layout": f.layout,
                "threads": t,
                "input_dtype": dtype,
                "bytes": f.path.stat().st_size,
            }
    for f in rgb_files:
        xin = np.ascontiguousarray(x_rgb.transpose(0, 2, 3, 1)) if f.layout == "NHWC" else x_rgb
        call, _ = peers.litert_raw(f.path, xin, 1)
        rows[f"LiteRT {f.precision} {f.layout} 1t (3x32x32 CNN)"] = (call, 1.0)
        if f.layout == "NCHW" and f.precision == "float32":
            frame = np.ascontiguousarray(x_rgb.transpose(0, 2, 3, 1))
            rows["LiteRT float32 NCHW 1t + caller's transpose (3x32x32 CNN)"] = (
                peers.litert_from_frame(f.path, frame, 1),
                1.0,
            )
    if isinstance(onnx_fp32, Path):
        rows["onnxruntime float32 1t"] = (peers.onnx_call(onnx_fp32, x, 1), 1.0)
        qdq = onnx_fp32.with_name("cnn_int8_qdq.onnx")
        rows["onnxruntime int8 QDQ 1t"] = (peers.onnx_call(qdq, x, 1), 1.0)
    else:
        unavailable["onnxruntime float32 1t"] = unavailable["onnxruntime int8 QDQ 1t"] = onnx_fp32
    for name, et in (("float32", et_call), ("int8", et_int8)):
        if callable(et):
            rows[f"ExecuTorch XNNPACK {name} 1t"] = (et, 1.0)
        else:
            unavailable[f"ExecuTorch XNNPACK {name} 1t"] = et
    tx = torch.from_numpy(x)

    def eager() -> object:
        with torch.inference_mode():
            return model(tx)

    rows["torch eager float32 1t"] = (eager, 0.5)

    with console.status("agent: timing each NHWC variant on its own interpreter"):
        nhwc = {f.precision: f.path for f in files if f.layout == "NHWC"}
        choice = agent_choice(nhwc, threads=threads, budget_s=args.budget, profile=profile)
    chosen = next(f for f in files if f.layout == "NHWC" and f.precision == choice["chosen"])
    with (
        Progress(console=console, transient=True) as progress,
        stack_rows(chosen.path, x_nhwc) as (stack, servers),
    ):
        rows.update(stack)
        latency = interleaved(rows, args.iterations, args.repetitions, progress)
        rps = throughput(servers, x_nhwc, args.seconds, args.repetitions, progress)
    with console.status("shadow on vs off, socket client processes (edge_shadow.py)"):
        shadow = _shadow(chosen.path, args.quick, args.seconds)

    raw_chosen = latency[f"LiteRT {chosen.precision} NHWC 1t"]["median_us"]
    analysis = _analyse(latency, rps, choice, shadow, list(variant_rows), threads, raw_chosen)

    result = {
        "benchmark": "edge_inference",
        "quick": args.quick,
        "config": {
            "iterations": args.iterations,
            "repetitions": args.repetitions,
            "throughput_seconds": args.seconds,
            "agent_budget_s": args.budget,
            "profile": profile.name,
            "profile_threads": threads,
        },
        "model": {
            "builder": "tests.helpers.models.torch_cnn(0)",
            "input_shape": INPUT_SHAPE,
            "calibration": "64 seeded uniform samples (LiteRT int8, onnxruntime QDQ, "
            "ExecuTorch PT2E int8)",
            "notes": "LiteRT int8 raw rows take pre-quantized int8 input; peers take float32 "
            "(quantizing inside the graph). 'Predictor (float in)' is LiteRT with the "
            "input quantized, for an even comparison (ratio litert_float_in_vs_fastest_peer).",
        },
        "machine": {
            "python": platform.python_version(),
            "cpu": peers.cpu_model(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
        },
        "packages": peers.package_versions(),
        "latency_us": latency,
        "variants": variant_rows,
        "unavailable": unavailable,
        "throughput_rps": rps,
        "choice": choice
        | {
            "fastest_measured_here": analysis["fastest"],
            "medians_at_threads_us": analysis["at_threads"],
        },
        "litert_best": analysis["litert_best"],
        "fastest_peer": analysis["fastest_peer"],
        "shadow": shadow,
        "ratios": analysis["ratios"],
        "targets": analysis["targets"],
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print(result, raw_chosen)
        print(f"wrote {args.out}")
    return 0


def _analyse(
    latency: dict[str, dict[str, float]],
    rps: dict[str, float],
    choice: dict[str, Any],
    shadow: dict[str, Any],
    litert_rows: list[str],
    threads: int,
    raw: float,
) -> dict[str, Any]:
    """Ratios against the baselines of the same run, and the issue's targets."""

    def med(row: str) -> float:
        return latency[row]["median_us"]

    at_threads = {p: med(f"LiteRT {p} NHWC {threads}t") for p in choice["approved"]}
    fastest = min(at_threads, key=at_threads.__getitem__)
    chosen_ratio = at_threads[choice["chosen"]] / at_threads[fastest]
    ratios: dict[str, float | None] = {
        "chosen_vs_fastest_variant": chosen_ratio,
        "socket_vs_raw_invoke": med("Unix socket (float in)") / raw,
        "http_npy_vs_raw_invoke": med("HTTP npy (float in)") / raw,
        "predictor_vs_raw_invoke": med("Predictor (float in)") / raw,
    }
    for p in ("float32", "int8"):
        ratios[f"nhwc_vs_nchw_{p}"] = med(f"LiteRT {p} NHWC 1t") / med(f"LiteRT {p} NCHW 1t")
        ratios[f"nhwc_vs_nchw_{p}_3x32x32"] = med(f"LiteRT {p} NHWC 1t (3x32x32 CNN)") / med(
            f"LiteRT {p} NCHW 1t (3x32x32 CNN)"
        )
    peers_here = {k: med(k) for k in PEER_ROWS if k in latency}
    best_litert = min((k for k in litert_rows if k.endswith(" 1t")), key=med)
    best_peer = min(peers_here, key=peers_here.__getitem__) if peers_here else None
    vs_peer = med(best_litert) / peers_here[best_peer] if best_peer else None
    ratios["litert_best_vs_fastest_peer"] = vs_peer
    ratios["litert_float_in_vs_fastest_peer"] = (
        med("Predictor (float in)") / peers_here[best_peer] if best_peer else None
    )
    if "onnxruntime float32 1t" in peers_here:
        fp32 = min(med(f"LiteRT float32 {lay} 1t") for lay in ("NCHW", "NHWC"))
        ratios["litert_float32_vs_onnxruntime_float32"] = (
            fp32 / peers_here["onnxruntime float32 1t"]
        )
    shadow_ratio = shadow.get("shadow", {}).get("p50_ratio")
    ratios["shadow_on_vs_off_p50"] = shadow_ratio
    targets = {
        "chosen_within_1.05x_of_fastest": chosen_ratio <= 1.05,
        "socket_p50_le_2x_raw": med("Unix socket (float in)") <= 2.0 * raw,
        "socket_ge_10000_rps_4_clients": rps["Unix socket x4"] >= 10_000,
        "shadow_adds_le_5pct_p50": shadow_ratio is not None and shadow_ratio <= 1.05,
        "litert_within_1.2x_of_fastest_peer": vs_peer is not None and vs_peer <= 1.2,
    }
    return {
        "ratios": ratios,
        "targets": targets,
        "fastest": fastest,
        "at_threads": at_threads,
        "litert_best": best_litert,
        "fastest_peer": best_peer,
    }


def _shadow(path: Path, quick: bool, seconds: float) -> dict[str, Any]:
    """Shadow on vs off and socket clients from ``benchmarks/edge_shadow.py``, if present."""
    try:
        from benchmarks.edge_shadow import bench_shadow, bench_socket_clients
    except ImportError as exc:
        return {"unavailable": f"benchmarks/edge_shadow.py not importable: {exc}"}
    requests, reps = (200, 2) if quick else (3000, 6)
    out: dict[str, Any] = {"shadow": bench_shadow(path, requests=requests, reps=reps)}
    out["socket_clients"] = {
        str(c): bench_socket_clients(path, c, seconds=seconds, reps=2 if quick else 3)
        for c in (1, 4)
    }
    return out


def _print(result: dict[str, Any], raw: float) -> None:
    console = Console(width=120)
    lat = result["latency_us"]
    table = Table(title="latency, one request at a time (median of repetition medians)")
    for col in ("row", "median µs", "p99 µs", "rep range µs", "× chosen raw"):
        table.add_column(col, justify="left" if col == "row" else "right")
    for name, r in lat.items():
        table.add_row(
            name,
            f"{r['median_us']:.1f}",
            f"{r['p99_us']:.1f}",
            f"{r['rep_min_us']:.0f}–{r['rep_max_us']:.0f}",
            f"{r['median_us'] / raw:.2f}",
        )
    for name, reason in result["unavailable"].items():
        table.add_row(name, "—", "—", "—", f"unavailable: {reason[:60]}")
    console.print(table)
    tp = Table(title="throughput, req/s (median of reps)")
    tp.add_column("path")
    tp.add_column("req/s", justify="right")
    for name, v in result["throughput_rps"].items():
        tp.add_row(name, f"{v:,.0f}")
    console.print(tp)
    c = result["choice"]
    threads = result["config"]["profile_threads"]
    ch = Table(title=f"variant choice at {threads} threads (agent's bounded timing vs this run)")
    for col in ("variant", "agent median µs", "run median µs", "× fastest", "chosen"):
        ch.add_column(col, justify="left" if col == "variant" else "right")
    at = c["medians_at_threads_us"]
    best = min(at.values())
    for p, m in c["agent_measured"].items():
        mark = "agent" if p == c["chosen"] else ""
        if p == c["profile_chosen"]:
            mark += f" {c['profile']}"
        ch.add_row(p, f"{m['median_us']:.1f}", f"{at[p]:.1f}", f"{at[p] / best:.2f}", mark)
    console.print(ch)
    console.print(
        f"chosen: [bold]{c['chosen_explain']}[/]; {c['profile']}: {c['profile_explain']}; "
        f"fastest in this run at {threads} threads: {c['fastest_measured_here']}"
    )
    console.print(
        "ratios: " + ", ".join(f"{k}={v:.2f}" for k, v in result["ratios"].items() if v is not None)
    )
    console.print("targets: " + ", ".join(f"{k}={v}" for k, v in result["targets"].items()))
    sh = result["shadow"]
    if "unavailable" in sh:
        console.print(f"shadow / socket clients: {sh['unavailable']}")
    else:
        st = Table(
            title="edge_shadow.py: caller's socket latency, shadow off vs on; client processes"
        )
        for col in ("row", "p50 µs", "p99 µs", "req/s"):
            st.add_column(col, justify="left" if col == "row" else "right")
        for mode in ("off", "on"):
            m = sh["shadow"][mode]
            st.add_row(f"shadow {mode}", f"{m['p50_us']:.1f}", f"{m['p99_us']:.1f}", "")
        for c, r in sh["socket_clients"].items():
            st.add_row(
                f"socket x{c} client processes",
                f"{r['p50_us']:.1f}",
                f"{r['p99_us']:.1f}",
                f"{r['rps']:,.0f}",
            )
        console.print(st)
    m = result["machine"]
    console.print(
        f"load {m['load_before']} → {m['load_after']}; {m['cpu']['model']}, "
        f"features {m['cpu']['features']}; {result['seconds_total']} s"
    )


def _main() -> int:
    from shared.errors import FedgeError

    try:
        return main()
    except FedgeError as exc:  # a bad profile, a model the converter refuses …
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error (io_error): {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(_main())
