"""``fedge keys …``: create, rotate and revoke keys; enroll devices; export the fleet.

The enrollment records are stored in the fleet database of the settings (the key home of
:func:`cloud.cli.common.key_home`); ``export-fleet`` writes them out as JSON.

Every command takes ``--json`` (one JSON object on stdout) and prints key ids and paths,
never key material. The root passphrase, when used, comes from an environment variable
so it never appears in shell history or ``ps``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cloud.cli.common import JsonFlag, cli_errors, emit, key_home

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="Root, release and coordinator keys; device enrollment.", no_args_is_help=True
)

PassEnv = Annotated[
    str,
    typer.Option(
        "--root-passphrase-env",
        help="Environment variable holding the root key passphrase (unset: no passphrase).",
    ),
]
RootKey = Annotated[
    Path | None,
    typer.Option("--root-key", help="Root private key file, if moved offline."),
]


def _passphrase(env: str) -> bytes | None:
    value = os.environ.get(env) if env else None
    return value.encode() if value else None


@keys_app.command("init")
def init(
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Broker host name/IP for its TLS cert (repeatable)."),
    ] = None,
    root_passphrase_env: PassEnv = "FEDGE_ROOT_PASSPHRASE",
    release_days: Annotated[int, typer.Option(help="Release key validity in days.")] = 365,
    as_json: JsonFlag = False,
) -> None:
    """Create the root, release and coordinator keys, the broker CA and server certificate."""
    from cloud.keys import DEFAULT_HOSTS

    with cli_errors():
        hosts = tuple(dict.fromkeys([*DEFAULT_HOSTS, *(host or [])]))
        result = key_home().init(
            hosts=hosts,
            root_passphrase=_passphrase(root_passphrase_env),
            release_days=release_days,
        )
        result["note"] = "move keys/root/root.key offline; devices pin keys/root/root.pub"
        emit(result, as_json)


@keys_app.command("rotate-release")
def rotate_release(
    revoke_old: Annotated[bool, typer.Option(help="Also revoke the previous key.")] = False,
    days: Annotated[int, typer.Option(help="Validity of the new key in days.")] = 365,
    root_key: RootKey = None,
    root_passphrase_env: PassEnv = "FEDGE_ROOT_PASSPHRASE",
    as_json: JsonFlag = False,
) -> None:
    """Issue a new root-certified release key and make it the signing key."""
    with cli_errors():
        emit(
            key_home().rotate_release(
                root_passphrase=_passphrase(root_passphrase_env),
                root_key=root_key,
                revoke_old=revoke_old,
                days=days,
            ),
            as_json,
        )


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (64 hex) of a release/coordinator key.")],
    root_key: RootKey = None,
    root_passphrase_env: PassEnv = "FEDGE_ROOT_PASSPHRASE",
    as_json: JsonFlag = False,
) -> None:
    """Add a signing key to the root-signed revocation list (devices refuse it)."""
    with cli_errors():
        emit(
            key_home().revoke_key(
                key_id, root_passphrase=_passphrase(root_passphrase_env), root_key=root_key
            ),
            as_json,
        )


@keys_app.command("enroll-device")
def enroll_device(
    device_id: Annotated[
        str, typer.Argument(help="Device id: ASCII [A-Za-z0-9._-], 1-64, not reserved.")
    ],
    hardware_id: Annotated[str, typer.Option("--hardware-id", help="Hardware id.")],
    group: Annotated[
        list[str] | None, typer.Option("--group", help="Group membership (repeatable).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a device's key pairs and broker credentials; write its bundle directory."""
    from shared.identifiers import IdentifierKind, check_identifier, check_new_name

    with cli_errors():
        # Refused here, before the key home is touched (enroll_device checks again).
        check_new_name(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        for g in group or []:
            check_new_name(g, IdentifierKind.GROUP)
        home = key_home()
        result = home.enroll_device(device_id, hardware_id=hardware_id, groups=group or [])
        emit(result, as_json)


@keys_app.command("revoke-device")
def revoke_device(
    device_id: Annotated[str, typer.Argument(help="Enrolled device id.")],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a device: drop it from the ACL, add its certificate to the CRL, cut its
    live session and SIGHUP a running broker."""
    from cloud.cli.broker import broker_files
    from shared.identifiers import IdentifierKind, check_identifier

    with cli_errors():
        check_identifier(device_id, IdentifierKind.DEVICE)
        home = key_home()
        result = home.revoke_device(device_id)
        result |= broker_files().refresh(home, evict=(device_id,))
        emit(result, as_json)


@keys_app.command("export-fleet")
def export_fleet(
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File to write (default: $FEDGE_HOME/keys/fleet-export.json)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write every enrollment record (public keys, password hashes, groups, revoked flags)
    from the fleet database as fleet.json-format JSON, 0600: a backup. Copied to
    keys/fleet.json it is imported again."""
    with cli_errors():
        home = key_home()
        emit(home.export_fleet(out or home.path / "fleet-export.json"), as_json)
