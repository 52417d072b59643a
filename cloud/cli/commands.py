"""``fedge cloud rollback DEVICE`` and ``fedge cloud command ACTION DEVICE``.

Register them on the cloud app with :func:`register` (``cloud/cli.py`` owns the app).
Exit code 0 when the device carried the command out, 1 when it refused it or did not
answer in time, 2 on an error (unknown device, broker unreachable, bad key home).
"""

from __future__ import annotations

from typing import Annotated

import typer

from cloud.cli.common import cli_errors, emit_json
from shared.protocol.commands import CommandAction

__all__ = ["command_cmd", "register", "rollback_cmd"]

_BROKER_HELP = "Broker TLS listener host:port."


def _run(
    action: CommandAction,
    device: str,
    *,
    broker: str,
    timeout: float,
    json_out: bool,
    to_version: int | None = None,
    artifact_id: str | None = None,
) -> None:
    from cloud.cli.common import key_home
    from cloud.deployment.commands import send_command
    from cloud.deployment.link import parse_broker

    with cli_errors():
        host, port = parse_broker(broker)
        home = key_home()  # the enrollment records are in the fleet database
        result = send_command(
            home,
            action,
            device,
            host=host,
            port=port,
            to_version=to_version,
            artifact_id=artifact_id,
            timeout_s=timeout,
        )
    if json_out:
        emit_json(result.to_dict())
    else:
        reason = f" ({result.reason})" if result.reason else ""
        version = f" v{result.version}" if result.version else ""
        typer.echo(
            f"{result.device_id}: {result.action} seq {result.seq}: {result.outcome}"
            f"{version}{reason}"
        )
    if result.outcome not in ("rolled_back", "dropped", "requested"):
        raise typer.Exit(1)


def rollback_cmd(
    device: Annotated[str, typer.Argument(help="Device id.")],
    to_version: Annotated[
        int | None,
        typer.Option("--to-version", help="Only if the previous slot holds this version."),
    ] = None,
    broker: Annotated[
        str, typer.Option("--broker", envvar="FEDGE_BROKER", help=_BROKER_HELP)
    ] = "127.0.0.1:8883",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 30.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Signed rollback: the device re-activates its previous committed model.

    The anti-rollback floor does not go down: manifests for older versions stay refused.
    """
    _run(
        CommandAction.ROLLBACK,
        device,
        broker=broker,
        timeout=timeout,
        json_out=json_out,
        to_version=to_version,
    )


def command_cmd(
    action: Annotated[
        CommandAction, typer.Argument(help="rollback | report_missing | drop_candidate.")
    ],
    device: Annotated[str, typer.Argument(help="Device id.")],
    to_version: Annotated[
        int | None, typer.Option("--to-version", help="rollback: expected target version.")
    ] = None,
    artifact_id: Annotated[
        str | None,
        typer.Option(
            "--artifact-id",
            help="report_missing: only this download; drop_candidate: the candidate (required).",
        ),
    ] = None,
    broker: Annotated[
        str, typer.Option("--broker", envvar="FEDGE_BROKER", help=_BROKER_HELP)
    ] = "127.0.0.1:8883",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 30.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Send any signed command to one device and report its answer."""
    _run(
        action,
        device,
        broker=broker,
        timeout=timeout,
        json_out=json_out,
        to_version=to_version,
        artifact_id=artifact_id,
    )


def register(cloud_app: typer.Typer) -> None:
    """Add ``rollback`` and ``command`` to the ``fedge cloud`` app."""
    cloud_app.command("rollback")(rollback_cmd)
    cloud_app.command("command")(command_cmd)
