"""``fedge cloud publish VERSION --devices ID… | --group NAME [--json]``.

Register it on the cloud app with :func:`register` (``cloud/cli.py`` owns the app).
Exit code 0 when every device committed, 1 when any failed or timed out, 2 on an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from cloud.cli.common import cli_errors, emit_json

if TYPE_CHECKING:
    from cloud.deployment.report import PublishReport

__all__ = ["publish_cmd", "register"]


def _split(values: list[str] | None) -> list[str]:
    # Accept both `--devices a --devices b` and `--devices a,b`.
    return [v for raw in values or [] for v in raw.split(",") if v]


def publish_cmd(
    version: Annotated[str, typer.Argument(help="MODEL@N (or MODEL for its latest version).")],
    devices: Annotated[
        list[str] | None,
        typer.Option("--devices", "-d", help="Target device id (repeat, or comma-separate)."),
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Every device of a group.")] = None,
    broker: Annotated[
        str,
        typer.Option("--broker", envvar="FEDGE_BROKER", help="Broker TLS listener host:port."),
    ] = "127.0.0.1:8883",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Send an approved (never a rejected) artifact to devices and report per-device outcome."""
    from cloud.config import Settings
    from cloud.deployment.link import parse_broker
    from cloud.deployment.publisher import Outcome, Publisher, select_devices
    from cloud.keys import KeyHome
    from cloud.registry import Registry

    with cli_errors():
        host, port = parse_broker(broker)
        settings = Settings()
        home = KeyHome(settings.home / "keys")
        targets = select_devices(home, _split(devices), group)
        registry = Registry.from_settings(settings)
        publisher = Publisher(registry, home, host=host, port=port)
        try:
            with _progress(len(targets), enabled=not json_out) as on_progress:
                report = publisher.publish(
                    version, targets, timeout_s=timeout, on_progress=on_progress
                )
        finally:
            registry.close()
    if json_out:
        emit_json(report.to_dict())
    else:
        for result in report.devices.values():
            reason = f" ({result.reason})" if result.reason else ""
            typer.echo(f"{result.device_id}: {result.outcome}{reason} [{result.encoding}]")
        typer.echo(f"{report.bytes_sent} bytes sent in {report.seconds:.1f} s")
        phases = " · ".join(f"{name} {at:.2f} s" for name, at in report.phases.items())
        if phases:
            typer.echo(f"timeline: {phases}")
    if any(r.outcome is not Outcome.COMMITTED for r in report.devices.values()):
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[PublishReport], None] | None]:
    """A progress bar of devices with an outcome (on stderr; none for ``--json``)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from cloud.deployment.publisher import Outcome

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("devices done", total=total)

        def update(report: PublishReport) -> None:
            results = report.devices.values()
            done = sum(r.outcome is not Outcome.TIMEOUT for r in results)
            failed = sum(r.outcome is Outcome.FAILED for r in results)
            bar.update(task, completed=done, description=f"devices done ({failed} failed)")

        yield update


def register(cloud_app: typer.Typer) -> None:
    """Add ``publish`` to the ``fedge cloud`` app."""
    cloud_app.command("publish")(publish_cmd)
