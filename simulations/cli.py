"""The ``fedge`` command: the composition root of the command-line tools.

It lives in ``simulations/`` because that is the one package allowed to import both the
cloud and the edge planes (see the layering rules in README). ``fedge edge …`` is handed to
:mod:`edge.cli` before any cloud module is imported, so on a device it loads no cloud code
(and runs without torch); on an edge-only install a cloud command says which extra to
install instead of printing a traceback.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Annotated

import typer

from edge.cli import edge_app

#: The cloud-side modules need the ``cloud`` extra (torch, FastAPI, SQLAlchemy, Flower …).
_CLOUD_EXTRA_HINT = (
    "error (missing_extra): this command runs on the coordinator and needs the cloud extra: "
    "pip install 'fedge[cloud]' (missing module: {name})"
)


@functools.cache
def _build_app() -> typer.Typer:
    """The full ``fedge`` command (imports the cloud command groups)."""
    from cloud.cli.broker import broker_app
    from cloud.cli.commands import register as register_commands
    from cloud.cli.devices import devices_app
    from cloud.cli.federate import register as register_federate
    from cloud.cli.keys import keys_app
    from cloud.cli.pipeline import cloud_app, models_app
    from cloud.cli.publish import register as register_publish
    from cloud.cli.rollout import register as register_rollout
    from cloud.cli.serve import serve_cmd
    from cloud.cli.tokens import token_app
    from simulations.sim_cli import sim_app

    root = typer.Typer(
        name="fedge",
        help="Edge-to-cloud federated deployment: train, quantize, federate and roll out models.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    register_publish(cloud_app)
    register_commands(cloud_app)
    register_federate(cloud_app)
    register_rollout(cloud_app)
    cloud_app.add_typer(token_app, name="token")
    cloud_app.command("serve")(serve_cmd)
    root.add_typer(cloud_app, name="cloud")
    root.add_typer(models_app, name="models")
    root.add_typer(devices_app, name="devices")
    root.add_typer(keys_app, name="keys")
    root.add_typer(broker_app, name="broker")
    root.add_typer(edge_app, name="edge")
    root.add_typer(sim_app, name="sim")
    root.command(
        "demo",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )(demo_cmd)
    root.callback()(main_callback)
    return root


def demo_cmd(ctx: typer.Context) -> None:
    """The whole lifecycle on a local fleet (``make demo``; ``fedge demo --help``)."""
    from simulations.demo.main import main as demo_main

    raise typer.Exit(demo_main(list(ctx.args)))


def main_callback(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
) -> None:
    """Configure logging for every sub-command (``FEDGE_LOG_LEVEL`` also works)."""
    level = os.environ.get("FEDGE_LOG_LEVEL") or (
        "DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING"
    )
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args[:1] == ["edge"]:  # the device's commands: no cloud module is imported
        edge_app(args=args[1:], prog_name="fedge edge")
        return
    try:
        # Cloud commands import their heavy dependencies when they run, so an edge-only
        # install fails here, inside the command, rather than at start-up.
        _build_app()()
    except ModuleNotFoundError as exc:
        typer.echo(_CLOUD_EXTRA_HINT.format(name=exc.name), err=True)
        raise SystemExit(2) from exc


def __getattr__(name: str) -> typer.Typer:
    # ``simulations.cli.app`` (tests, typer's CliRunner): built on first use, so importing
    # this module costs nothing for ``fedge edge``.
    if name == "app":
        return _build_app()
    raise AttributeError(name)


if __name__ == "__main__":
    main()
