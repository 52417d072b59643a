"""The ServerApp the SuperLink runs for ``fedge cloud federate --engine deployment``.

On the Deployment Engine the ServerApp does not run in the coordinator's process: the
SuperLink's SuperExec starts it in a fresh process from the Flower App bundle that
:mod:`cloud.federation.deployment` generated. Everything it needs therefore travels as
*paths* in the run config (never secrets or data):

* ``fedge-plan``: JSON of the :class:`FederationPlan`;
* ``fedge-database-url`` / ``fedge-artifact-dir``: the registry to store rounds in;
* ``fedge-events``: a JSON-lines file the coordinator tails — one ``round`` line per round,
  then one ``result`` or ``error`` line.

The events file is the metrics stream because Flower's ServerApp output is only reachable
as text logs; a file on the coordinator's own disk is typed and needs no parsing of logs.
"""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from cloud.federation.plan import FederationPlan, FederationResult, RoundReport
from cloud.federation.strategies import Participation

log = logging.getLogger(__name__)

PLAN_KEY = "fedge-plan"
DATABASE_KEY = "fedge-database-url"
ARTIFACTS_KEY = "fedge-artifact-dir"
EVENTS_KEY = "fedge-events"


def plan_to_dict(plan: FederationPlan) -> dict[str, Any]:
    """JSON-ready form of a plan (the participation settings nested)."""
    return asdict(plan)


def plan_from_dict(raw: dict[str, Any]) -> FederationPlan:
    """Inverse of :func:`plan_to_dict`."""
    fields = dict(raw)
    fields["participation"] = Participation(**fields["participation"])
    return FederationPlan(**fields)


def result_from_dict(raw: dict[str, Any]) -> FederationResult:
    """Rebuild a :class:`FederationResult` from its ``to_dict`` form."""
    fields = dict(raw)
    fields["rounds"] = [RoundReport(**r) for r in fields["rounds"]]
    return FederationResult(**fields)


class EventWriter:
    """Appends one JSON object per line and flushes, so a tailing reader sees whole lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, kind: str, body: dict[str, Any]) -> None:
        """Append ``{"kind": kind, **body}``."""
        line = json.dumps({"kind": kind, **body}, default=str)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config; report through the events file."""
    # Imported here: the SuperExec imports this module to find ``app`` before any run.
    from cloud.federation.server import FederationRunner
    from cloud.registry import Registry

    config = context.run_config
    events = EventWriter(Path(str(config[EVENTS_KEY])))
    try:
        plan = plan_from_dict(json.loads(Path(str(config[PLAN_KEY])).read_text()))
        registry = Registry(str(config[DATABASE_KEY]), Path(str(config[ARTIFACTS_KEY])))
    except Exception as exc:
        events.write("error", {"error": f"cannot start run: {exc!r}"})
        raise
    try:
        runner = FederationRunner(
            plan, registry, on_round=lambda r: events.write("round", r.to_dict())
        )
        # Delegate to the runner's own ServerApp so the deployment runs exactly what the
        # simulation runs (the guarded strategy, or the SecAgg+ workflow when planned).
        runner.server_app()(grid, context)
        if runner.error is not None:
            raise runner.error
        events.write("result", runner.result.to_dict())
    except BaseException as exc:
        log.error("federated run failed: %r", exc)
        events.write("error", {"error": repr(exc), "trace": traceback.format_exc(limit=5)})
        raise
    finally:
        registry.close()
