"""``fedge cloud token …``: API tokens of the control API (on the configured database).

``create`` prints the secret once (only its hash is stored); ``list`` never shows secrets;
``revoke`` is immediate and idempotent.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cloud.cli.common import JsonFlag, cli_errors, emit, emit_json, open_registry, out_console

__all__ = ["token_app"]

token_app = typer.Typer(help="API tokens of the control API (viewer, operator, admin).")


def _store() -> Any:
    from cloud.fleet.store import FleetStore

    return FleetStore.from_registry(open_registry())


def _token_dict(token: Any) -> dict[str, Any]:
    return {
        "id": token.token_id,
        "role": str(token.role),
        "name": token.name,
        "created_at": token.created_at,
        "revoked_at": token.revoked_at,
    }


@token_app.command("create")
def create(
    role: Annotated[str, typer.Option("--role", help="viewer | operator | admin.")],
    name: Annotated[str, typer.Option("--name", help="A label for people.")] = "cli",
    as_json: JsonFlag = False,
) -> None:
    """Create a bearer token; its secret is printed once and never again."""
    from cloud.fleet.records import Role
    from shared.errors import ConfigError

    with cli_errors():
        try:
            parsed = Role(role)
        except ValueError:
            raise ConfigError(
                f"unknown role {role!r}: use viewer, operator or admin", code="invalid_argument"
            ) from None
        secret, record = _store().create_api_token(parsed, name=name, now=time.time())
        emit({"token": secret, **_token_dict(record)}, as_json)


@token_app.command("list")
def list_tokens(as_json: JsonFlag = False) -> None:
    """Every token (ids, roles, names; never secrets)."""
    with cli_errors():
        tokens = [_token_dict(t) for t in _store().list_api_tokens()]
        if as_json:
            emit_json({"tokens": tokens})
            return
        for t in tokens:
            state = "revoked" if t["revoked_at"] else "active"
            out_console.print(
                f"{t['id']}  {t['role']:<8}  {state:<7}  {t['name']}", highlight=False
            )


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token id (see `list`).")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a token: it authenticates nothing from now on."""
    with cli_errors():
        emit(_token_dict(_store().revoke_api_token(token_id, at=time.time())), as_json)
