# ruff: noqa: F811  (pytest fixtures imported from test_rollout_candidates)
"""``fedge cloud rollout drop-candidate``: help, argument checks, the JSON answer per device
and the exit code (0 when no device holds the candidate any more, 1 otherwise), over the
in-memory broker with devices that verify the signed command."""

from __future__ import annotations

import json

import pytest
from click.testing import Result
from typer.testing import CliRunner

from cloud.cli import common
from cloud.keys import KeyHome
from simulations.cli import app
from tests.cloud.test_rollout_candidates import (  # noqa: F401  (fixtures)
    _fleet,
    _info,
    broker,
    home,
)
from tests.fakes.broker import InMemoryBroker


def _drop(*args: str) -> Result:
    return CliRunner().invoke(app, ["cloud", "rollout", "drop-candidate", *args])


def test_help_names_the_options() -> None:
    result = _drop("--help")
    assert result.exit_code == 0
    for option in ("--devices", "--artifact", "--broker", "--timeout", "--json"):
        assert option in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--devices", "dev-a", "--artifact", "A" * 32), "32 lowercase hex"),
        (("--devices", " , ", "--artifact", "a" * 32), "no device ids"),
        (("--artifact", "a" * 32), "--devices"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(
    args: tuple[str, ...], message: str
) -> None:
    result = _drop(*args)
    assert result.exit_code == 2 and message in result.output


def test_json_answers_and_exit_codes(
    broker: InMemoryBroker, home: KeyHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common, "key_home", lambda: home)
    devices = _fleet(broker, home, dev_a=_info(2, "a" * 32), dev_c=_info(2, "c" * 32))
    done = _drop("--devices", "dev-a,dev-b", "--artifact", "a" * 32, "--json", "--timeout", "1")
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert body["artifact_id"] == "a" * 32
    assert [(d["device_id"], d["outcome"], d["reason"]) for d in body["devices"]] == [
        ("dev-a", "dropped", None),
        ("dev-b", "not_held", "no_candidate"),
    ]
    assert devices["dev-a"].candidate is None
    refused = _drop("--devices", "dev-c", "--artifact", "a" * 32, "--timeout", "1")
    assert refused.exit_code == 1
    assert "dev-c: drop_candidate seq" in refused.stdout
    assert "failed (candidate_mismatch)" in refused.stdout
    assert devices["dev-c"].candidate is not None
