"""Federated runs on Flower's Deployment Engine: a real SuperLink, real SuperNodes.

The coordinator side of ``fedge cloud federate --engine deployment``:

1. TLS: the SuperLink's server certificate is issued by the project CA in the key home
   (``keys/tls/superlink.{crt,key}``), so devices verify it with the ``ca.crt`` of their
   enrollment bundle.
2. Authentication: the SuperLink runs with ``--enable-supernode-auth``; the SuperNode public
   key each device got at enrollment (its record in the fleet database) is registered with
   ``flwr supernode register`` before the run.
3. The run: a minimal Flower App directory is generated under ``FEDGE_HOME/federation/<run>``
   whose ``pyproject.toml`` names our ServerApp (:mod:`cloud.federation.deployed_app`) and the
   devices' ClientApp (by reference only: ``cloud`` never imports ``edge``); ``flwr run``
   submits it, and the ServerApp's events file streams each round back here.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from cloud.federation.deployed_app import (
    ARTIFACTS_KEY,
    DATABASE_KEY,
    EVENTS_KEY,
    PLAN_KEY,
    plan_to_dict,
    result_from_dict,
)
from cloud.federation.plan import FederationPlan, FederationResult, RoundReport
from cloud.federation.server import RoundCallback
from cloud.federation.simulation import DEFAULT_CLIENT_APP, FederationError, secure_client_app
from cloud.federation.superlink import FlowerCli, SuperLinkProcess, SuperLinkTls
from cloud.fleet.credentials import database_key_home, open_fleet_store
from cloud.keyfiles import write_private, write_public
from cloud.keys import KeyHome
from shared.crypto.tls import issue_server_cert

__all__ = [
    "RegistryLocation",
    "register_fleet",
    "run_deployed_federation",
    "run_fleet_federation",
    "superlink_tls",
    "write_flower_app",
]

log = logging.getLogger(__name__)

SERVER_APP = "cloud.federation.deployed_app:app"


@dataclass(frozen=True)
class RegistryLocation:
    """Where the ServerApp process opens the registry (it cannot share our connection)."""

    database_url: str
    artifact_dir: Path


def superlink_tls(
    keys: KeyHome, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> SuperLinkTls:
    """The SuperLink's TLS files, issued by the project CA on first use.

    A separate certificate from the broker's keeps the two services independently
    rotatable and lets the SuperLink run on another host name.
    """
    tls_dir = keys.tls_dir
    cert, key = tls_dir / "superlink.crt", tls_dir / "superlink.key"
    if not cert.exists() or not key.exists():
        identity = issue_server_cert(keys.ca(), list(hosts), now=datetime.now(UTC))
        write_public(cert, identity.cert_pem)
        write_private(key, identity.key_pem)
        log.info("issued SuperLink certificate for %s", ", ".join(hosts))
    return SuperLinkTls(tls_dir / "ca.crt", cert, key)


def register_fleet(keys: KeyHome, cli: FlowerCli, workdir: Path) -> dict[str, int]:
    """Register every non-revoked enrolled device's SuperNode key; returns node ids by device.

    Devices enrolled before SuperNode keys existed have none and are skipped with a warning:
    they must be re-enrolled to join an authenticated federation.
    """
    pub_dir = workdir / "supernode-keys"
    pub_dir.mkdir(parents=True, exist_ok=True)
    nodes: dict[str, int] = {}
    for device_id, record in sorted(keys.fleet().items()):
        if record.revoked:
            continue
        if not record.supernode_public:
            log.warning("device %s has no SuperNode key; re-enroll it to federate", device_id)
            continue
        path = pub_dir / f"{device_id}.pub"
        path.write_text(record.supernode_public + "\n", encoding="utf-8")
        nodes[device_id] = cli.register_node(path, name=device_id)
    log.info("registered %d SuperNode keys", len(nodes))
    return nodes


def write_flower_app(
    app_dir: Path,
    *,
    plan: FederationPlan,
    registry: RegistryLocation,
    events: Path,
    client_app: str = DEFAULT_CLIENT_APP,
) -> Path:
    """Write the Flower App directory ``flwr run`` bundles into a FAB.

    The FAB only carries ``pyproject.toml``: the components are imported from the installed
    ``fedge`` package on both sides, so nothing executable travels over the wire.
    """
    app_dir.mkdir(parents=True, exist_ok=True)
    plan_path = app_dir / "plan.json"
    plan_path.write_text(json.dumps(plan_to_dict(plan)), encoding="utf-8")
    config = {
        PLAN_KEY: str(plan_path.resolve()),
        DATABASE_KEY: registry.database_url,
        ARTIFACTS_KEY: str(registry.artifact_dir.resolve()),
        EVENTS_KEY: str(events.resolve()),
    }
    config_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in config.items())
    # Flower requires a valid project name/version and a publisher for the FAB id.
    (app_dir / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedge-federation"
version = "1.0.0"
description = "fedge federated run {plan.run_id}"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedge"

[tool.flwr.app.components]
serverapp = "{SERVER_APP}"
clientapp = "{client_app}"

[tool.flwr.app.config]
{config_lines}
""",
        encoding="utf-8",
    )
    return app_dir


class _EventTail:
    """Reads whole new lines of the ServerApp's events file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def poll(self) -> list[dict[str, object]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # a partial last line waits for the next poll
        self.offset += end
        return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks stop the SuperLink."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_deployed_federation(
    plan: FederationPlan,
    superlink: SuperLinkProcess,
    registry: RegistryLocation,
    *,
    workdir: Path,
    on_round: RoundCallback | None = None,
    client_app: str | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
) -> FederationResult:
    """Submit ``plan`` to a running SuperLink and stream its rounds until it finishes.

    Args:
        plan: The run; ``plan.participation.min_available`` SuperNodes must connect.
        superlink: A started SuperLink.
        registry: The registry the ServerApp stores round versions in.
        workdir: Where the app directory and events file of this run are written.
        on_round: Called in this process for each finished round.
        client_app: ``module:attribute`` of the ClientApp the SuperNodes run (default: the
            SecAgg+ ClientApp when the plan uses SecAgg+, else the plain one).
        timeout: Overall seconds before giving up (default: every round's deadlines + slack).
        poll: Seconds between reads of the events file.

    Raises:
        FederationError: the run failed, the SuperLink died, or the timeout passed.
    """
    if client_app is None:
        client_app = secure_client_app(plan) or DEFAULT_CLIENT_APP
    run_dir = workdir / plan.run_id
    events = run_dir / "events.jsonl"
    write_flower_app(
        run_dir / "app", plan=plan, registry=registry, events=events, client_app=client_app
    )
    cli = superlink.cli()
    run_id = cli.submit(run_dir / "app")
    log.info("run %s submitted as Flower run %d", plan.run_id, run_id)
    # Default budget: every round may wait out its deadline (and SecAgg+'s four stages),
    # plus slack for cold ClientApp processes and the final quantization.
    stages = 4 * plan.secagg_timeout if plan.uses_secagg else 0.0
    per_round = plan.round_timeout + stages + 60.0
    budget = timeout if timeout is not None else plan.rounds * per_round + 300.0
    deadline = time.monotonic() + budget
    tail = _EventTail(events)
    next_status = time.monotonic() + 15.0
    finished = False
    flower_ended = ""
    try:
        while True:
            for event in tail.poll():
                kind = event.pop("kind")
                if kind == "round" and on_round is not None:
                    on_round(RoundReport(**event))  # type: ignore[arg-type]
                elif kind == "result":
                    finished = True
                    return result_from_dict(event)
                elif kind == "error":
                    finished = True
                    raise FederationError(f"federated run failed: {event.get('error')}")
            if flower_ended:
                # Flower says the run ended and one more read found no result event.
                finished = True
                raise FederationError(f"Flower run {run_id} ended ({flower_ended}) without result")
            if not superlink.alive():
                raise FederationError(f"the SuperLink died; see {superlink.log_path}")
            if time.monotonic() > deadline:
                raise FederationError(f"run {plan.run_id} did not finish in {budget:.0f}s")
            if time.monotonic() > next_status:
                # The ServerApp may die before writing an event (e.g. killed): ask Flower.
                next_status = time.monotonic() + 15.0
                status = cli.run_status(run_id)
                if status.startswith("finished"):
                    flower_ended = status
            time.sleep(poll)
    finally:
        if not finished:
            cli.stop_run(run_id)


def run_fleet_federation(
    plan: FederationPlan,
    *,
    home: Path,
    registry: RegistryLocation,
    host: str = "127.0.0.1",
    port: int | None = None,
    on_round: RoundCallback | None = None,
    client_app: str | None = None,
) -> FederationResult:
    """``fedge cloud federate --engine deployment``: SuperLink up, fleet registered, run, down.

    Uses the key home at ``home/keys`` (TLS from the project CA, enrolled devices' SuperNode
    keys) and writes the SuperLink's state and each run's app under ``home/federation``.
    The SuperLink (and its ServerApp) is stopped on return, error, Ctrl-C or SIGTERM.
    """
    # The enrollment records (SuperNode keys) are in the fleet database of the registry.
    keys = database_key_home(home / "keys", lambda: open_fleet_store(registry.database_url))
    if not keys.exists():
        raise FederationError(f"no key home at {keys.path}; run `fedge keys init` first")
    workdir = home / "federation"
    superlink = SuperLinkProcess(
        workdir / "superlink", tls=superlink_tls(keys, (host, "localhost")), host=host, port=port
    )
    with sigterm_as_interrupt():
        superlink.start()
        try:
            nodes = register_fleet(keys, superlink.cli(), superlink.workdir)
            if len(nodes) < plan.participation.min_available:
                log.warning(
                    "only %d devices have SuperNode keys; the run waits for %d to connect",
                    len(nodes),
                    plan.participation.min_available,
                )
            log.info("waiting for SuperNodes at %s", superlink.address)
            return run_deployed_federation(
                plan,
                superlink,
                registry,
                workdir=workdir / "runs",
                on_round=on_round,
                client_app=client_app,
            )
        finally:
            superlink.stop()
