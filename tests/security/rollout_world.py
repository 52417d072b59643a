"""A field for the rollout end-to-end tests: real Mosquitto (TLS, passwords, ACLs from
``cloud.broker``), real agents as processes (``python -m edge run --bundle``) serving real
LiteRT models under live HTTP load, and ``fedge cloud serve`` as processes (SQLite or
PostgreSQL) running ingestion and the rollout leader. The test talks to the coordinator
through its API only, and watches the wire as the broker's monitor identity."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from cloud.fleet.records import Role
from cloud.fleet.store import FleetStore
from cloud.keys import MONITOR_USER, KeyHome
from cloud.registry import Registry
from shared.artifacts.manifest import manifest_from_bytes
from shared.protocol import topics
from shared.protocol.codec import decode_message_as
from shared.protocol.messages import ManifestMessage
from tests.helpers.mosquitto import free_port
from tests.security.conftest import Client, FleetBroker, connect

ROOT = Path(__file__).resolve().parents[2]

PROFILE = """
name = "rollout-e2e"
device_class = "sensor"
hardware_id = "hw-a"
inference_threads = 1
ram_mb = 256
storage_mb = 64
max_model_bytes = 8_000_000
precisions = ["int8", "float32"]
telemetry_interval_s = 1.0
groups = ["field"]
"""


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@dataclass
class Field:
    """Broker, agents, coordinators and a load generator under one FEDGE_HOME."""

    base: Path
    broker: FleetBroker
    registry: Registry
    devices: list[str]
    database_url: str | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http: dict[str, int] = field(default_factory=dict)
    coordinators: list[tuple[subprocess.Popen[bytes], int]] = field(default_factory=list)
    token: str = ""
    monitor: Client | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _load: threading.Thread | None = None

    @property
    def home(self) -> KeyHome:
        return self.broker.home

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FEDGE_HOME": str(self.base)}
        env["FEDGE_SHADOW_RATE"] = "1.0"  # every request is shadowed: evidence in seconds
        env["FEDGE_CONFIG"] = str(self.base / "no-fedge.toml")
        env.pop("FEDGE_DATABASE_URL", None)
        if self.database_url:
            env["FEDGE_DATABASE_URL"] = self.database_url
        return env

    # -- agents ---------------------------------------------------------------------------

    def start_agent(self, device_id: str) -> None:
        port = self.http.setdefault(device_id, free_port())
        self.agents[device_id] = subprocess.Popen(
            [
                sys.executable, "-m", "edge", "run", "--profile", str(self.base / "profile.toml"),
                "--device-id", device_id, "--broker", f"mqtts://127.0.0.1:{self.broker.port}",
                "--bundle", str(self.home.device_dir(device_id)),
                "--state-dir", str(self.base / "agents" / device_id), "--http-port", str(port),
                "--reconnect-max", "1", "--update-quiet", "0.5", "--log-level", "warning",
            ],
            cwd=ROOT, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill_agent(self, device_id: str) -> None:
        proc = self.agents.pop(device_id, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def serving(self, device_id: str) -> str | None:
        """The model version the agent's /v1/health reports (None: none or unreachable)."""
        try:
            body = httpx.get(f"http://127.0.0.1:{self.http[device_id]}/v1/health", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return None
        model = body.get("model") or {}
        version = model.get("version")
        return None if version is None else str(version)

    def start_load(self, per_device_hz: float = 15.0) -> None:
        """Live inference requests to every running agent (what telemetry then reports)."""
        rng = np.random.default_rng(0)
        sample = {"inputs": rng.random((1, 1, 28, 28), dtype=np.float32).tolist()}

        def run() -> None:
            with httpx.Client(timeout=2.0) as client:
                while not self._stop.is_set():
                    for device_id in list(self.agents):
                        url = f"http://127.0.0.1:{self.http[device_id]}/v1/infer"
                        with contextlib.suppress(httpx.HTTPError):  # a restarting agent
                            client.post(url, json=sample)
                    self._stop.wait(1.0 / per_device_hz)

        self._load = threading.Thread(target=run, name="load", daemon=True)
        self._load.start()

    # -- coordinators ---------------------------------------------------------------------

    def start_coordinator(self, lease_poll: float = 0.3) -> int:
        port = free_port()
        log = open(self.base / f"serve-{len(self.coordinators)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "simulations.cli", "cloud", "serve", "--port", str(port),
                "--lease-poll", str(lease_poll),
            ],
            cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.coordinators.append((proc, port))
        wait_for("the API", lambda: self._ready(port, proc), timeout=90)
        return port

    def _ready(self, port: int, proc: subprocess.Popen[bytes]) -> bool:
        assert proc.poll() is None, f"fedge cloud serve exited with {proc.returncode}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_coordinator(self, port: int) -> None:
        for proc, p in self.coordinators:
            if p == port and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)

    def api(self, method: str, path: str, port: int, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = httpx.request(
            method, f"http://127.0.0.1:{port}{path}", headers=headers, timeout=10, **kw
        )
        assert answer.status_code < 300, answer.text
        return answer.json()

    def rollout(self, port: int, rollout_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/v1/rollouts/{rollout_id}", port))

    def wait_state(
        self, port: int, rollout_id: str, states: set[str], timeout: float = 120
    ) -> dict[str, Any]:
        return dict(
            wait_for(
                f"rollout in {states}",
                lambda: (r := self.rollout(port, rollout_id))["state"] in states and r,
                timeout,
            )
        )

    def events(self, port: int, rollout_id: str) -> list[dict[str, Any]]:
        page = self.api("GET", f"/v1/rollouts/{rollout_id}/events", port, params={"limit": 1000})
        return list(page["items"])

    # -- the wire ---------------------------------------------------------------------------

    def watch_manifests(self) -> None:
        self.monitor = connect(self.broker, MONITOR_USER)
        self.monitor.subscribe(topics.all_devices(topics.DeviceLeaf.MANIFEST))

    def manifests_sent(self, version: int, purpose: str = "install") -> Counter[str]:
        """Manifest messages of ``version`` for ``purpose`` seen per device (a publish may
        also send ``trial`` manifests to time variants first)."""
        assert self.monitor is not None
        out: Counter[str] = Counter()
        with self.monitor.acked:
            messages = list(self.monitor.messages)
        for topic, payload in messages:
            if not payload:
                continue  # a withdrawn (cleared) retained manifest
            envelope = decode_message_as(payload, ManifestMessage).envelope
            manifest = manifest_from_bytes(envelope.payload_bytes())
            if manifest.version == version and str(manifest.purpose) == purpose:
                out[topic.split("/")[3]] += 1
        return out

    def close(self) -> None:
        self._stop.set()
        if self._load is not None:
            self._load.join(5)
        for proc, _ in self.coordinators:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for device_id in list(self.agents):
            self.kill_agent(device_id)
        if self.monitor is not None:
            self.monitor.close()


def operator_token(store: FleetStore) -> str:
    secret, _ = store.create_api_token(Role.OPERATOR, name="e2e", now=time.time())
    return secret
