"""Clean up after a crash: deployments a killed coordinator left open.

The enrollment records need no syncing any more: they live in the fleet database
(``cloud.fleet.credentials.DatabaseFleetRecords``), which every product path's key home
reads and writes; an old key home's ``fleet.json`` is imported once by the key home itself
(``cloud.keys.KeyHome.import_json_fleet``). Deployments a killed coordinator left
``pending``/``running`` are marked ``failed`` with the reason: their devices' outcomes stay
as last recorded.
"""

from __future__ import annotations

import logging

from cloud.fleet.records import DeploymentState
from cloud.fleet.store import FleetStore

__all__ = ["fail_interrupted_deployments"]

log = logging.getLogger(__name__)


def fail_interrupted_deployments(store: FleetStore, *, now: float) -> list[str]:
    """Mark deployments left ``pending``/``running`` by a stopped coordinator ``failed``."""
    open_states = {DeploymentState.PENDING, DeploymentState.RUNNING}
    stale: list[str] = []
    cursor: str | None = None
    while True:
        page = store.list_deployments(cursor=cursor, limit=200)
        stale += [d.deployment_id for d in page.items if d.state in open_states]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    for deployment_id in stale:
        store.update_deployment(
            deployment_id,
            state=DeploymentState.FAILED,
            finished_at=now,
            error="interrupted: the coordinator stopped before the publish finished",
        )
    if stale:
        log.warning("%d interrupted deployment(s) marked failed", len(stale))
    return stale
