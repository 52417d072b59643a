"""Time a model variant on this device's own CPU: the evidence for measured variant choice.

Which precision of a model is fastest is a property of the hardware (issue 11: int8 was
1.7x *slower* than float32 on one machine and 0.54x on another), so the agent measures
the variant it is asked to try (``docs/protocol.md`` §15) and reports median and p99.

The model runs in its own interpreter with the profile's thread count, never the serving
one; the input is random but seeded, of the model's own input shapes and dtypes, so two
devices (and two runs) time the same work. The measurement is bounded twice: by
``budget_s`` of wall time for the timed runs and by ``max_runs``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.runtime import make_interpreter
from shared.errors import ModelLoadError

__all__ = ["DEFAULT_BUDGET_S", "random_inputs", "time_variant"]

DEFAULT_BUDGET_S = 2.0
_WARMUP_RUNS = 20
_WARMUP_SHARE = 0.2  # at most this share of the budget goes to warm-up


def random_inputs(interpreter: Any, *, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """``(tensor index, array)`` for every input: uniform [0, 1) floats, full-range ints."""
    rng = np.random.default_rng(seed)
    inputs = []
    for detail in interpreter.get_input_details():
        shape = tuple(int(d) for d in detail["shape"])
        dtype = np.dtype(detail["dtype"])
        if dtype.kind == "f":
            arr = rng.random(shape, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            arr = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        elif dtype.kind == "b":
            arr = rng.integers(0, 1, size=shape, endpoint=True).astype(dtype)
        else:
            raise ModelLoadError(f"cannot make a timing input of dtype {dtype.name}")
        inputs.append((int(detail["index"]), arr))
    return inputs


def time_variant(
    path: Path,
    *,
    threads: int,
    budget_s: float = DEFAULT_BUDGET_S,
    max_runs: int = 5_000,
    seed: int = 0,
) -> tuple[int, float, float]:
    """Time ``invoke`` of the model at ``path``.

    Args:
        path: The ``.tflite`` file.
        threads: Interpreter threads (the profile's ``inference_threads``).
        budget_s: Wall time for the timed runs (warm-up takes at most a fifth more).
        max_runs: Upper bound on timed runs, whatever the budget.
        seed: Seed of the random input.

    Returns:
        ``(runs, median_us, p99_us)``; at least one run is always timed.

    Raises:
        ModelLoadError: the file cannot be read, the runtime rejects it, or an invoke fails.
        ValueError: ``threads``, ``budget_s`` or ``max_runs`` is not positive.
    """
    if threads < 1 or not budget_s > 0 or max_runs < 1:
        raise ValueError("threads, budget_s and max_runs must be positive")
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
    interpreter = make_interpreter(content, num_threads=threads)
    for index, arr in random_inputs(interpreter, seed=seed):
        interpreter.set_tensor(index, arr)
    invoke = interpreter.invoke
    clock = time.perf_counter_ns
    try:
        warm_end = clock() + int(budget_s * _WARMUP_SHARE * 1e9)
        for _ in range(_WARMUP_RUNS):  # caches, XNNPACK packing, thread pool start-up
            invoke()
            if clock() >= warm_end:
                break
        samples: list[int] = []
        end = clock() + int(budget_s * 1e9)
        while len(samples) < max_runs:
            start = clock()
            invoke()
            stop = clock()
            samples.append(stop - start)
            if stop >= end:
                break
    except Exception as exc:  # the runtime raises RuntimeError/ValueError on a broken graph
        raise ModelLoadError(f"invoke failed while timing: {exc}") from exc
    us = np.asarray(samples, dtype=np.float64) / 1e3
    median, p99 = np.percentile(us, [50, 99])
    return len(samples), float(median), float(p99)
