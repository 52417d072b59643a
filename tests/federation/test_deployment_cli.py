"""``fedge cloud federate --engine deployment`` end to end, with the project's own key home.

The CLI starts the SuperLink (TLS from ``FEDGE_HOME/keys``), registers the enrolled
devices' SuperNode keys and runs; the devices' SuperNodes are started *before* the
SuperLink exists, so they are refused or unreachable at first and only get in through the
supervisor's restarts — the order a real fleet sees after a coordinator restart.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cloud.config import Settings
from cloud.data import load_dataset
from cloud.data.datasets import stratified_split
from cloud.federation.cli import register
from cloud.federation.partition import partition
from cloud.federation.superlink import free_port
from cloud.keys import KeyHome
from cloud.registry import Registry
from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor

pytestmark = pytest.mark.slow

DEVICES = ("cli-a", "cli-b")


def test_cli_deployment_engine_streams_rounds_from_the_enrolled_fleet(tmp_path: Path) -> None:
    home = Path(os.environ["FEDGE_HOME"])
    keys = KeyHome(home / "keys")
    keys.init()
    split = stratified_split(load_dataset("digits"), seed=0)
    shares = partition(split.train_y, len(DEVICES), alpha=None, seed=0)
    port = free_port()
    nodes = []
    for device, idx in zip(DEVICES, shares, strict=True):
        keys.enroll_device(device, hardware_id=f"hw-{device}")
        data = tmp_path / f"{device}.npz"
        np.savez(data, x=split.train_x[idx], y=split.train_y[idx])
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

    try:
        for node in nodes:
            node.start()
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
    finally:
        for node in nodes:
            node.stop()
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
