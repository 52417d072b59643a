"""The same scenario on a Ray cluster: a local head + one worker node on 127.0.0.1, the
tiny scenario's clients run as actors on it through ``RAY_ADDRESS``.

The cluster is started with ``ray start --block`` in its own process groups and stopped by
signalling exactly those groups: ``ray stop`` would kill every Ray process on the host,
including other users' clusters and simulations.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
TINY = Path(__file__).with_name("tiny.toml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(20)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """``host:port`` of a fresh 2-node local cluster (1 CPU each)."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # A short private temp dir: Ray's socket paths must fit in 107 bytes, and the default
    # /tmp/ray is shared with any other Ray on the host.
    temp = tempfile.mkdtemp(prefix="fr", dir="/tmp")
    common = ["--num-cpus=1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen(
        [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--include-dashboard=false", f"--temp-dir={temp}", *common],
        cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    procs = [head]
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(
            [str(RAY), "status", f"--address={address}"], capture_output=True, check=False
        ).returncode:
            if time.monotonic() > deadline or head.poll() is not None:
                pytest.fail("the Ray head did not come up")
            time.sleep(2)
        worker = subprocess.Popen(
            [str(RAY), "start", f"--address={address}", "--node-ip-address=127.0.0.1", *common],
            cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(worker)
        while _node_count(address) < 2:
            if time.monotonic() > deadline or worker.poll() is not None:
                pytest.fail("the Ray worker did not join")
            time.sleep(2)
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _nodes(address: str) -> bytes:
    return subprocess.run(
        [str(RAY), "status", f"--address={address}"], capture_output=True, check=False
    ).stdout


def _node_count(address: str) -> int:
    out = _nodes(address).decode(errors="replace")
    active = out.split("Active:")[-1].split("Pending:")[0] if "Active:" in out else ""
    return sum(1 for line in active.splitlines() if "node_" in line)


@pytest.mark.slow
def test_the_tiny_scenario_runs_on_a_two_node_ray_cluster(ray_cluster: str, tmp_path: Path) -> None:
    env = os.environ | {"RAY_ADDRESS": ray_cluster, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "sim", "run", str(TINY), "--rounds", "1",
         "--json", "--out", str(tmp_path / "report")],
        cwd=ROOT, env=env, capture_output=True, check=False, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    metrics = json.loads(done.stdout)
    # Two 1-CPU actors cannot share a 1-CPU node: the clients ran on both nodes.
    assert metrics["engine"] == f"ray ({ray_cluster}): 2 actors on 2 node(s)"
    (r,) = metrics["strategies"]["fedavg"]["rounds"]
    assert r["participants"] == 3 and r["participation"]["completed"] == 3
    assert metrics["rollouts"][0]["state"] == "completed"
