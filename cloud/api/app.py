"""The coordinator's control API: :func:`create_app` builds the FastAPI application.

Nothing happens at import. The long-lived resources (registry, fleet store, key home,
deployment jobs) are opened by the lifespan when the server starts — built from the
settings unless the caller passes its own :class:`~cloud.api.deps.Resources` — and closed
when it stops (only those the lifespan built: passed-in resources belong to the caller).

Layout ("bigger applications"): ``deps`` (resources, ``Depends`` aliases, audit), ``auth``
(bearer tokens, roles), ``errors`` (RFC 9457 problems, body limit), ``jobs`` (background
publishes), ``federation_jobs`` (federated runs), ``routes/<resource>`` (one router each,
under ``/v1``; health and metrics at the root).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from cloud.api.deps import HealthCheck, Resources
from cloud.api.errors import (
    MAX_BODY_BYTES,
    install_error_handlers,
    problem_media_types,
)
from cloud.api.federation_jobs import FederationJobs
from cloud.api.jobs import DeploymentJobs
from cloud.api.middleware import BodyLimitMiddleware
from cloud.api.routes import deployments, devices, federation, health, models, telemetry, tokens
from cloud.api.routes import rollouts as rollout_routes
from cloud.api.routes.dashboard import include_dashboard
from cloud.broker import BrokerFiles
from cloud.config import Settings
from cloud.deployment.publisher import Publisher
from cloud.fleet.credentials import database_key_home
from cloud.fleet.store import FleetStore
from cloud.registry import Registry

__all__ = ["broker_address", "build_resources", "create_app"]

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
DEFAULT_BROKER = ("127.0.0.1", 8883)
_LISTENER = re.compile(r"listener\s+(\d{1,5})\s+(\S+)")


def broker_address(files: BrokerFiles) -> tuple[str, int]:
    """The TLS listener of the generated broker configuration (default 127.0.0.1:8883)."""
    try:
        lines = files.conf.read_text(encoding="utf-8").splitlines()
    except OSError:
        return DEFAULT_BROKER
    for line in lines:
        match = _LISTENER.fullmatch(line.strip())
        if match:
            host = match[2] if match[2] not in ("0.0.0.0", "::") else "127.0.0.1"
            return host, int(match[1])
    return DEFAULT_BROKER


def database_check(registry: Registry) -> HealthCheck:
    """Readiness: a ``SELECT 1`` on the registry's engine."""

    def check() -> tuple[bool, str]:
        try:
            with registry.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            return False, f"database unreachable: {exc.__class__.__name__}"
        return True, registry.engine.dialect.name

    return check


def broker_check(files: BrokerFiles, timeout: float = 1.0) -> HealthCheck:
    """Readiness: the broker configuration exists and its listener accepts TCP."""

    def check() -> tuple[bool, str]:
        if not files.conf.exists():
            return False, f"no broker configuration in {files.directory}"
        host, port = broker_address(files)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            return False, f"broker {host}:{port} unreachable: {exc.__class__.__name__}"
        return True, f"{host}:{port}"

    return check


def build_resources(settings: Settings, *, broker: tuple[str, int] | None = None) -> Resources:
    """Open everything the API serves from, as the settings say.

    Args:
        settings: Where the state lives.
        broker: The broker's TLS listener for publishes; None: the listener of the
            configuration in ``$FEDGE_HOME/broker`` (read per job), else 127.0.0.1:8883.

    Raises:
        RegistryError: the database cannot be opened or migrated.
    """
    registry = Registry.from_settings(settings)
    try:
        store = FleetStore.from_registry(registry)
        home = database_key_home(settings.home / "keys", store)  # records in the database
        files = BrokerFiles(settings.home / "broker")

        def publisher() -> Publisher:
            host, port = broker or broker_address(files)  # per job: the config may change
            return Publisher(registry, home, host=host, port=port)

        jobs = DeploymentJobs(store, home, publisher)
        federation = FederationJobs(registry, store, home=settings.home)
    except BaseException:
        registry.close()
        raise
    return Resources(
        registry=registry,
        store=store,
        home=home,
        jobs=jobs,
        federation=federation,
        broker_files=files,
        health={"database": database_check(registry), "broker": broker_check(files)},
    )


def create_app(
    settings: Settings,
    resources: Resources | None = None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The control API application.

    Args:
        settings: Where the state lives (used by the lifespan when ``resources`` is None).
        resources: Serve from these (the caller opens and closes them); None: the lifespan
            builds them with :func:`build_resources` and closes them at shutdown.
        max_body_bytes: Request bodies over this are refused (413).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = resources is None
        res: Resources = (
            resources
            if resources is not None
            else await run_in_threadpool(build_resources, settings)
        )
        app.state.resources = res
        try:
            yield
        finally:
            if owned:
                app.state.resources = None
                await run_in_threadpool(res.close)

    app = FastAPI(
        title="fedge coordinator",
        version=API_VERSION,
        summary="Control API: fleet, models, deployments, telemetry, federation.",
        lifespan=lifespan,
    )
    if resources is not None:  # usable even without a lifespan run (ASGI test clients)
        app.state.resources = resources
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    for module in (devices, models, deployments, telemetry, federation, tokens):
        app.include_router(module.router)
    app.include_router(health.build_router(metrics_public=settings.metrics_public))
    app.include_router(rollout_routes.router)
    app.include_router(rollout_routes.policies_router)
    include_dashboard(app)  # the operator dashboard at / and its live updates

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            app.openapi_schema = problem_media_types(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
