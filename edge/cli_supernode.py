"""This device's Flower SuperNode: the ``supernode`` command, and its config for ``run``.

:mod:`edge.learning.supernode` is imported only when a SuperNode is wanted: only training
devices run one, and it keeps ``--help`` fast.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from edge.cli_common import fail, setup_logging
from shared.errors import ConfigError, FedgeError
from shared.profiles import DeviceProfile

__all__ = ["agent_supernode_config", "supernode"]


def agent_supernode_config(
    superlink: str,
    profile: DeviceProfile,
    bundle: Path | None,
    train_data: Path | None,
    state_dir: Path,
    runtime_port: int,
) -> Any:
    """The SuperNode the agent supervises (imported lazily: it is only for training devices).

    Raises:
        ConfigError: the profile does not train, or the bundle or training data is missing.
    """
    if not profile.trains:
        raise ConfigError(
            f"--superlink given, but profile {profile.name!r} does not train (trains = false): "
            "only training devices run a Flower SuperNode"
        )
    if bundle is None:
        raise ConfigError("--superlink needs --bundle (ca.crt and supernode.key)")
    if train_data is None:
        raise ConfigError("--superlink needs --train-data (a local .npz, or DIR/train.npz)")
    from edge.learning.supernode import SuperNodeConfig

    return SuperNodeConfig.from_bundle(
        superlink,
        bundle,
        train_data,
        runtime_port=runtime_port,
        log_path=state_dir / "supernode.log",
        flwr_home=state_dir / "flower",
    )


def supernode(
    superlink: Annotated[
        str, typer.Option(envvar="FEDGE_SUPERLINK", help="Coordinator's SuperLink HOST:PORT.")
    ],
    bundle: Annotated[
        Path,
        typer.Option(envvar="FEDGE_BUNDLE", help="Enrollment bundle (ca.crt, supernode.key)."),
    ],
    data: Annotated[
        Path,
        typer.Option(envvar="FEDGE_TRAIN_DATA", help="Local training .npz, or DIR/train.npz."),
    ],
    runtime_port: Annotated[
        int, typer.Option(help="Loopback port of the SuperNode's own runtime API.")
    ] = 9094,
    state_dir: Annotated[
        Path, typer.Option(envvar="FEDGE_STATE_DIR", help="Device state (Flower's under flower/).")
    ] = Path(".fedge/edge"),
    log_level: Annotated[str, typer.Option(envvar="FEDGE_LOG_LEVEL")] = "info",
) -> None:
    """Run this device's Flower SuperNode (TLS + key auth), restarting it if it dies."""
    from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor

    setup_logging(log_level)
    try:
        config = SuperNodeConfig.from_bundle(
            superlink, bundle, data, runtime_port=runtime_port, flwr_home=state_dir / "flower"
        )
        node = SuperNodeSupervisor(config)
        node.start()
    except FedgeError as exc:
        fail(exc)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    node.stop()
