"""``fedge sim run`` end to end on the tiny scenario: the real ServerApp, the devices' real
ClientApp, the guard, the registry, the delivery plane, the report files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from simulations.cli import app

TINY = Path(__file__).with_name("tiny.toml")


def _run(scenario: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        app, ["sim", "run", str(scenario), "--json", "--out", str(out), *extra]
    )
    assert result.exit_code == 0, result.output
    metrics: dict[str, Any] = json.loads(result.stdout)
    return metrics


def test_tiny_scenario_trains_rolls_out_and_writes_the_report(tmp_path: Path) -> None:
    metrics = _run(TINY, tmp_path / "report", "--rounds", "2")

    assert metrics["engine"] == "in-process"
    assert metrics["fleet"]["devices"] == 10 and metrics["fleet"]["trainers"] == 6
    run = metrics["strategies"]["fedavg"]
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    for r in run["rounds"]:
        p = r["participation"]
        # Always online, no dropout, a generous deadline: everyone sampled replies.
        assert (p["online"], p["sampled"], p["completed"]) == (6, 3, 3)
        assert r["participants"] == 3 and r["rejected"] == 0
        assert 0 < r["bytes_up"] < 0.3 * r["bytes_down"]  # int8 deltas up, float32 down
    assert run["final_accuracy"] > run["initial_accuracy"]
    (rollout,) = metrics["rollouts"]
    assert rollout["state"] == "completed" and rollout["installed"] == 10
    assert rollout["version"] == run["rounds"][-1]["version"]
    for name in (
        "report.html",
        "metrics.json",
        "accuracy.png",
        "bytes.png",
        "participation.png",
        "rollout.png",
    ):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert (tmp_path / "report" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        json.loads((tmp_path / "report" / "metrics.json").read_text())["rollouts"]
        == metrics["rollouts"]
    )


def test_an_injected_canary_failure_is_an_aborted_rollout_in_the_report(
    tmp_path: Path, tiny_variant: Callable[[str], Path]
) -> None:
    scenario = tiny_variant("[faults]\ncanary_failure_release = 1\n")
    metrics = _run(scenario, tmp_path / "report", "--rounds", "1")

    (rollout,) = metrics["rollouts"]
    assert rollout["state"] == "aborted" and rollout["installed"] == 0
    assert [s["cohort"] for s in rollout["stages"]] == [0]  # the rest never started
    assert rollout["stages"][0]["reverted"] == 2
    page = (tmp_path / "report" / "report.html").read_text()
    assert "class='aborted'>aborted<" in page and "reverted in probation" in page


def test_a_bad_scenario_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace('partitioner = "iid"', 'partitioner = "zipf"'))
    result = CliRunner().invoke(app, ["sim", "run", str(bad), "--json"])
    assert result.exit_code == 2
    assert "error (config_error): scenario bad.toml: data.partitioner" in result.output
    missing = CliRunner().invoke(app, ["sim", "run", "atlantis"])
    assert missing.exit_code == 2 and "no scenario 'atlantis'" in missing.output
