"""What every coordinator command shares: its error format, its JSON style, its resources."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console

from shared.errors import FedgeError

__all__ = [
    "JsonFlag",
    "cli_errors",
    "emit",
    "emit_json",
    "err_console",
    "key_home",
    "open_registry",
    "out_console",
]

err_console = Console(stderr=True)
out_console = Console()

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn fedge errors into ``error (<code>): <reason>`` and exit 2; Ctrl-C into exit 130."""
    try:
        yield
    except FedgeError as exc:
        # Plain text, never wrapped or coloured: scripts grep for it.
        typer.echo(f"error ({exc.code}): {exc.message}", err=True)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was saved by the interrupted step")
        raise typer.Exit(130) from None


def emit_json(payload: Any) -> None:
    """Print one JSON document on stdout (the only thing on stdout in ``--json`` mode)."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print ``result`` as JSON, or as ``key: value`` lines for people."""
    if as_json:
        emit_json(result)
        return
    for k, v in result.items():
        out_console.print(f"[bold]{k}[/]: {v}", highlight=False)


def key_home() -> Any:
    """The key home of the current settings: ``$FEDGE_HOME/keys``, its enrollment records
    in the settings' database (opened on the first fleet operation, so ``fedge keys init``
    or ``rotate-release`` need none)."""
    from cloud.config import Settings
    from cloud.fleet.credentials import database_key_home, open_fleet_store

    settings = Settings()
    url = settings.resolved_database_url
    return database_key_home(settings.home / "keys", lambda: open_fleet_store(url))


def open_registry() -> Any:
    """Open the registry of the current settings (imported lazily: it pulls SQLAlchemy)."""
    from cloud.config import Settings
    from cloud.registry import Registry

    return Registry.from_settings(Settings())
