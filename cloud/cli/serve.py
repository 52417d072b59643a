"""``fedge cloud serve``: the coordinator service (control API, ingestion, retention).

Runs in the foreground until SIGTERM or Ctrl-C, then stops in order: the API (requests in
progress finish), ingestion (the batch in flight is committed and acknowledged; the broker
keeps the session), the background jobs, the database. See :mod:`cloud.service`.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from cloud.cli.common import cli_errors

__all__ = ["serve_cmd"]


def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port the API listens on.")] = 8000,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            envvar="FEDGE_BROKER",
            help="Broker TLS listener host:port (default: the listener of the generated "
            "config in $FEDGE_HOME/broker, else 127.0.0.1:8883).",
        ),
    ] = None,
    retention_days: Annotated[
        float, typer.Option("--retention-days", min=0.001, help="Days of telemetry kept.")
    ] = 7.0,
    lease_poll: Annotated[
        float,
        typer.Option(
            "--lease-poll",
            envvar="FEDGE_LEASE_POLL_S",
            min=0.05,
            max=60.0,
            help="Seconds between two rollout passes of the leader, and between two tries "
            "of a standby to take the leader lease (the bound on a takeover).",
        ),
    ] = 1.0,
    deployment_stale: Annotated[
        float,
        typer.Option(
            "--deployment-stale",
            envvar="FEDGE_DEPLOYMENT_STALE_S",
            min=10.0,
            max=3600.0,
            help="Seconds without a heartbeat (every 5 s) after which a deployment job "
            "another serve process was running counts as orphaned and is marked failed.",
        ),
    ] = 15.0,
) -> None:
    """Run the coordinator: control API, device ingestion and telemetry retention."""
    with cli_errors():
        from cloud.config import Settings
        from cloud.deployment.link import parse_broker
        from cloud.service import serve

        if not os.environ.get("FEDGE_LOG_LEVEL") and logging.getLogger().level > logging.INFO:
            logging.getLogger("cloud").setLevel(logging.INFO)  # a service says what it does
        address = parse_broker(broker) if broker else None
        if not 0 < port < 65536:
            raise typer.BadParameter(f"invalid port {port}", param_hint="--port")
        status = serve(
            Settings(),
            host,
            port,
            broker=address,
            retention_s=retention_days * 86400.0,
            lease_poll_s=lease_poll,
            deployment_stale_s=deployment_stale,
        )
    if status:
        raise typer.Exit(status)
