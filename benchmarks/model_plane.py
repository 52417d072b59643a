"""Benchmark the model plane in one run: distillation, pruning, sequence forms, DDP.

1. Teacher vs scratch student vs distilled student (3 seeds, mean ± sd): test accuracy,
   parameters, int8 bytes, wire bytes (the delivery plane's zstd) with and without 80%
   pruning, LiteRT latency — on mnist-5k with the ResNet teacher.
2. GRU, LSTM, Transformer (and a CNN over the T x F grid as a baseline) on a bundled
   time-series set: float vs every quantized form, bytes, accuracy and latency in LiteRT.
3. DDP with 1 vs 2 gloo processes: seconds per epoch and final accuracy.

Every number is measured in this run; the JSON records the device, torch threads and the
load average before and after (this host is shared).

    .venv/bin/python benchmarks/model_plane.py [--quick] [--out PATH]

``--quick`` is a development configuration (digits, a narrow teacher, fewer epochs, one
seed); ``--reduced`` keeps the default's data, seeds and pruning with a narrow teacher and
fewer epochs; the default is the issue's configuration (a 2.8 M-parameter ResNet teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cloud.data import load_dataset, stratified_split
from cloud.quantization.convert import export_float_tflite, input_layout, quantize_tflite, to_layout
from cloud.quantization.litert_eval import evaluate_tflite
from cloud.quantization.quiet import native_output_captured
from cloud.quantization.sequence import FORMS, choose_variant, quantize_form, strip_tensor_names
from cloud.training.distributed import Launch, run_distributed
from cloud.training.models import ModelSpec
from cloud.training.prune import prune_and_finetune
from cloud.training.trainer import TrainConfig, train
from shared.artifacts.compression import compress
from shared.precision import Precision

DEFAULT_OUT = Path(__file__).parent / "results" / "model_plane.json"


@dataclass(frozen=True)
class Plan:
    """One benchmark configuration."""

    image_data: str
    teacher_width: int
    teacher_epochs: int
    student_epochs: int
    seeds: tuple[int, ...]
    prune: float
    series_data: str
    series_epochs: int
    ddp_data: str
    ddp_epochs: int
    latency_runs: int


DEFAULT = Plan("mnist-5k", 64, 4, 12, (0, 1, 2), 0.8, "aeon:BasicMotions", 40, "mnist-5k", 3, 500)
#: What fits a shared two-core host in ~20 minutes: the default's data, seeds and pruning,
#: with a narrow teacher and fewer epochs (the default teacher takes ~15 s per batch here).
REDUCED = Plan("mnist-5k", 16, 3, 6, (0, 1, 2), 0.8, "aeon:BasicMotions", 40, "mnist-5k", 2, 300)
QUICK = Plan("digits", 16, 3, 6, (0,), 0.8, "aeon:BasicMotions", 20, "digits", 2, 100)


def _litert(
    model: torch.nn.Module, spec: ModelSpec, split: Any, calib: int, runs: int
) -> dict[str, Any]:
    """float32 and int8 files of an image model: bytes, wire bytes, accuracy, latency."""
    layout = input_layout(spec.input_shape)
    x_test = to_layout(split.test_x, layout)
    with native_output_captured():
        fp32 = export_float_tflite(model, spec.input_shape, layout=layout)
        int8 = quantize_tflite(fp32, Precision.INT8, to_layout(split.train_x[:calib], layout))
    out: dict[str, Any] = {}
    for name, data in (("float32", fp32), ("int8", int8)):
        ev = evaluate_tflite(data, x_test, split.test_y, latency_runs=runs)
        out[name] = {
            "bytes": len(data),
            "wire_bytes": len(compress(data)),
            "accuracy": ev.accuracy,
            "latency_median_ms": ev.latency_median_ms,
        }
    return out


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def distillation(plan: Plan, console: Console) -> dict[str, Any]:
    """Section 1."""
    data = load_dataset(plan.image_data)
    split = stratified_split(data, seed=0)
    shape, classes = data.input_shape, data.num_classes
    t_spec = ModelSpec("resnet", shape, classes, plan.teacher_width)
    with console.status(f"teacher: resnet width {plan.teacher_width}"):
        teacher = train(split, t_spec, TrainConfig(epochs=plan.teacher_epochs, seed=0))
    rows: dict[str, list[dict[str, Any]]] = {"scratch": [], "distilled": [], "distilled_pruned": []}
    s_spec = ModelSpec("cnn", shape, classes)
    for seed in plan.seeds:
        config = TrainConfig(epochs=plan.student_epochs, seed=seed)
        with console.status(f"seed {seed}: scratch and distilled students"):
            scratch = train(split, s_spec, config)
            distilled = train(split, s_spec, config, teacher=teacher.model)
            pruned = prune_and_finetune(
                distilled.model.train(),
                split,
                s_spec,
                plan.prune,
                TrainConfig(epochs=1, seed=seed, learning_rate=config.learning_rate / 4),
            )
        for key, result_model, acc, extra in (
            ("scratch", scratch.model, scratch.metrics["test_accuracy"], {}),
            ("distilled", distilled.model, distilled.metrics["test_accuracy"], {}),
            (
                "distilled_pruned",
                pruned.model,
                pruned.metrics["test_accuracy"],
                {"sparsity": pruned.sparsity},
            ),
        ):
            with console.status(f"seed {seed}: {key} in LiteRT"):
                lite = _litert(result_model, s_spec, split, 256, plan.latency_runs)
            rows[key].append(
                {
                    "seed": seed,
                    "test_accuracy": acc,
                    "parameters": _params(result_model),
                    "litert": lite,
                    **extra,
                }
            )
    with console.status("teacher in LiteRT"):
        t_lite = _litert(teacher.model, t_spec, split, 64, max(20, plan.latency_runs // 10))
    return {
        "data": plan.image_data,
        "teacher": {
            "test_accuracy": teacher.metrics["test_accuracy"],
            "parameters": _params(teacher.model),
            "epochs": plan.teacher_epochs,
            "seconds": teacher.metrics["seconds"],
            "litert": t_lite,
        },
        "students": rows,
        "student_epochs": plan.student_epochs,
        "prune_amount": plan.prune,
    }


def sequences(plan: Plan, console: Console) -> dict[str, Any]:
    """Section 2."""
    out: dict[str, Any] = {"data": plan.series_data, "models": {}}
    for arch in ("gru", "lstm", "transformer", "cnn"):
        reading = "image" if arch == "cnn" else "sequence"
        data = load_dataset(plan.series_data, reading=reading)
        split = stratified_split(data, seed=0)
        spec = ModelSpec(arch, data.input_shape, data.num_classes)
        with console.status(f"{arch}: training"):
            result = train(
                split,
                spec,
                TrainConfig(epochs=plan.series_epochs, batch_size=16, learning_rate=3e-3, seed=0),
            )
        layout = input_layout(spec.input_shape)
        x_test, calib = to_layout(split.test_x, layout), to_layout(split.train_x[:64], layout)
        with native_output_captured():
            raw = export_float_tflite(result.model, spec.input_shape, layout=layout)
        variants: dict[str, Any] = {}
        float_acc = float(result.metrics["test_accuracy"])
        candidates = [("float32", raw)]
        if arch != "cnn":
            candidates.append(("float32 (names stripped)", strip_tensor_names(raw)))
        for name, data_bytes in candidates:
            ev = evaluate_tflite(data_bytes, x_test, split.test_y, latency_runs=plan.latency_runs)
            variants[name] = {
                "precision": "float32",
                "bytes": len(data_bytes),
                "accuracy": ev.accuracy,
                "latency_median_ms": ev.latency_median_ms,
                "op_kinds": len(ev.ops),
            }
        for precision, forms in FORMS.items():
            for form in forms:
                with console.status(f"{arch}: {form}"):
                    try:
                        with native_output_captured():
                            if arch == "cnn":
                                if form not in ("static-int8", "dynamic-int8", "float16"):
                                    continue
                                q = quantize_tflite(raw, precision, calib)
                            else:
                                q = quantize_form(raw, form, calib)
                    except Exception as exc:  # record the failure, keep measuring the rest
                        variants[form] = {"error": repr(exc)[:300]}
                        continue
                    ev = evaluate_tflite(q, x_test, split.test_y, latency_runs=plan.latency_runs)
                variants[form] = {
                    "precision": str(precision),
                    "bytes": len(q),
                    "accuracy": ev.accuracy,
                    "latency_median_ms": ev.latency_median_ms,
                    "op_kinds": len(ev.ops),
                }
        ref = variants["float32 (names stripped)" if arch != "cnn" else "float32"]
        # Sequence files ship with names stripped: the stripped float is their reference.
        pool = {
            k: v
            for k, v in variants.items()
            if "error" not in v and not (arch != "cnn" and k == "float32")
        }
        approved = [
            (
                v["precision"],
                (float_acc - v["accuracy"]) * 100 <= 1.0,
                v["bytes"],
                v["latency_median_ms"],
            )
            for v in pool.values()
        ]
        chosen_precision = choose_variant(approved)
        chosen = min(
            (
                v
                for v in variants.values()
                if "error" not in v and v["precision"] == chosen_precision
            ),
            key=lambda v: (v["latency_median_ms"], v["bytes"]),
        )
        out["models"][arch] = {
            "reading": reading,
            "input_shape": list(data.input_shape),
            "parameters": _params(result.model),
            "torch_accuracy": float_acc,
            "variants": variants,
            "chosen_precision": chosen_precision,
            "chosen_bytes_ratio": chosen["bytes"] / ref["bytes"],
            "chosen_latency_ratio": chosen["latency_median_ms"] / ref["latency_median_ms"],
            "chosen_accuracy_drop_points": (float_acc - chosen["accuracy"]) * 100,
        }
    return out


def ddp(plan: Plan, console: Console) -> dict[str, Any]:
    """Section 3."""
    data = load_dataset(plan.ddp_data)
    spec = ModelSpec("cnn", data.input_shape, data.num_classes)
    config = TrainConfig(epochs=plan.ddp_epochs, device="cpu", seed=0)
    # Both through torchrun, so the launch overhead and environment are the same.
    with console.status("DDP: 1 process"):
        one = run_distributed(plan.ddp_data, "image", spec, config, Launch(nproc=1)).metrics
    with console.status("DDP: 2 gloo processes"):
        two = run_distributed(plan.ddp_data, "image", spec, config, Launch(nproc=2)).metrics
    keep = ("seconds_per_epoch", "test_accuracy", "world_size", "device")
    return {
        "data": plan.ddp_data,
        "epochs": plan.ddp_epochs,
        "one": {k: one[k] for k in keep},
        "two": {k: two[k] for k in keep} | {"backend": two["backend"]},
    }


def _ms(rows: list[float]) -> str:
    if len(rows) == 1:
        return f"{rows[0]:.4f}"
    return f"{statistics.mean(rows):.4f} ± {statistics.stdev(rows):.4f}"


def print_tables(console: Console, result: dict[str, Any]) -> None:
    """Human tables of the JSON."""
    d = result["distillation"]
    t = Table(title=f"teacher vs students on {d['data']} (LiteRT, 1 thread)")
    for col in ("model", "accuracy", "params", "int8 bytes", "int8 wire", "int8 ms", "sparsity"):
        t.add_column(col)
    tl = d["teacher"]["litert"]["int8"]
    t.add_row(
        "teacher resnet",
        f"{d['teacher']['test_accuracy']:.4f}",
        f"{d['teacher']['parameters']:,}",
        f"{tl['bytes']:,}",
        f"{tl['wire_bytes']:,}",
        f"{tl['latency_median_ms']:.3f}",
        "",
    )
    for key, rows in d["students"].items():
        t.add_row(
            key,
            _ms([r["test_accuracy"] for r in rows]),
            f"{rows[0]['parameters']:,}",
            f"{int(np.mean([r['litert']['int8']['bytes'] for r in rows])):,}",
            f"{int(np.mean([r['litert']['int8']['wire_bytes'] for r in rows])):,}",
            _ms([r["litert"]["int8"]["latency_median_ms"] for r in rows]),
            _ms([r["sparsity"] for r in rows]) if "sparsity" in rows[0] else "",
        )
    console.print(t)
    s = result["sequences"]
    t = Table(title=f"sequence models on {s['data']}: every form in LiteRT")
    for col in ("model", "variant", "bytes", "x float", "accuracy", "median ms", "op kinds"):
        t.add_column(col)
    for arch, m in s["models"].items():
        base = m["variants"]["float32"]["bytes"]
        for name, v in m["variants"].items():
            if "error" in v:
                t.add_row(arch, name, "failed", "", "", "", v["error"][:40])
                continue
            mark = " *" if v["precision"] == m["chosen_precision"] else ""
            t.add_row(
                arch,
                name + mark,
                f"{v['bytes']:,}",
                f"{v['bytes'] / base:.2f}",
                f"{v['accuracy']:.4f}",
                f"{v['latency_median_ms']:.3f}",
                str(v["op_kinds"]),
            )
    console.print(t)
    p = result["ddp"]
    t = Table(title=f"DDP on {p['data']}, {p['epochs']} epochs ({p['two']['backend']})")
    for col in ("processes", "s/epoch", "test accuracy", "device"):
        t.add_column(col)
    for key in ("one", "two"):
        r = p[key]
        t.add_row(
            str(r["world_size"]),
            f"{r['seconds_per_epoch']:.3f}",
            f"{r['test_accuracy']:.4f}",
            r["device"],
        )
    console.print(t)


def main() -> None:
    """Run the benchmark and write its JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="development configuration")
    parser.add_argument(
        "--reduced", action="store_true", help="the default's data and seeds, smaller teacher"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--sections", default="distillation,sequences,ddp")
    args = parser.parse_args()
    plan = QUICK if args.quick else REDUCED if args.reduced else DEFAULT
    name = "quick" if args.quick else "reduced" if args.reduced else "default"
    console = Console()
    load_before = os.getloadavg()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "config": name,
        "plan": plan.__dict__,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "load_before": load_before,
    }
    sections = {"distillation": distillation, "sequences": sequences, "ddp": ddp}
    for name in args.sections.split(","):
        result[name] = sections[name](plan, console)
    result["load_after"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if {"distillation", "sequences", "ddp"} <= result.keys():
        print_tables(console, result)
    console.print(
        f"load average {load_before} → {result['load_after']}; "
        f"{result['seconds']}s; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
