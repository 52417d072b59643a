"""``run``: the device agent (MQTT status/telemetry, signed updates, local inference).

Every option can also come from a ``FEDGE_*`` environment variable (shown in ``--help``),
so a device's service unit can keep secrets such as the broker password out of its
command line.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from edge.cli_common import (
    HttpMaxConnections,
    HttpTimeout,
    ModelsOpt,
    ProfileOpt,
    SocketPathOpt,
    fail,
    parse_models,
    setup_logging,
)
from edge.cli_profile import load_profile
from edge.cli_supernode import agent_supernode_config
from shared.errors import FedgeError

__all__ = ["run"]


def run(
    profile: ProfileOpt,
    device_id: Annotated[str, typer.Option(envvar="FEDGE_DEVICE_ID", help="This device's id.")],
    broker: Annotated[
        str, typer.Option(envvar="FEDGE_BROKER", help="mqtt://host:port or mqtts://host:port")
    ],
    username: Annotated[str | None, typer.Option(envvar="FEDGE_USERNAME")] = None,
    password: Annotated[str | None, typer.Option(envvar="FEDGE_PASSWORD")] = None,
    cafile: Annotated[str | None, typer.Option(envvar="FEDGE_CAFILE", help="CA bundle.")] = None,
    certfile: Annotated[
        str | None, typer.Option(envvar="FEDGE_CERTFILE", help="Client certificate.")
    ] = None,
    keyfile: Annotated[
        str | None, typer.Option(envvar="FEDGE_KEYFILE", help="Client private key.")
    ] = None,
    model: ModelsOpt = None,
    model_version: Annotated[
        str | None, typer.Option(envvar="FEDGE_MODEL_VERSION", help="Version label of --model.")
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(envvar="FEDGE_HTTP_PORT", help="Serve HTTP on 127.0.0.1:PORT (0 = any)."),
    ] = None,
    http_max_connections: HttpMaxConnections = 32,
    http_timeout: HttpTimeout = 10.0,
    socket_path: SocketPathOpt = None,
    state_dir: Annotated[
        Path, typer.Option(envvar="FEDGE_STATE_DIR", help="Outbox and device state.")
    ] = Path(".fedge/edge"),
    reconnect_max: Annotated[
        float, typer.Option(envvar="FEDGE_RECONNECT_MAX", help="Max reconnect backoff (s).")
    ] = 30.0,
    bundle: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDGE_BUNDLE",
            help="Device enrollment bundle: enables signed model updates; also supplies "
            "the broker credentials and TLS files not given otherwise.",
        ),
    ] = None,
    update_quiet: Annotated[
        float,
        typer.Option(envvar="FEDGE_UPDATE_QUIET", help="Seconds before re-asking for chunks."),
    ] = 2.0,
    superlink: Annotated[
        str | None,
        typer.Option(
            envvar="FEDGE_SUPERLINK",
            help="Coordinator's Flower SuperLink HOST:PORT: run and supervise this device's "
            "SuperNode (profiles with trains = true; needs --bundle and --train-data).",
        ),
    ] = None,
    train_data: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDGE_TRAIN_DATA", help="Local training .npz, or DIR/train.npz (--superlink)."
        ),
    ] = None,
    supernode_port: Annotated[
        int,
        typer.Option(
            envvar="FEDGE_SUPERNODE_PORT", help="Loopback port of the SuperNode's runtime API."
        ),
    ] = 9094,
    shadow_rate: Annotated[
        float,
        typer.Option(
            envvar="FEDGE_SHADOW_RATE",
            min=0.0,
            max=1.0,
            help="Share of requests also run on a shadow candidate (off the caller's path).",
        ),
    ] = 0.25,
    shadow_max_per_s: Annotated[
        float,
        typer.Option(
            envvar="FEDGE_SHADOW_MAX_PER_S", min=0.1, help="Cap on shadow samples per second."
        ),
    ] = 100.0,
    log_level: Annotated[str, typer.Option(envvar="FEDGE_LOG_LEVEL")] = "info",
) -> None:
    """Run the agent until SIGTERM or Ctrl-C."""
    from edge.agent import Agent, AgentConfig  # deferred: keeps `--help` fast
    from edge.inference import ShadowConfig

    setup_logging(log_level)
    try:
        default_model, extra_models = parse_models(model)
        device_profile = load_profile(profile)
        supernode_config = None
        if superlink is not None:
            supernode_config = agent_supernode_config(
                superlink, device_profile, bundle, train_data, state_dir, supernode_port
            )
        config = AgentConfig(
            device_id=device_id,
            broker_url=broker,
            profile=device_profile,
            state_dir=state_dir,
            model_path=default_model,
            model_version=model_version,
            extra_models=extra_models,
            shadow=ShadowConfig(sample_rate=shadow_rate, max_samples_per_s=shadow_max_per_s),
            http_port=http_port,
            http_max_connections=http_max_connections,
            http_timeout_s=http_timeout,
            socket_path=socket_path,
            username=username,
            password=password,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
            reconnect_max_s=reconnect_max,
            update_quiet_s=update_quiet,
            supernode=supernode_config,
        )
        if bundle is not None:  # signed updates; the bundle fills in credentials not given
            config = config.with_bundle(bundle)
        agent = Agent(config)
    except FedgeError as exc:
        fail(exc)
        return
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.request_stop())
    try:
        code = agent.run()
    except FedgeError as exc:
        fail(exc)
        return
    raise typer.Exit(code)
