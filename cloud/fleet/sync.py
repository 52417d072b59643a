"""Keep the fleet database in step with the key home, and clean up after a crash.

The key home (``cloud.keys.KeyHome``) owns key material and the enrollment records the
broker's ACL and CRL are rendered from; the database owns fleet state (labels, status,
telemetry, deployments). Devices enrolled with ``fedge keys enroll-device`` (no service
running) are imported when the service starts, so their messages are ingested; a revoked
record is marked revoked. Deployments a killed coordinator left ``pending``/``running``
are marked ``failed`` with the reason: their devices' outcomes stay as last recorded.
"""

from __future__ import annotations

import logging

from cloud.fleet.records import DeploymentState
from cloud.fleet.store import FleetStore
from cloud.keys import KeyHome
from shared.errors import NotFoundError

__all__ = ["fail_interrupted_deployments", "import_key_home"]

log = logging.getLogger(__name__)


def import_key_home(home: KeyHome, store: FleetStore, *, now: float) -> dict[str, list[str]]:
    """Add enrolled devices the database lacks; mark revoked ones (idempotent).

    Returns:
        ``added`` and ``revoked`` device ids.
    """
    added: list[str] = []
    revoked: list[str] = []
    for device_id, record in sorted(home.fleet().items()):
        try:
            device = store.get_device(device_id)
        except NotFoundError:
            device = store.add_device(
                device_id,
                hardware_id=record.hardware_id,
                profile=None,
                groups=record.groups,
                enrolled_at=float(record.enrolled_at),
            )
            added.append(device_id)
        if record.revoked and device.revoked_at is None:
            store.mark_revoked(device_id, at=now)
            revoked.append(device_id)
    if added or revoked:
        log.info("fleet database: %d device(s) imported, %d revoked", len(added), len(revoked))
    return {"added": added, "revoked": revoked}


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
