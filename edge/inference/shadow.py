"""Shadow evaluation: run a candidate model beside the serving one, off the caller's path.

While the updater holds a candidate (a manifest with purpose ``shadow``, installed in the
inactive slot; ``docs/protocol.md`` §16), the :class:`~edge.inference.Predictor` offers a
sample of its successful requests to a :class:`ShadowEvaluator`. The caller has already
been answered by the serving model; the evaluator only compares.

What stays on the caller's path is :meth:`ShadowEvaluator.offer`: a random draw, and for
a sampled request a rate-limit check, a copy of the input and output (a few KB) and a
non-blocking put into a bounded queue. A full queue drops the sample and counts it. Every
candidate invocation happens on the evaluator's own worker thread, in the candidate's own
interpreter, at a lower CPU priority than the serving threads (``nice``).

A candidate that raises, returns a non-finite value or the wrong shape is counted in
``errors`` and never touches an answer. A candidate that *hangs* cannot be interrupted: a
TFLite ``invoke`` has no cancellation and a Python thread cannot be killed. So a watchdog
abandons it: once one invocation has run past ``deadline_s``, the candidate is marked
failed (``timeouts`` + 1), the stuck worker is left to finish or hang on its own (a daemon
thread whose late result is discarded), and every later sample of this candidate is
counted as ``dropped``. A new candidate gets a new evaluator and a new worker. The one
thing this in-process design cannot contain is native code that hangs *holding the GIL*;
the LiteRT interpreter releases it while invoking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from shared.errors import ConfigError
from shared.protocol.messages import LatencyStats, ServingInfo, ShadowReport

__all__ = ["CandidateRunner", "ShadowConfig", "ShadowEvaluator", "Task"]

logger = logging.getLogger(__name__)

Task = Literal["classifier", "regressor"]


class CandidateRunner(Protocol):
    """What the evaluator invokes: :class:`~edge.inference.LoadedModel` is one."""

    def run(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
        """Run one request, returning real (dequantized) outputs."""
        ...


@dataclass(frozen=True)
class ShadowConfig:
    """How much shadow work a device does.

    Attributes:
        sample_rate: Fraction of successful requests offered to the candidate.
        max_samples_per_s: Cap on sampled requests per second, whatever the load
            (a token bucket with one second of burst).
        queue_size: Sampled requests waiting for the worker; past it, dropped.
        deadline_s: One candidate invocation running longer is abandoned (a hang).
        max_latencies: Latencies kept per window (later ones counted, not kept).
        nice: CPU niceness increment of the worker thread (0 = same priority).
    """

    sample_rate: float = 0.25
    max_samples_per_s: float = 100.0
    queue_size: int = 128  # above the default 1 s burst of samples
    deadline_s: float = 2.0
    max_latencies: int = 10_000
    nice: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(f"shadow sample_rate must be in [0, 1], not {self.sample_rate}")
        if not self.max_samples_per_s > 0:
            raise ConfigError("shadow max_samples_per_s must be > 0")
        if self.queue_size < 1 or self.max_latencies < 1:
            raise ConfigError("shadow queue_size and max_latencies must be >= 1")
        if not self.deadline_s > 0:
            raise ConfigError("shadow deadline_s must be > 0")
        if not 0 <= self.nice <= 19:
            raise ConfigError("shadow nice must be in 0..19")


# A sampled request: (input, serving model's output, serving seconds). A plain tuple: it
# is built on the caller's thread, where a frozen dataclass's __init__ would cost ~1 µs.
_Job = tuple[np.ndarray, np.ndarray, float]


def _latency(seconds: list[float]) -> LatencyStats:
    if not seconds:
        return LatencyStats(count=0, p50_ms=0.0, p95_ms=0.0, p99_ms=0.0, max_ms=0.0)
    ms = np.asarray(seconds) * 1000.0
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    return LatencyStats(
        count=len(seconds), p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=float(ms.max())
    )


class _Window:
    """Counters of one telemetry window (guarded by the evaluator's lock)."""

    def __init__(self) -> None:
        self.samples = 0
        self.matches = 0  # classifier: rows whose top-1 agrees
        self.rows = 0
        self.abs_diff_sum = 0.0  # regressor: sum of per-sample mean |c - s|
        self.errors = 0
        self.timeouts = 0
        self.dropped = 0
        self.candidate_s: list[float] = []
        self.serving_s: list[float] = []


class ShadowEvaluator:
    """Compares a candidate with the serving model on sampled live requests.

    Args:
        candidate: Runs the candidate (its own interpreter: never the serving one).
        info: The candidate artifact, as reported (``ShadowReport.candidate``).
        config: Sampling, queue, deadline and priority.
        task: ``classifier`` (top-1 agreement) or ``regressor`` (mean absolute
            difference); by default a model with more than one output value per row is a
            classifier.
        output_shape: The candidate's output shape, used for the default ``task``.
    """

    def __init__(
        self,
        candidate: CandidateRunner,
        info: ServingInfo,
        *,
        config: ShadowConfig | None = None,
        task: Task | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        self._candidate = candidate
        self.info = info
        self.config = config or ShadowConfig()
        if task is None:
            task = "classifier" if output_shape and output_shape[-1] > 1 else "regressor"
        self.task: Task = task
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=self.config.queue_size)
        self._lock = threading.Lock()
        self._window = _Window()
        self._rate = self.config.sample_rate
        self._random = random.random
        self._tokens = self.config.max_samples_per_s
        self._refilled = time.monotonic()
        self._busy_since: float | None = None  # start of the invocation in progress
        self._generation = 0  # bumped when a worker is abandoned or the evaluator closed
        self._closed = threading.Event()
        self.failed = False
        self._worker: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and its watchdog (daemon threads)."""
        gen = self._generation
        self._worker = threading.Thread(
            target=self._work, args=(gen,), name="fedge-shadow", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._watch, name="fedge-shadow-watch", daemon=True
        )
        self._worker.start()
        self._watchdog.start()

    def close(self) -> None:
        """Stop evaluating; a worker stuck in the candidate is abandoned, not waited for."""
        self._closed.set()
        with self._lock:
            self._generation += 1
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wake an idle worker so it exits

    # --- the caller's path -----------------------------------------------------------

    def offer(self, x: np.ndarray, serving_out: np.ndarray, serving_s: float) -> None:
        """Maybe sample one answered request (never blocks, never raises on load).

        Args:
            x: The request input as the caller sent it (copied if sampled: the caller's
                buffer may be reused).
            serving_out: The serving model's (dequantized) answer (copied if sampled).
            serving_s: How long the serving model took.
        """
        if self._random() >= self._rate:
            return
        now = time.monotonic()
        tokens = min(
            self.config.max_samples_per_s,
            self._tokens + (now - self._refilled) * self.config.max_samples_per_s,
        )
        self._refilled = now
        if tokens < 1.0:
            self._tokens = tokens
            return  # over the rate cap: not sampled (not "dropped": nothing was lost)
        self._tokens = tokens - 1.0
        if self.failed or self._closed.is_set():
            self._count_dropped()
            return
        try:
            self._queue.put_nowait((np.array(x, copy=True), serving_out.copy(), serving_s))
        except queue.Full:
            self._count_dropped()

    def _count_dropped(self) -> None:
        with self._lock:
            self._window.dropped += 1

    # --- the worker --------------------------------------------------------------------

    def _lower_priority(self) -> None:
        if self.config.nice and hasattr(os, "setpriority"):
            # Linux: a thread is a task, so PRIO_PROCESS with its native id renices it alone.
            try:
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.config.nice
                )
            except OSError:  # pragma: no cover - not permitted on some sandboxes
                logger.debug("could not lower the shadow worker's priority")

    def _work(self, generation: int) -> None:
        self._lower_priority()
        while True:
            job = self._queue.get()
            if job is None or generation != self._generation:
                return
            self._busy_since = time.monotonic()
            start = time.perf_counter()
            out: np.ndarray | None = None
            try:
                out = self._candidate.run(job[0])
            except Exception:  # a candidate may fail any way it likes: count it, go on
                out = None
            elapsed = time.perf_counter() - start
            with self._lock:
                self._busy_since = None
                if generation != self._generation:
                    return  # abandoned while invoking: the watchdog already counted it
                self._record(job, out, elapsed)

    def _record(self, job: _Job, out: np.ndarray | None, elapsed: float) -> None:
        w = self._window
        ref, serving_s = job[1], job[2]
        if (
            out is None
            or not isinstance(out, np.ndarray)
            or out.shape != ref.shape
            or out.dtype.kind != "f"
            or not np.isfinite(out).all()
        ):
            w.errors += 1
            return
        w.samples += 1
        if len(w.candidate_s) < self.config.max_latencies:
            w.candidate_s.append(elapsed)
            w.serving_s.append(serving_s)
        if self.task == "classifier":
            top_c = np.argmax(out.reshape(-1, out.shape[-1]), axis=-1)
            top_s = np.argmax(ref.reshape(-1, ref.shape[-1]), axis=-1)
            w.matches += int(np.count_nonzero(top_c == top_s))
            w.rows += int(top_c.size)
        else:
            w.abs_diff_sum += float(np.mean(np.abs(out.astype(np.float64) - ref)))

    def _watch(self) -> None:
        interval = min(0.25, self.config.deadline_s / 4)
        while not self._closed.wait(interval):
            busy = self._busy_since
            if busy is None or time.monotonic() - busy <= self.config.deadline_s:
                continue
            with self._lock:
                if self._busy_since is None:
                    continue  # it finished just now
                self._generation += 1  # the stuck worker's result will be discarded
                self._busy_since = None
                self.failed = True
                self._window.timeouts += 1
                self._drain_locked()
            logger.warning(
                "shadow candidate %s v%d ran past %.3g s: abandoned and marked failed",
                self.info.model_id,
                self.info.version,
                self.config.deadline_s,
            )
            return

    def _drain_locked(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._window.dropped += 1

    # --- reporting ---------------------------------------------------------------------

    def report(self, *, serving_version: int, reset: bool = True) -> ShadowReport:
        """The current window's :class:`ShadowReport`, starting a new window if ``reset``.

        Args:
            serving_version: The version of the model that served callers meanwhile
                (0 for a model loaded from a file).
        """
        with self._lock:
            w = self._window
            if reset:
                self._window = _Window()
        agreement = mad = None
        if self.task == "classifier":
            agreement = w.matches / w.rows if w.rows else None
        elif w.samples:
            mad = w.abs_diff_sum / w.samples
        return ShadowReport(
            candidate=self.info,
            serving_version=serving_version,
            task=self.task,
            samples=w.samples,
            agreement=agreement,
            mean_abs_diff=mad,
            candidate_latency=_latency(w.candidate_s),
            serving_latency=_latency(w.serving_s),
            errors=w.errors,
            timeouts=w.timeouts,
            dropped=w.dropped,
        )
