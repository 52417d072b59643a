"""An API over a real registry, fleet store and key home (SQLite and PostgreSQL), with the
in-memory broker as the publisher's transport and a token of every role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cloud.api import Resources, create_app
from cloud.api.jobs import DeploymentJobs
from cloud.config import Settings
from cloud.deployment.link import CoordinatorTransport
from cloud.deployment.publisher import Publisher
from cloud.fleet.credentials import database_key_home
from cloud.fleet.records import Role
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from cloud.registry import ArtifactStatus, Registry, VersionSource
from cloud.registry.registry import NewArtifact
from tests.fakes.broker import InMemoryBroker, device_acl

INT8 = b"int8-model-" * 50
FLOAT32 = b"float32-model-" * 400


@dataclass
class Api:
    """A client, what it serves from, and a bearer header per role."""

    client: TestClient
    resources: Resources
    broker: InMemoryBroker
    health: dict[str, tuple[bool, str]]
    tokens: dict[str, str] = field(default_factory=dict)  # role/"revoked" → secret
    token_ids: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> FleetStore:
        return self.resources.store

    @property
    def home(self) -> KeyHome:
        return self.resources.home

    def auth(self, who: str) -> dict[str, str]:
        """Headers for ``who`` ∈ viewer, operator, admin, revoked, wrong, none."""
        if who == "none":
            return {}
        if who == "wrong":
            return {"Authorization": "Bearer not-a-token-" + "x" * 40}
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def enroll(self, device_id: str, groups: tuple[str, ...] = ()) -> dict[str, object]:
        """Token + enroll through the API; returns the bundle."""
        made = self.client.post(
            "/v1/devices/enrollment-tokens",
            json={"device_id": device_id, "hardware_id": "hw-a", "groups": list(groups)},
            headers=self.auth("operator"),
        )
        assert made.status_code == 201, made.text
        bundle = self.client.post("/v1/devices/enroll", json={"token": made.json()["token"]})
        assert bundle.status_code == 201, bundle.text
        result: dict[str, object] = bundle.json()
        return result


@pytest.fixture(scope="session")
def _key_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = KeyHome(tmp_path_factory.mktemp("keys-template") / "keys")
    home.init()
    return home.path


def _copy_home(template: Path, target: Path, store: FleetStore) -> KeyHome:
    import shutil

    shutil.copytree(template, target)
    return database_key_home(target, store)  # as build_resources: records in the database


@pytest.fixture()
def api(database_url: str, tmp_path: Path, _key_template: Path) -> Iterator[Api]:
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    registry = Registry(database_url, tmp_path / "artifacts")
    store = FleetStore.from_registry(registry)
    home = _copy_home(_key_template, tmp_path / "home" / "keys", store)
    broker = InMemoryBroker(device_acl)

    def connect(subscriptions: list[str]) -> CoordinatorTransport:
        client: CoordinatorTransport = broker.connect("fedge-coordinator", subscriptions)
        return client

    def publisher() -> Publisher:
        return Publisher(registry, home, host="-", port=0, connect=connect)

    jobs = DeploymentJobs(store, home, publisher, timeout_s=2.0, discover_s=0.2)
    health = {"database": (True, "db"), "broker": (True, "fake")}
    resources = Resources(
        registry=registry,
        store=store,
        home=home,
        jobs=jobs,
        broker_files=None,
        health={
            "database": lambda: health["database"],
            "broker": lambda: health["broker"],
        },
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
        artifacts=[
            NewArtifact("tflite", "int8", INT8 + b"2", ArtifactStatus.REJECTED, reason="drop"),
        ],
    )
    app = create_app(settings, resources)
    api = Api(TestClient(app), resources, broker, health)
    for role in Role:
        secret, record = store.create_api_token(role, name=f"test-{role}", now=0.0)
        api.tokens[str(role)], api.token_ids[str(role)] = secret, record.token_id
    secret, record = store.create_api_token(Role.ADMIN, name="revoked", now=0.0)
    store.revoke_api_token(record.token_id, at=1.0)
    api.tokens["revoked"], api.token_ids["revoked"] = secret, record.token_id
    with api.client:
        yield api
    resources.close()
