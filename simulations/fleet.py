"""A local fleet for the system demo: keys, a private TLS broker and real edge agents.

Everything goes through the ``fedge`` command line, exactly as an operator would type it,
so the demo exercises the product's user path: ``fedge keys``, ``fedge broker``,
``fedge edge run`` (one process per device) and ``fedge cloud publish``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud.broker_process import wait_listening

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoDevice:
    """One simulated device: its id, the profile it runs and where it serves HTTP."""

    device_id: str
    profile: Path
    hardware_id: str
    groups: tuple[str, ...]
    http_port: int


def free_port() -> int:
    """An unused TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fedge(*args: str, env: dict[str, str], timeout: float = 900) -> Any:
    """Run ``fedge ARGS --json`` and return its parsed JSON; raise with stderr on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args, "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fedge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout)


def profile_value(profile: Path, key: str) -> Any:
    """A top-level value of a device profile (TOML)."""
    import tomllib

    return tomllib.loads(profile.read_text())[key]


@dataclass
class Fleet:
    """Keys, broker and agents of the demo; :meth:`stop` tears everything down."""

    home: Path
    env: dict[str, str]
    devices: list[DemoDevice]
    broker_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def setup(self) -> None:
        """``fedge keys init``, enroll every device, write the broker config, start it."""
        fedge("keys", "init", env=self.env)
        for dev in self.devices:
            groups = [a for g in dev.groups for a in ("--group", g)]
            fedge(
                "keys",
                "enroll-device",
                dev.device_id,
                "--hardware-id",
                dev.hardware_id,
                *groups,
                env=self.env,
            )
        fedge("broker", "config", "--port", str(self.broker_port), env=self.env)
        log = (self.home / "broker.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulations.cli",
                    "broker",
                    "run",
                    "--port",
                    str(self.broker_port),
                ],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        wait_listening(self.broker_port, timeout=20, proc=self.processes[-1])

    def start_agents(self) -> None:
        """One ``fedge edge run`` process per device, each with its own bundle and state."""
        for dev in self.devices:
            log = (self.home / f"agent-{dev.device_id}.log").open("wb")
            bundle = self.home / "keys" / "devices" / dev.device_id
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "simulations.cli",
                        "edge",
                        "run",
                        "--profile",
                        str(dev.profile),
                        "--device-id",
                        dev.device_id,
                        "--broker",
                        f"mqtts://127.0.0.1:{self.broker_port}",
                        "--bundle",
                        str(bundle),
                        "--state-dir",
                        str(self.home / "devices" / dev.device_id),
                        "--http-port",
                        str(dev.http_port),
                        "--update-quiet",
                        "1",
                    ],
                    env=self.env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def publish(self, version: str) -> dict[str, Any]:
        """``fedge cloud publish VERSION --devices …`` and its per-device report."""
        ids = ",".join(d.device_id for d in self.devices)
        return dict(
            fedge(
                "cloud",
                "publish",
                version,
                "--devices",
                ids,
                "--broker",
                f"127.0.0.1:{self.broker_port}",
                "--timeout",
                "120",
                env=self.env,
            )
        )

    def stop(self) -> None:
        """SIGTERM every process (agents stop cleanly), then SIGKILL stragglers."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self.processes.clear()


def health(dev: DemoDevice, timeout: float = 30) -> dict[str, Any]:
    """The device's ``GET /v1/health`` once it serves a model."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{dev.http_port}/v1/health"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{dev.device_id} serves no model after {timeout}s") from None
            time.sleep(0.2)


def infer(dev: DemoDevice, x: np.ndarray) -> tuple[np.ndarray, str]:
    """``POST /v1/infer`` with a ``.npy`` body; returns (outputs, model version)."""
    import io

    body = io.BytesIO()
    np.save(body, x.astype(np.float32))
    request = urllib.request.Request(
        f"http://127.0.0.1:{dev.http_port}/v1/infer",
        data=body.getvalue(),
        headers={"Content-Type": "application/x-npy"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.loads(resp.read())
    return np.asarray(answer["outputs"]), str(answer["model_version"])
