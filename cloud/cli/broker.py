"""``fedge broker …``: write the fleet's Mosquitto configuration and run it.

The broker identifies clients by their TLS certificate (``cloud.broker`` rules B1-B6):
the generated files are ``mosquitto.conf``, the ACL and the CRL; there is no password file.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cloud.cli.common import JsonFlag, cli_errors, emit, key_home

__all__ = ["broker_app", "broker_files"]

broker_app = typer.Typer(
    help="Private Mosquitto broker: TLS, credentials, ACLs.", no_args_is_help=True
)

Port = Annotated[int, typer.Option("--port", help="TLS listener port.")]
Bind = Annotated[str, typer.Option("--bind", help="Listener address.")]


@dataclass(frozen=True)
class _BrokerDir:
    path: Path

    def files(self) -> Any:
        from cloud.broker import BrokerFiles

        return BrokerFiles(self.path)

    def refresh(self, home: Any, *, evict: tuple[str, ...] = ()) -> dict[str, Any]:
        """Rewrite ACL/CRL (if a config exists), evict ``evict``'s sessions, SIGHUP."""
        from cloud.broker_process import refresh_broker

        files = self.files()
        if not files.conf.exists():
            return {"broker_config": None, "broker_reloaded": False, "evicted": []}
        return {"broker_config": str(files.conf), **refresh_broker(home, files, evict=evict)}


def broker_files() -> _BrokerDir:
    """The broker directory of the current settings: ``$FEDGE_HOME/broker``."""
    from cloud.config import Settings

    return _BrokerDir(Settings().home / "broker")


@broker_app.command("config")
def config(port: Port = 8883, bind: Bind = "127.0.0.1", as_json: JsonFlag = False) -> None:
    """Write mosquitto.conf, the ACL file and the CRL for the enrolled fleet."""
    from cloud.broker import write_broker_config

    with cli_errors():
        files = write_broker_config(key_home(), broker_files().path, port=port, bind=bind)
        emit(
            {
                "conf": str(files.conf),
                "crl": str(files.crl),
                "acl": str(files.acl),
                "port": port,
            },
            as_json,
        )


@broker_app.command("run")
def run(
    port: Port = 8883,
    bind: Bind = "127.0.0.1",
    verbose: Annotated[bool, typer.Option(help="mosquitto -v.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Regenerate the configuration for PORT and run mosquitto in the foreground."""
    from cloud.broker import write_broker_config
    from cloud.broker_process import start_broker

    with cli_errors():
        files = write_broker_config(key_home(), broker_files().path, port=port, bind=bind)
        proc = start_broker(files, verbose=verbose)
        emit({"pid": proc.pid, "port": port, "conf": str(files.conf)}, as_json)
        # Forward SIGTERM so the broker shuts down cleanly (persistence is flushed).
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            code = proc.wait()
        files.pid.unlink(missing_ok=True)
        raise typer.Exit(code)


@broker_app.command("reload")
def reload(as_json: JsonFlag = False) -> None:
    """Rewrite ACL and CRL from the fleet registry and SIGHUP the running broker."""
    with cli_errors():
        emit(broker_files().refresh(key_home()), as_json)
