"""Real federated runs on Flower's Simulation Engine (Ray): 3 devices, several rounds.

Kept small (digits, 3 clients, 2-3 rounds, 2 CPUs) so each test stays well under a minute.
"""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from cloud.cli.federate import register
from cloud.federation.plan import FederationPlan, RoundReport
from cloud.federation.simulation import run_simulated_federation
from cloud.registry import Registry, VersionSource


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_fedavg_rounds_improve_and_land_in_the_registry_with_lineage(registry: Registry) -> None:
    streamed: list[RoundReport] = []
    plan = FederationPlan(
        data="digits",
        num_clients=3,
        rounds=3,
        local_epochs=2,
        run_id="run-t1",
        secure_aggregation=False,  # this test is about the plain int8 path
    )
    result = run_simulated_federation(plan, registry, on_round=streamed.append)

    assert [r.round for r in streamed] == [1, 2, 3]
    assert streamed[-1].accuracy > result.initial_accuracy + 0.3
    assert streamed[-1].accuracy > streamed[0].accuracy
    raw = streamed[0].bytes_down // 3
    for r in streamed:
        assert (r.participants, r.rejected, r.failed) == (3, 0, 0)
        assert r.bytes_down == 3 * raw
        assert r.raw_bytes_up == 3 * raw
        assert r.bytes_up <= 0.27 * r.raw_bytes_up  # int8 deltas, not float32 weights

    versions = sorted(registry.list_versions("cnn-digits-fl"), key=lambda v: v.number)
    assert [v.source_ref for v in versions] == [
        "run-t1/round-1",
        "run-t1/round-2",
        "run-t1/round-3",
    ]
    assert all(v.source == VersionSource.FEDERATED for v in versions)
    assert [v.parent for v in versions] == [None, versions[0].ref, versions[1].ref]
    assert [v.metrics["test_accuracy"] for v in versions] == [r.accuracy for r in streamed]

    # The best round went through the foundation quantization pipeline.
    assert result.best_version == max(streamed, key=lambda r: r.accuracy).version
    assert result.quantization is not None and result.quantization["version"] == result.best_version
    best = registry.get_version(result.best_version)
    tflite = [a for a in best.artifacts if a.format == "tflite"]
    assert tflite, "quantization stored no TFLite artifact"
    assert result.deployable == (result.quantization["selected"] is not None)


def test_cli_federate_streams_json_and_survives_a_nan_client() -> None:
    """Partition 0 sends NaNs every round: rejected, the other two carry the rounds."""
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
            "--local-epochs", "3",
            "--no-quantize",
            "--no-secagg",
            "--client-app", "tests.federation.faulty_client:app",
            "--json",
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout[out.stdout.index("{") :])
    rounds = payload["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert (r["participants"], r["rejected"]) == (2, 1)
    assert rounds[-1]["accuracy"] > payload["initial_accuracy"] + 0.2
