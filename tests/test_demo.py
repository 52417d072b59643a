"""``make demo`` end to end with small settings, and its clean-up: no process it started
(agents, SuperNodes and their ClientApps, broker, coordinator, SuperLink, ServerApp)
survives the demo's end, nor a SIGINT in the middle of the federated rounds.

Every descendant of the demo is recorded while it runs (pid + create time, so a reused
pid is not mistaken for a survivor); after the demo exits none of them may be alive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--devices", "4", "--data", "digits", "--epochs", "3", "--rounds", "1",
    "--requests", "30", "--bake", "5",
]  # fmt: skip

pytestmark = pytest.mark.slow


class Watch:
    """The demo process and every descendant it ever had."""

    def __init__(self, home: Path, *extra: str) -> None:
        env = {**os.environ, "FEDGE_HOME": str(home)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulations.demo", *SMALL, *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=(home / "demo.err").open("wb"),
        )
        self.seen: dict[int, float] = {}

    def snapshot(self) -> None:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for p in kids:
            try:
                self.seen[p.pid] = p.create_time()
            except psutil.Error:
                continue

    def wait_until(self, condition: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.snapshot()
            if callable(condition) and condition():
                return True
            time.sleep(0.5)
        return False

    def survivors(self) -> list[str]:
        alive = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid}: {' '.join(p.cmdline())[:160]}")
            except psutil.Error:
                continue
        return alive


def test_demo_runs_the_lifecycle_and_leaves_no_process(tmp_path: Path) -> None:
    watch = Watch(tmp_path, "--json")
    watch.wait_until(None, timeout=900)
    assert watch.proc.stdout is not None
    out = watch.proc.stdout.read().decode()
    rc = watch.proc.wait(60)
    err = (tmp_path / "demo.err").read_text(errors="replace")
    assert rc == 0, err[-4000:]
    summary = json.loads(out)
    assert summary["errors"] == []
    assert len(summary["devices"]) == 4
    assert [r["participants"] for r in summary["rounds"]] == [3]  # the 3 training profiles
    assert summary["rounds"][0]["bytes_up"] > 0
    rollout = summary["rollout"]
    if "plain publish" in rollout["kind"]:
        assert rollout["state"] == "succeeded"
    else:  # the canary's gates decided on measured evidence, whichever way they went
        assert rollout["state"] in ("completed", "aborted", "rolled_back")
        gates = [e for e in rollout["timeline"] if e["kind"] == "gate"]
        assert any(e["gate"] == "shadow" and e["values"]["agreement"] is not None for e in gates)
    assert set(summary["latency_ms"]) == {"hub-1", "traffic-1", "camera-1", "hub-2"}
    assert all(v["requests"] == 30 for v in summary["latency_ms"].values())
    assert summary["dashboard"].startswith("http://127.0.0.1:")
    assert len(watch.seen) >= 8  # broker, coordinator, 4 agents, SuperNodes, SuperLink …
    assert watch.survivors() == []


def test_sigint_during_the_rounds_stops_every_process(tmp_path: Path) -> None:
    watch = Watch(tmp_path)
    log = tmp_path / "demo" / "coordinator.log"

    def federating() -> bool:
        return log.exists() and "waiting for SuperNodes" in log.read_text(errors="replace")

    reached = watch.wait_until(federating, timeout=600)
    assert reached, (tmp_path / "demo.err").read_text(errors="replace")[-4000:]
    watch.wait_until(None, timeout=3)  # let the ServerApp and ClientApps appear
    seen_before = len(watch.seen)
    os.kill(watch.proc.pid, signal.SIGINT)
    rc = watch.proc.wait(120)
    assert rc == 130
    assert seen_before >= 8
    time.sleep(1.0)
    assert watch.survivors() == []
