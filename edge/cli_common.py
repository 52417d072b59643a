"""What the ``fedge edge …`` commands share: option types, ``--model`` parsing, errors, logs.

The option types are :data:`typing.Annotated` aliases so that ``run`` and ``serve`` spell
an option (its flag, ``FEDGE_*`` variable and help) once and show it the same way.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from shared.errors import ConfigError, FedgeError

__all__ = [
    "HttpMaxConnections",
    "HttpTimeout",
    "ModelsOpt",
    "ProfileOpt",
    "SocketPathOpt",
    "fail",
    "parse_models",
    "setup_logging",
]


def fail(exc: FedgeError, as_json: bool = False) -> None:
    """Report ``exc`` the way every fedge command does, then exit with status 2.

    With ``as_json`` the error is one JSON object on stdout (for scripts that asked for
    ``--json``); otherwise one ``error (code): message`` line on stderr.

    Raises:
        typer.Exit: always, with status 2.
    """
    if as_json:
        typer.echo(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
    else:
        typer.echo(f"error ({exc.code}): {exc.message}", err=True)  # as every fedge command
    raise typer.Exit(2)


def setup_logging(level: str) -> None:
    """Send log records at ``level`` and above to stderr, replacing earlier configuration."""
    # force: the command's own --log-level wins over anything configured before it (e.g.
    # the ``fedge`` root command's default WARNING).
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


ProfileOpt = Annotated[
    Path, typer.Option("--profile", envvar="FEDGE_PROFILE", help="Device profile (TOML).")
]
HttpMaxConnections = Annotated[
    int,
    typer.Option(
        "--http-max-connections",
        envvar="FEDGE_HTTP_MAX_CONNECTIONS",
        min=1,
        help="Simultaneous HTTP connections; more are answered 503 at once.",
    ),
]
HttpTimeout = Annotated[
    float,
    typer.Option(
        "--http-timeout",
        envvar="FEDGE_HTTP_TIMEOUT",
        min=0.1,
        help="Seconds a connection has to deliver each whole request (idle keep-alive too).",
    ),
]

ModelsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        envvar="FEDGE_MODEL",
        help="A .tflite to serve: PATH once for the default model, NAME=PATH (repeatable) for "
        "more models served by name (HTTP /v1/models/NAME/predict, socket model name).",
    ),
]


def parse_models(values: list[str] | None) -> tuple[Path | None, tuple[tuple[str, Path], ...]]:
    """``--model`` values → (the default model's path, ``(name, path)`` of the others).

    ``NAME=PATH`` names a model when ``NAME`` is a valid model name; any other value is
    the default model's path (write ``./a=b.tflite`` for a file whose name has ``=``).

    Raises:
        ConfigError: two default models, or a name given twice.
    """
    from edge.inference.frames import MODEL_NAME_RE  # deferred: keeps `--help` fast

    default: Path | None = None
    named: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if sep and MODEL_NAME_RE.fullmatch(name) and path:
            if name in named:
                raise ConfigError(f"--model {name}=... is given twice")
            named[name] = Path(path)
        elif default is not None:
            raise ConfigError("--model PATH (the default model) is given twice; name the others")
        else:
            default = Path(value)
    return default, tuple(named.items())


SocketPathOpt = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        envvar="FEDGE_SOCKET",
        help="Also serve inference on this Unix socket (binary frames, mode 0600).",
    ),
]
