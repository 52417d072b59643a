"""``fedge … --api URL``: the CLI against a running coordinator (the real app under uvicorn).

The API serves from a real registry, fleet store and key home in ``FEDGE_HOME``, so the
local mode of the same command reads the same database; the deployment jobs publish
through the in-memory broker (no broker process) with a short timeout, and fake devices on
it commit or stay silent.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from cloud.api import Resources, create_app
from cloud.api.jobs import DeploymentJobs
from cloud.config import Settings
from cloud.deployment.link import CoordinatorTransport
from cloud.deployment.publisher import Publisher
from cloud.fleet.records import Role, StatusRecord
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from simulations.cli import app
from tests.cloud.test_publish_session import FakeDevice
from tests.fakes.broker import InMemoryBroker, device_acl
from tests.helpers.mosquitto import free_port

INT8 = b"int8-model-" * 50


@dataclass
class Coordinator:
    """A running control API and what it serves from."""

    url: str
    store: FleetStore
    registry: Registry
    home: KeyHome
    broker: InMemoryBroker
    jobs: DeploymentJobs
    tokens: dict[str, str] = field(default_factory=dict)
    broker_down: list[bool] = field(default_factory=lambda: [False])

    def enroll(self, device_id: str, groups: tuple[str, ...] = ("lab",)) -> None:
        """In the key home (the publish targets) and in the fleet store (the listing)."""
        self.home.enroll_device(device_id, hardware_id="hw-a", groups=list(groups))
        self.store.add_device(
            device_id, hardware_id="hw-a", profile="pi4", groups=groups, enrolled_at=time.time()
        )


@pytest.fixture(scope="module")
def _key_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = KeyHome(tmp_path_factory.mktemp("keys-template") / "keys")
    home.init()
    return home.path


@pytest.fixture()
def coordinator(
    tmp_path: Path, _key_template: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Coordinator]:
    settings = Settings(home=tmp_path / "home")
    monkeypatch.setenv("FEDGE_HOME", str(settings.home))
    monkeypatch.setenv("FEDGE_CONFIG", str(tmp_path / "no-fedge.toml"))
    monkeypatch.delenv("FEDGE_API_URL", raising=False)
    monkeypatch.delenv("FEDGE_API_TOKEN", raising=False)
    registry = Registry.from_settings(settings)
    store = FleetStore.from_registry(registry)
    shutil.copytree(_key_template, settings.home / "keys")
    home = KeyHome(settings.home / "keys")
    broker = InMemoryBroker(device_acl)
    down = [False]
    closed_port = free_port()

    def connect(subscriptions: list[str]) -> CoordinatorTransport:
        client: CoordinatorTransport = broker.connect("fedge-coordinator", subscriptions)
        return client

    def publisher() -> Publisher:
        if down[0]:  # the real MQTT link, to a port nothing listens on
            return Publisher(registry, home, host="127.0.0.1", port=closed_port)
        return Publisher(registry, home, host="-", port=0, connect=connect)

    jobs = DeploymentJobs(store, home, publisher, timeout_s=1.5, discover_s=0.2)
    resources = Resources(
        registry=registry,
        store=store,
        home=home,
        jobs=jobs,
        health={"database": lambda: (True, "db"), "broker": lambda: (True, "fake")},
    )
    registry.create_version(
        "cnn",
        spec={},
        source=VersionSource.TRAINED,
        artifacts=[NewArtifact("tflite", "int8", INT8, ArtifactStatus.APPROVED)],
    )
    registry.create_version(
        "cnn",
        spec={},
        source=VersionSource.TRAINED,
        parent="cnn@1",
        artifacts=[NewArtifact("tflite", "int8", INT8 + b"2", ArtifactStatus.REJECTED, "drop")],
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, resources), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the API did not start"
        time.sleep(0.05)
    c = Coordinator(f"http://127.0.0.1:{port}", store, registry, home, broker, jobs)
    c.broker_down = down
    for role in (Role.VIEWER, Role.OPERATOR):
        c.tokens[str(role)], _ = store.create_api_token(role, name=f"cli-{role}", now=0.0)
    yield c
    server.should_exit = True
    thread.join(10)
    resources.close()


def fedge(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def remote(c: Coordinator, *args: str, role: str = "viewer") -> Result:
    return fedge(*args, "--api", c.url, "--token", c.tokens[role])


def _seed_fleet(c: Coordinator) -> None:
    now = time.time()
    for i in range(7):
        c.store.add_device(
            f"dev-{i}",
            hardware_id="hw-a",
            profile="pi4" if i % 2 else "cam",
            groups=["lab"] if i < 4 else ["field"],
            tags=["red"] if i in (1, 5) else [],
            enrolled_at=now - 100 + i,
        )
    serving = {
        "model_id": "cnn",
        "version": 1,
        "artifact_id": "ab" * 16,
        "sha256": "0" * 64,
        "precision": "int8",
        "slot": "a",
    }
    c.store.record_statuses(
        [
            StatusRecord(
                "dev-2", "m1", now, now, "online", {"state": "online", "serving": serving}
            ),
            StatusRecord("dev-3", "m2", now, now, "online", {"state": "online"}),
        ]
    )


def _ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [d["device_id"] for d in json.loads(result.stdout)]


# --- devices list ---------------------------------------------------------------------------


def test_devices_list_remote_equals_local_across_pages(coordinator: Coordinator) -> None:
    c = coordinator
    _seed_fleet(c)
    local = fedge("devices", "list", "--json")
    assert local.exit_code == 0, local.output
    # 7 devices, 3 per page: the client follows next_cursor over 3 pages.
    walked = remote(c, "devices", "list", "--json", "--page-size", "3")
    assert walked.exit_code == 0, walked.output
    assert json.loads(walked.stdout) == json.loads(local.stdout)
    devices = json.loads(walked.stdout)
    assert [d["device_id"] for d in devices] == [f"dev-{i}" for i in range(7)]
    assert set(devices[0]) == {
        "device_id",
        "profile",
        "hardware_id",
        "groups",
        "tags",
        "broker_identity",
        "enrolled_at",
        "revoked_at",
        "online",
        "last_seen",
        "state",
        "serving",
        "model_version",
    }
    paged_local = fedge("devices", "list", "--json", "--page-size", "2")
    assert json.loads(paged_local.stdout) == devices

    table = remote(c, "devices", "list")
    assert table.exit_code == 0, table.output
    assert "dev-6" in table.stdout and "devices (7)" in table.stdout
    assert table.stdout == fedge("devices", "list").stdout


def test_devices_list_filters_remote_and_local(coordinator: Coordinator) -> None:
    c = coordinator
    _seed_fleet(c)
    cases: list[tuple[list[str], list[str]]] = [
        (["--group", "lab"], ["dev-0", "dev-1", "dev-2", "dev-3"]),
        (["--tag", "red"], ["dev-1", "dev-5"]),
        (["--profile", "cam"], ["dev-0", "dev-2", "dev-4", "dev-6"]),
        (["--online"], ["dev-2", "dev-3"]),
        (["--offline", "--group", "lab"], ["dev-0", "dev-1"]),
        (["--model-version", "1"], ["dev-2"]),
        (["--group", "field", "--tag", "red"], ["dev-5"]),
        (["--group", "nobody"], []),
    ]
    for flags, expected in cases:
        got = _ids(remote(c, "devices", "list", "--json", "--page-size", "1", *flags))
        assert got == expected, flags
        assert _ids(fedge("devices", "list", "--json", *flags)) == expected, flags


def test_the_url_and_token_come_from_the_environment(coordinator: Coordinator) -> None:
    c = coordinator
    _seed_fleet(c)
    env = {"FEDGE_API_URL": c.url, "FEDGE_API_TOKEN": c.tokens["viewer"]}
    # FEDGE_HOME points at an empty home: the answer can only have come from the API.
    env["FEDGE_HOME"] = str(Path(c.home.path).parent.parent / "elsewhere")
    assert len(_ids(fedge("devices", "list", "--json", env=env))) == 7


# --- models list ----------------------------------------------------------------------------


def test_models_list_remote(coordinator: Coordinator) -> None:
    c = coordinator
    listed = remote(c, "models", "list", "--json")
    assert listed.exit_code == 0, listed.output
    versions = json.loads(listed.stdout)
    assert [v["version"] for v in versions] == ["cnn@1", "cnn@2"]
    assert [v["ref"] for v in versions] == ["cnn@1", "cnn@2"]
    assert versions[1]["parent"] == "cnn@1"
    assert [a["status"] for a in versions[0]["artifacts"]] == ["approved"]
    local = json.loads(fedge("models", "list", "--json").stdout)
    assert [v["version"] for v in local] == [v["version"] for v in versions]
    only = remote(c, "models", "list", "--model", "ghost", "--json")
    assert json.loads(only.stdout) == []
    table = remote(c, "models", "list")
    assert table.exit_code == 0, table.output
    assert "cnn@1" in table.stdout and "int8:approved" in table.stdout
    assert "int8:rejected" in table.stdout


# --- errors ---------------------------------------------------------------------------------


def test_a_wrong_or_missing_token_is_a_clear_error(coordinator: Coordinator) -> None:
    c = coordinator
    for args in (("devices", "list"), ("models", "list", "--json")):
        wrong = fedge(*args, "--api", c.url, "--token", "not-a-token-" + "x" * 40)
        assert wrong.exit_code == 2
        assert "error (invalid_token): unknown or revoked bearer token" in wrong.stderr
        assert "not-a-token" not in wrong.output  # the secret is never printed
        assert wrong.stdout == ""
    missing = fedge("devices", "list", "--api", c.url)
    assert missing.exit_code == 2
    assert "error (missing_token): a bearer token is required" in missing.stderr


def test_an_unreachable_or_bad_url_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for args in (("devices", "list"), ("models", "list"), ("cloud", "publish", "m@1", "-d", "a")):
        result = fedge(*args, "--api", url, "--token", "t")
        assert result.exit_code == 2, result.output
        assert f"error (api_unreachable): cannot reach the coordinator API at {url}" in (
            result.stderr
        )
    bad = fedge("devices", "list", "--api", "ftp://example.org")
    assert bad.exit_code == 2
    assert "error (invalid_api_url)" in bad.stderr and "ftp://example.org" in bad.stderr


# --- publish --------------------------------------------------------------------------------


def test_publish_remote_refused_up_front(coordinator: Coordinator) -> None:
    c = coordinator
    c.enroll("dev-a")
    rejected = remote(c, "cloud", "publish", "cnn@2", "-d", "dev-a", role="operator")
    assert rejected.exit_code == 2
    assert "error (not_deployable): cnn@2 has no deployable TFLite artifact" in rejected.stderr
    unknown = remote(c, "cloud", "publish", "cnn@1", "-d", "nope", role="operator")
    assert unknown.exit_code == 2
    assert "error (not_found): device nope is not enrolled" in unknown.stderr
    viewer = remote(c, "cloud", "publish", "cnn@1", "-d", "dev-a")
    assert viewer.exit_code == 2
    assert "error (insufficient_role)" in viewer.stderr
    neither = remote(c, "cloud", "publish", "cnn@1", role="operator")
    assert neither.exit_code == 2
    assert "error (config_error): give either --devices or --group" in neither.stderr
    assert c.store.list_deployments().items == []  # nothing was started


def test_publish_remote_commits_like_the_local_publish(coordinator: Coordinator) -> None:
    c = coordinator
    for device_id in ("dev-a", "dev-b"):
        c.enroll(device_id)
        FakeDevice(c.broker, device_id).start()
    result = remote(c, "cloud", "publish", "cnn@1", "--group", "lab", "--json", role="operator")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    local_keys = {
        "version",
        "artifact_sha256",
        "bytes_sent",
        "seconds",
        "phases",
        "dropped_messages",
        "devices",
    }
    assert local_keys <= set(report)
    assert report["version"] == "cnn@1" and report["state"] == "succeeded"
    assert report["artifact_sha256"] == c.registry.deployable_artifact("cnn@1").sha256
    assert report["bytes_sent"] > 0
    assert {d: r["outcome"] for d, r in report["devices"].items()} == {
        "dev-a": "committed",
        "dev-b": "committed",
    }
    assert set(report["devices"]["dev-a"]) == {
        "device_id",
        "outcome",
        "reason",
        "encoding",
        "base_version",
        "precision",
        "artifact_id",
        "choice",
    }
    assert report["devices"]["dev-a"]["precision"] == "int8"
    assert report["devices"]["dev-a"]["choice"]["precision"] == "int8"

    human = remote(c, "cloud", "publish", "cnn@1", "-d", "dev-a,dev-b", role="operator")
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert lines[0].startswith("dev-a: committed [") and lines[1].startswith("dev-b: committed")
    assert " bytes sent in " in lines[2]


def test_publish_remote_to_a_silent_device_exits_1(coordinator: Coordinator) -> None:
    c = coordinator
    c.enroll("dev-a")
    FakeDevice(c.broker, "dev-a", answer="silent").start()
    result = remote(c, "cloud", "publish", "cnn@1", "-d", "dev-a", role="operator")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[0].startswith("dev-a: timeout")

    # The CLI gives up before the coordinator does: still pending, reported as a timeout.
    early = remote(
        c, "cloud", "publish", "cnn@1", "-d", "dev-a", "--timeout", "0.2", "--json", role="operator"
    )
    assert early.exit_code == 1, early.output
    report = json.loads(early.stdout)
    assert report["state"] in ("pending", "running")
    assert report["devices"]["dev-a"]["outcome"] == "timeout"
    assert "still publishing" in report["devices"]["dev-a"]["reason"]
    c.jobs.wait(report["deployment_id"], timeout=30)


def test_publish_remote_when_the_coordinator_cannot_reach_its_broker(
    coordinator: Coordinator,
) -> None:
    c = coordinator
    c.enroll("dev-a")
    c.broker_down[0] = True
    result = remote(c, "cloud", "publish", "cnn@1", "-d", "dev-a", role="operator")
    assert result.exit_code == 2, result.output
    # What the local publish says when the broker is down (exit 2), named by deployment.
    assert "error (config_error): deployment " in result.stderr
    assert "cannot reach broker 127.0.0.1:" in result.stderr


# --- federate -------------------------------------------------------------------------------


def test_federate_remote_prints_the_servers_problem(coordinator: Coordinator) -> None:
    c = coordinator
    # The server accepts only its built-in data sets (never a path on its disk): the CLI
    # sends the run and prints the server's refusal (no training starts).
    result = remote(c, "cloud", "federate", "--data", "/etc/passwd", role="operator")
    assert result.exit_code == 2
    assert "error (" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    viewer = remote(c, "cloud", "federate")
    assert viewer.exit_code == 2 and "error (insufficient_role)" in viewer.stderr


@pytest.mark.parametrize(
    "args",
    [("devices",), ("devices", "list"), ("models", "list"), ("cloud", "publish")],
)
def test_help_names_the_api_option(args: tuple[str, ...]) -> None:
    result = fedge(*args, "--help")
    assert result.exit_code == 0
    if args != ("devices",):
        assert "--api" in result.stdout
    else:
        assert "list" in result.stdout
