"""fedge SecAgg on Flower's Simulation Engine (Ray), driven by ``fedge cloud federate``.

Three virtual devices on digits, two rounds, the shipped protocol and real training; device
0 diverges (NaN delta) and must drop out before masking, on the device, since the server
cannot inspect its update. The Deployment Engine path (SuperLink + 3 SuperNodes) is in
``test_deployment.py``.
"""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from cloud.cli.federate import register

pytestmark = pytest.mark.slow


def test_cli_federate_under_fedge_secagg_reports_packed_bytes_and_epsilon() -> None:
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps Typer in sub-command mode
        """Unused."""

    out = CliRunner().invoke(
        app,
        [
            "federate",
            "--data", "digits",
            "--clients", "3",
            "--rounds", "2",
            "--min-clients", "2",
            "--no-quantize",
            "--secagg", "fedge",
            "--secagg-timeout", "60",
            "--dp-noise", "0.0002",  # tiny noise (std 0.002): exercises the DP path and ε
            "--client-app", "tests.federation.faulty_client:secure_app",
            "--json",
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout[out.stdout.index("{") :])
    rounds = payload["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert (r["participants"], r["failed"]) == (2, 1)  # the diverged device dropped out
        # Packed masked vectors: under half the float32 size of the same two updates.
        assert 0 < r["bytes_up"] <= 0.5 * r["raw_bytes_up"]
    assert rounds[-1]["accuracy"] > payload["initial_accuracy"] + 0.2
    assert payload["secure_aggregation"] == "fedge-secagg"
    assert payload["epsilon"] == rounds[-1]["epsilon"] > rounds[0]["epsilon"] > 0
