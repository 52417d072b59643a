"""``fedge devices list``: the enrolled fleet, from the local database or a coordinator.

Locally it reads the fleet store next to the registry (``FEDGE_HOME``); with ``--api URL``
(or ``FEDGE_API_URL``) it walks ``GET /v1/devices`` page by page. Both print the same
thing: a table, or with ``--json`` a list of device objects shaped like the API's
``DeviceOut`` (the same list in both modes for the same database).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from cloud.cli.common import JsonFlag, cli_errors, emit_json, open_registry, out_console
from cloud.cli.remote import ApiOption, TokenOption, client_for

__all__ = ["devices_app", "devices_list"]

devices_app = typer.Typer(help="Inspect the enrolled fleet.", no_args_is_help=True)


def _device_json(device: Any) -> dict[str, Any]:
    """A device (a store record or an API item) as the API's ``DeviceOut`` JSON."""
    from cloud.api.schemas import DeviceOut

    out: dict[str, Any] = DeviceOut.model_validate(device).model_dump(mode="json")
    return out


def _local_devices(filters: dict[str, Any], page_size: int) -> Iterator[dict[str, Any]]:
    from cloud.fleet.store import FleetStore

    registry = open_registry()
    try:
        store = FleetStore.from_registry(registry)
        cursor: str | None = None
        while True:
            page = store.list_devices(**filters, cursor=cursor, limit=page_size)
            yield from (_device_json(d) for d in page.items)
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
    finally:
        registry.close()


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _online(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "-"


@devices_app.command("list")
def devices_list(
    group: Annotated[str | None, typer.Option(help="Only members of this group.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only devices with this tag.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only devices of this profile.")] = None,
    online: Annotated[
        bool | None,
        typer.Option(
            "--online/--offline",
            help="Only devices whose last status said online (or offline / never heard).",
            show_default=False,
        ),
    ] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Only devices serving this model version.")
    ] = None,
    page_size: Annotated[int, typer.Option(min=1, max=500, help="Devices fetched per page.")] = 100,
    json_out: JsonFlag = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """List enrolled (unrevoked) devices, ordered by id."""
    filters: dict[str, Any] = {
        "group": group,
        "tag": tag,
        "profile": profile,
        "online": online,
        "model_version": model_version,
    }
    with cli_errors():
        if api:
            client = client_for(api, token)
            devices = [
                _device_json(d) for d in client.paginate("/v1/devices", filters, limit=page_size)
            ]
        else:
            devices = list(_local_devices(filters, page_size))
    if json_out:
        emit_json(devices)
        return
    table = Table(title=f"devices ({len(devices)})")
    for col in ("id", "profile", "groups", "online", "model version", "last seen"):
        table.add_column(col)
    for d in devices:
        table.add_row(
            d["device_id"],
            d["profile"] or "",
            ", ".join(d["groups"]),
            _online(d["online"]),
            d["model_version"] or "",
            _when(d["last_seen"]),
        )
    out_console.print(table)
