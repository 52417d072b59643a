"""Starting a rollout: check the version, resolve the target, assign cohorts, store it.

Shared by the API (``POST /v1/rollouts``), the CLI and a federation run that ends in a
rollout, so all three refuse the same things with the same codes. The leader's engine
picks the new rollout up on its next poll, whichever process created it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from cloud.rollout.cohorts import assign_cohorts
from cloud.rollout.policy import RolloutPolicy, TargetSpec, parse_policy
from cloud.rollout.records import Rollout
from shared.errors import NotFoundError

if TYPE_CHECKING:
    from cloud.fleet.store import FleetStore
    from cloud.registry import Registry

__all__ = ["resolve_policy", "resolve_target", "start_rollout"]


def resolve_target(store: FleetStore, target: TargetSpec) -> list[str]:
    """Enrolled, unrevoked devices in any of the groups or tags, plus the listed devices.

    Raises:
        NotFoundError: a listed device is not enrolled or is revoked.
    """
    found: set[str] = set()
    queries = [(g, None) for g in target.groups] + [(None, t) for t in target.tags]
    for group, tag in queries:
        cursor: str | None = None
        while True:
            page = store.list_devices(group=group, tag=tag, cursor=cursor, limit=1000)
            found.update(d.device_id for d in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    for device_id in target.devices:
        device = store.get_device(device_id)  # NotFoundError for an unknown id
        if device.revoked_at is not None:
            raise NotFoundError(f"device {device_id} is revoked")
        found.add(device_id)
    return sorted(found)


def resolve_policy(
    store: FleetStore,
    policy: RolloutPolicy | dict[str, object] | None,
    policy_name: str | None,
    target: TargetSpec | None = None,
) -> RolloutPolicy:
    """The policy given inline, or the named one from the database; ``target`` (if given)
    replaces its target.

    Raises:
        NotFoundError: no policy of that name; ConfigError: an invalid policy.
    """
    if policy is None and policy_name is None:
        if target is None:
            raise NotFoundError("give a policy, a policy name or at least a target")
        return RolloutPolicy(target=target)
    if isinstance(policy, RolloutPolicy):
        resolved = policy
    elif policy is not None:
        resolved = parse_policy(policy)
    else:
        resolved = parse_policy(store.get_rollout_policy(str(policy_name)))
    if target is not None:
        resolved = resolved.model_copy(update={"target": target})
    return resolved


def start_rollout(
    store: FleetStore,
    registry: Registry,
    version: str,
    policy: RolloutPolicy,
    *,
    created_by: str,
    now: float,
    name: str | None = None,
    policy_name: str | None = None,
    source: str | None = None,
) -> Rollout:
    """Store a new ``running`` rollout of ``version`` under ``policy``.

    Raises:
        NotFoundError: unknown version or device; NotDeployableError: the version has no
        approved TFLite artifact (rule P1); ConfigError ``empty_target``: nobody to update.
    """
    info = registry.get_version(version)
    registry.deployable_artifact(info.ref)  # P1: refuse now, not in the canary
    rollout_id = uuid.uuid4().hex
    cohorts = assign_cohorts(rollout_id, resolve_target(store, policy.target), policy.cohorts)
    return store.create_rollout(
        info.ref,
        policy.model_dump(mode="json"),
        cohorts,
        created_by=created_by,
        now=now,
        rollout_id=rollout_id,
        name=name,
        policy_name=policy_name,
        source=source,
    )
