"""The demo's lifecycle after the stack is up: train, federate, roll out, serve traffic.

Each stage returns plain data for the summary (:mod:`simulations.demo.report`); every
number in it is measured in this run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulations.demo.control import ControlClient
from simulations.demo.stack import Stack, trains
from simulations.fleet import DemoDevice, health, infer

__all__ = ["DemoSettings", "Traffic", "federate", "first_install", "roll_out", "train"]


@dataclass(frozen=True)
class DemoSettings:
    """The knobs of one demo run (the defaults are ``make demo``'s)."""

    devices: int = 4
    data: str = "mnist-5k"
    epochs: int = 12
    rounds: int = 3
    local_epochs: int = 1
    requests: int = 200
    secagg: bool = True
    rollout_bake_s: float = 20.0
    timeout_s: float = 600.0


def train(data: str, epochs: int) -> dict[str, Any]:
    """Train the starting model and quantize it (verified in LiteRT): the registry's v1."""
    from cloud.cli.common import open_registry
    from cloud.quantization import quantize_version
    from cloud.training import TrainConfig
    from cloud.training.workflow import TrainRequest, train_and_register

    registry = open_registry()
    try:
        version = train_and_register(
            registry, TrainRequest(data=data, config=TrainConfig(epochs=epochs))
        )
        report = quantize_version(registry, version.ref)
    finally:
        registry.close()
    return {
        "version": version.ref,
        "float_accuracy": version.metrics.get("test_accuracy"),
        "seconds": version.metrics.get("seconds"),
        "deployable": report.selected,
    }


def _wait(what: str, timeout: float, poll: Any, interval: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = poll()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f}s")
        time.sleep(interval)


def first_install(api: ControlClient, version: str, devices: list[DemoDevice]) -> dict[str, Any]:
    """Publish the starting model to every device (a plain publish: nothing serves yet, so
    there is no model to shadow against)."""
    job = api.post(
        "/v1/deployments", {"version": version, "devices": [d.device_id for d in devices]}
    )
    path = f"/v1/deployments/{job['deployment_id']}"

    def done() -> Any:
        current = api.get(path)
        return current if current["state"] not in ("pending", "running") else None

    result = _wait("the first install", 300, done)
    for dev in devices:
        health(dev, timeout=60)  # serving now
    return dict(result)


def federate(api: ControlClient, stack: Stack, settings: DemoSettings, init: str) -> dict[str, Any]:
    """Federated rounds on the Deployment Engine: the training devices' own SuperNodes,
    each on its own partition, SecAgg+ on; the best round is quantized."""
    learners = [d.device_id for d in stack.devices if trains(d)]
    run = api.post(
        "/v1/federation/runs",
        {
            "engine": "deployment",
            "devices": learners,
            "data": settings.data,
            "rounds": settings.rounds,
            "local_epochs": settings.local_epochs,
            "lr": 0.01,  # fine-tuning a trained model: a gentle step keeps what it knows
            "init": init,
            "secagg": settings.secagg,
            "secagg_impl": "fedge" if settings.secagg else None,  # ours (protocol §17)
            "round_timeout": 300.0,
            "quantize": True,
        },
    )
    path = f"/v1/federation/runs/{run['run_id']}"

    def done() -> Any:
        current = api.get(path)
        final = ("succeeded", "failed", "stopped")
        return current if current["state"] in final else None

    return dict(_wait("the federated run", settings.timeout_s, done, interval=3.0))


def _policy(devices: list[DemoDevice], bake_s: float) -> dict[str, Any]:
    """Canary (1 device) then the rest; gated on shadow agreement and latency."""
    return {
        "target": {"devices": [d.device_id for d in devices]},
        "cohorts": [{"count": 1}, {"percent": 100.0}],
        "bake_s": bake_s,
        "device_timeout_s": 180.0,
        "gates": {
            # a demo-sized policy: thresholds an operator would tighten for a real fleet
            "shadow": {
                "min_agreement": 0.8,
                "max_latency_factor": 5.0,
                "min_samples": 20,
                "bake_s": bake_s,
            },
            "field": {"max_latency_factor": 5.0, "min_requests": 20, "baseline_s": 900.0},
        },
    }


def roll_out(
    api: ControlClient, version: str, devices: list[DemoDevice], settings: DemoSettings
) -> dict[str, Any]:
    """A staged rollout of ``version`` if the coordinator has ``/v1/rollouts``, else a
    plain publish (``kind`` says which)."""
    if not api.has_path("/v1/rollouts"):
        result = first_install(api, version, devices)
        return {"kind": "plain publish (no staged-rollout service)", "deployment": result}
    rollout = api.post(
        "/v1/rollouts",
        {"version": version, "policy": _policy(devices, settings.rollout_bake_s), "name": "demo"},
    )
    path = f"/v1/rollouts/{rollout['rollout_id']}"

    def done() -> Any:
        current = api.get(path)
        final = ("completed", "aborted", "rolled_back")
        return current if current["state"] in final else None

    final = _wait("the rollout", settings.timeout_s, done, interval=2.0)
    events = api.get(f"{path}/events?limit=500")["items"]
    return {
        "kind": "staged rollout (canary, shadow + latency gates)",
        "rollout": final,
        "events": events,
    }


class Traffic:
    """Local inference on every device's HTTP endpoint, in a thread, until stopped."""

    def __init__(self, devices: list[DemoDevice], data: str, per_device: int) -> None:
        from cloud.data import load_dataset
        from cloud.data.datasets import stratified_split

        split = stratified_split(load_dataset(data), seed=0)
        self.x, self.y = split.test_x[:per_device], split.test_y[:per_device]
        self.devices = devices
        self.pause_s = 0.02  # ~40 requests/s per device in the background
        self.stats: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _inputs(self, dev: DemoDevice) -> np.ndarray:
        from cloud.quantization.convert import InputLayout, to_layout

        shape = health(dev)["model"]["input"]["shape"]
        # images are NCHW as torch trained on them; an NHWC model says so in its input shape
        return (
            self.x if list(self.x.shape[1:]) == shape[1:] else to_layout(self.x, InputLayout.NHWC)
        )

    def one_pass(self, pause_s: float = 0.0, *, background: bool = False) -> None:
        """``per_device`` requests to each device; records latency and accuracy.

        ``pause_s`` between requests keeps background traffic from starving the training
        (the demo machine is small); the final measurement runs without it."""
        for dev in self.devices:
            xs = self._inputs(dev)
            latencies, correct, version = [], 0, "?"
            for i in range(len(xs)):
                if background and self._stop.is_set():
                    return
                start = time.perf_counter()
                out, version = infer(dev, xs[i : i + 1])
                latencies.append((time.perf_counter() - start) * 1000)
                correct += int(np.argmax(out) == self.y[i])
                if pause_s:
                    self._stop.wait(pause_s)
            self.stats[dev.device_id] = {
                "version": version,
                "requests": len(latencies),
                "accuracy": correct / max(1, len(latencies)),
                "p50_ms": float(np.percentile(latencies, 50)),
                "p99_ms": float(np.percentile(latencies, 99)),
            }

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.one_pass(pause_s=self.pause_s, background=True)
            except (OSError, RuntimeError):  # a device swapping models: try again
                time.sleep(0.5)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
