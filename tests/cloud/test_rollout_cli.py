"""``fedge cloud rollout …`` locally and with ``--api`` against the real app under uvicorn
(the same database behind both): create from a TOML policy file, list, show, controls and
their refusals in the one error format."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cloud import test_cli_remote as _remote
from tests.cloud.test_cli_remote import Coordinator, fedge, remote

# The running coordinator of the remote CLI tests (uvicorn + the real app), reused.
coordinator = _remote.coordinator
_key_template = _remote._key_template

POLICY_TOML = """
[policies.canary-all]
cohorts = [{count = 1}, {percent = 100}]
bake_s = 30
offline = "skip"
[policies.canary-all.target]
groups = ["lab"]
[policies.canary-all.gates.field]
min_requests = 20
"""


def test_create_locally_show_remotely_and_controls(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    c = coordinator
    for d in ("dev-a", "dev-b", "dev-c"):
        c.enroll(d)
    policy = tmp_path / "policies.toml"
    policy.write_text(POLICY_TOML)
    made = fedge(
        "cloud", "rollout", "create", "cnn@1", "--policy-file", str(policy),
        "--policy", "canary-all", "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    body = json.loads(made.stdout)
    rid = body["rollout_id"]
    assert body["policy"]["offline"] == "skip" and body["policy"]["bake_s"] == 30
    assert [c["size"] for c in body["cohorts"]] == [1, 2]

    shown = remote(c, "cloud", "rollout", "show", rid, "--json", "--events")
    assert shown.exit_code == 0, shown.output
    remote_body = json.loads(shown.stdout)
    assert remote_body["events"][0]["kind"] == "created"
    local_body = json.loads(fedge("cloud", "rollout", "show", rid, "--json").stdout)
    assert {k: v for k, v in remote_body.items() if k != "events"} == local_body

    listed = json.loads(remote(c, "cloud", "rollout", "list", "--json").stdout)
    assert [r["rollout_id"] for r in listed] == [rid]

    denied = remote(c, "cloud", "rollout", "pause", rid)  # a viewer may not
    assert denied.exit_code == 2 and "error (insufficient_role)" in denied.stderr
    paused = remote(c, "cloud", "rollout", "pause", rid, "--json", role="operator")
    assert paused.exit_code == 0 and json.loads(paused.stdout)["control"] == "pause"
    refused = fedge("cloud", "rollout", "resume", rid)  # not paused yet: the leader has not run
    assert refused.exit_code == 2 and "error (invalid_state)" in refused.stderr
    assert c.store.get_rollout(rid).control == "pause"


def test_refusals_in_the_one_error_format(coordinator: Coordinator, tmp_path: Path) -> None:
    coordinator.enroll("dev-a")
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: {groups: [lab]}\ncohorts: [{count: 1, percent: 5}]\n")
    result = fedge("cloud", "rollout", "create", "cnn@1", "--policy-file", str(bad))
    assert result.exit_code == 2 and "error (invalid_policy)" in result.stderr
    assert "exactly one of count and percent" in result.stderr
    result = fedge("cloud", "rollout", "create", "cnn@2", "--group", "lab")
    assert result.exit_code == 2 and "error (not_deployable)" in result.stderr
    result = fedge("cloud", "rollout", "show", "nope")
    assert result.exit_code == 2 and "error (not_found)" in result.stderr
