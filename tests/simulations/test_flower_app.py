"""The simulation as a Flower App: our ServerApp and the devices' ClientApp on Flower's own
Simulation Engine (Ray), the runtime ``flwr run`` uses for a local simulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = Path(__file__).with_name("tiny.toml")


@pytest.mark.slow
def test_the_flower_app_runs_the_scenario_on_flowers_simulation_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.simulation import run_simulation

    from edge.learning.client_app import app as client_app
    from simulations.flower_app import app as server_app

    monkeypatch.setenv("FEDGE_SIM_SCENARIO", str(TINY))
    monkeypatch.setenv("FEDGE_SIM_ROUNDS", "1")
    monkeypatch.setenv("FEDGE_SIM_OUT", str(tmp_path / "report"))
    monkeypatch.setenv("FEDGE_SIM_NODES", "4")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=4,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False},
        },
    )
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["engine"] == "flower-grid"
    # The fleet was sized so that its training devices are Flower's 4 SuperNodes.
    assert metrics["fleet"]["trainers"] == 4
    (r,) = metrics["strategies"]["fedavg"]["rounds"]
    assert r["participants"] == 3 and r["participation"]["online"] == 4
    assert metrics["rollouts"][0]["state"] == "completed"
    assert (tmp_path / "report" / "report.html").is_file()
