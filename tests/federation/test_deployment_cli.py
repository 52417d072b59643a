"""``fedge cloud federate --engine deployment`` end to end, with the project's own key home.

The CLI starts the SuperLink (TLS from ``FEDGE_HOME/keys``), registers the enrolled
devices' SuperNode keys and runs; the devices' SuperNodes are started *before* the
SuperLink exists, so they are refused or unreachable at first and only get in through the
supervisor's restarts — the order a real fleet sees after a coordinator restart.

Device ``cli-a`` is a real edge agent process (``fedge edge run --superlink … --bundle …
--train-data …`` with the training hub profile, on an MQTT broker over TLS) that starts and
supervises its own SuperNode; SIGTERM ends the agent and the SuperNode's whole tree.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import typer
from typer.testing import CliRunner

from cloud.cli.federate import register
from cloud.config import Settings
from cloud.data import load_dataset
from cloud.data.datasets import stratified_split
from cloud.federation.partition import partition
from cloud.federation.superlink import free_port
from cloud.keys import KeyHome
from cloud.registry import Registry
from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.protocol import topics
from tests.helpers.mosquitto import MosquittoBroker
from tests.helpers.mqtt import Recorder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DEVICES = ("cli-a", "cli-b")
AGENT = "cli-a"  # runs as `fedge edge run`; the other device as a bare supervisor


def _tls_broker(keys: KeyHome) -> tuple[MosquittoBroker, int]:
    """Mosquitto with a plain listener (for the test's recorder) and a TLS one (the agent's,
    served with the key home's broker certificate)."""
    tls_port = free_port()
    tls = keys.tls_dir
    broker = MosquittoBroker(
        # Run as us (not mosquitto's default user), so it can read the key home's files.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {tls / 'ca.crt'}\ncertfile {tls / 'broker.crt'}\nkeyfile {tls / 'broker.key'}"
    )
    broker.start()
    return broker, tls_port


def _start_agent(
    keys: KeyHome, data: Path, superlink_port: int, broker_port: int, state: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "edge",
        "run",
        f"--profile={ROOT / 'firmware_configs/smart_home_hub.toml'}",
        f"--device-id={AGENT}",
        f"--broker=mqtts://127.0.0.1:{broker_port}",
        f"--bundle={keys.device_dir(AGENT)}",
        f"--superlink=127.0.0.1:{superlink_port}",
        f"--train-data={data}",
        f"--supernode-port={free_port()}",
        f"--state-dir={state}",
    ]
    state.parent.mkdir(parents=True, exist_ok=True)
    log = (state.parent / "agent.log").open("wb")
    try:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _runs_supernode(proc: subprocess.Popen[bytes]) -> bool:
    for child in _descendants(proc):
        try:
            if "flower-supernode" in " ".join(child.cmdline()):
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _descendants(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        return list(psutil.Process(proc.pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def test_cli_deployment_engine_streams_rounds_from_the_enrolled_fleet(tmp_path: Path) -> None:
    home = Path(os.environ["FEDGE_HOME"])
    keys = KeyHome(home / "keys")
    keys.init()
    split = stratified_split(load_dataset("digits"), seed=0)
    shares = partition(split.train_y, len(DEVICES), alpha=None, seed=0)
    port = free_port()
    nodes = []
    agent_data = tmp_path / f"{AGENT}.npz"
    for device, idx in zip(DEVICES, shares, strict=True):
        keys.enroll_device(device, hardware_id=f"hw-{device}")
        data = tmp_path / f"{device}.npz"
        np.savez(data, x=split.train_x[idx], y=split.train_y[idx])
        if device == AGENT:
            continue
        config = SuperNodeConfig.from_bundle(
            f"127.0.0.1:{port}",
            keys.device_dir(device),
            data,
            runtime_port=free_port(),
            log_path=tmp_path / f"{device}.log",
            flwr_home=tmp_path / f"flwr-{device}",
            backoff_initial=1.0,
            backoff_max=4.0,
        )
        nodes.append(SuperNodeSupervisor(config))
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `federate` a named subcommand
        pass

    broker, tls_port = _tls_broker(keys)
    recorder = Recorder(broker.host, broker.port, topics.device_status(AGENT))
    agent = _start_agent(keys, agent_data, port, tls_port, tmp_path / "agent" / "state")
    supernode_tree: list[psutil.Process] = []
    try:
        for node in nodes:
            node.start()
        # The agent is up on MQTT (TLS, bundle credentials) and has started its SuperNode.
        recorder.wait_for(lambda ms: any(b'"online"' in m.payload for m in ms), timeout=60)
        deadline = time.monotonic() + 30
        while not _runs_supernode(agent):
            assert time.monotonic() < deadline, "the agent did not start its SuperNode"
            time.sleep(0.2)
        result = CliRunner().invoke(
            app,
            [
                "federate",
                "--engine=deployment",
                f"--superlink-port={port}",
                "--clients=2",
                "--min-clients=2",
                "--rounds=2",
                "--local-epochs=1",
                "--round-timeout=120",
                "--no-secagg",
                "--no-quantize",
                "--json",
            ],
        )
        assert agent.poll() is None, "the agent died during the run"
        supernode_tree = _descendants(agent)
        assert _runs_supernode(agent)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0
    finally:
        for node in nodes:
            node.stop()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        recorder.close()
        broker.stop()
    # SIGTERM ended the agent's SuperNode, SuperExec and any ClientApp with it.
    _, alive = psutil.wait_procs(supernode_tree, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(r["round"], r["participants"]) for r in out["rounds"]] == [(1, 2), (2, 2)]
    assert out["rounds"][-1]["accuracy"] > out["initial_accuracy"]
    registry = Registry.from_settings(Settings())
    try:
        refs = [str(v.source_ref) for v in registry.list_versions("cnn-digits-fl")]
    finally:
        registry.close()
    assert sorted(refs) == [f"{out['run_id']}/round-1", f"{out['run_id']}/round-2"]
    # The SuperLink stopped with the command: its port can be bound again.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
