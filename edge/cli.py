"""``fedge edge …`` commands: run the agent, serve or try a model, check a profile.

Every option of ``run`` can also come from a ``FEDGE_*`` environment variable (shown in
``--help``), so a device's service unit can keep secrets such as the broker password out
of its command line.

This module is the command group; each command lives in an ``edge.cli_*`` module:

* :mod:`edge.cli_run` — ``run``, the agent;
* :mod:`edge.cli_profile` — ``check-profile`` and :func:`load_profile`;
* :mod:`edge.cli_serve` — ``infer`` and ``serve``, local inference without MQTT;
* :mod:`edge.cli_supernode` — ``supernode``, this device's Flower SuperNode;
* :mod:`edge.cli_enroll` — ``enroll``, redeeming an enrollment token;
* :mod:`edge.cli_common` — the option types and helpers they share.
"""

from __future__ import annotations

import logging

import typer

from edge.cli_common import parse_models
from edge.cli_enroll import enroll
from edge.cli_profile import check_profile, load_profile
from edge.cli_run import run
from edge.cli_serve import infer, serve
from edge.cli_supernode import supernode

__all__ = ["edge_app", "load_profile", "main", "parse_models"]

logger = logging.getLogger(__name__)

edge_app = typer.Typer(
    name="edge",
    help="Edge device agent: local LiteRT inference, status/telemetry over MQTT.",
    no_args_is_help=True,
    add_completion=False,
)

# Registration order is the order ``--help`` lists the commands in.
edge_app.command()(run)
edge_app.command("check-profile")(check_profile)
edge_app.command()(infer)
edge_app.command()(serve)
edge_app.command("supernode")(supernode)
edge_app.command()(enroll)


def main() -> None:
    """``fedge-edge`` console script: the device's commands, no cloud code."""
    edge_app(prog_name="fedge-edge")
