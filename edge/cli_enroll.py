"""``enroll``: turn a one-time token from the coordinator into this device's bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edge.cli_common import fail
from shared.errors import FedgeError

__all__ = ["enroll"]


def enroll(
    api: Annotated[str, typer.Option(envvar="FEDGE_API_URL", help="Coordinator API base URL.")],
    token: Annotated[
        str,
        typer.Option(envvar="FEDGE_ENROLL_TOKEN", help="One-time enrollment token."),
    ],
    bundle: Annotated[Path, typer.Option(envvar="FEDGE_BUNDLE", help="Where to write it.")],
    cafile: Annotated[
        str | None, typer.Option(help="CA of the coordinator's HTTPS certificate.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty bundle directory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Redeem a one-time enrollment token and write this device's bundle (0600 files)."""
    from edge.enroll import enroll as redeem

    try:
        result = redeem(api, token, bundle, cafile=cafile, force=force)
    except FedgeError as exc:
        fail(exc, as_json=as_json)
        return
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"enrolled {result['device_id']}: bundle in {result['bundle']}")
