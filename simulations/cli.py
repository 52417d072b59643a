"""The ``fedge`` command: the composition root of the command-line tools.

It lives in ``simulations/`` because that is the one package allowed to import both the
cloud and the edge planes (see the layering rules in README). Sub-apps import their heavy
dependencies lazily, so ``fedge edge …`` works on a device without torch.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from cloud.broker_cli import broker_app
from cloud.cli import cloud_app, models_app
from cloud.commands_cli import register as register_commands
from cloud.federation.cli import register as register_federate
from cloud.keys_cli import keys_app
from cloud.publish_cli import register as register_publish
from edge.cli import edge_app

app = typer.Typer(
    name="fedge",
    help="Edge-to-cloud federated deployment: train, quantize, federate and roll out models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
register_publish(cloud_app)
register_commands(cloud_app)
register_federate(cloud_app)
app.add_typer(cloud_app, name="cloud")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(broker_app, name="broker")
app.add_typer(edge_app, name="edge")


@app.callback()
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
    app()


if __name__ == "__main__":
    main()
