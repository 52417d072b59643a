"""Staged rollouts gated on field evidence (issue 12).

* :mod:`~cloud.rollout.policy` — the pydantic :class:`RolloutPolicy` and policy files;
* :mod:`~cloud.rollout.cohorts` — deterministic cohort assignment;
* :mod:`~cloud.rollout.gates` — pure functions: evidence → a decision with its evidence;
* :mod:`~cloud.rollout.records` — what the store returns about rollouts;
* :mod:`~cloud.rollout.engine` — the persisted state machine, stepped by a loop;
* :mod:`~cloud.rollout.delivery` — the engine's seam to devices (publisher + commands);
* :mod:`~cloud.rollout.lease` — the leader lease (PostgreSQL advisory lock / file lock);
* :mod:`~cloud.rollout.coordinator` — the leader's loop inside ``fedge cloud serve``.

Nothing is imported here: the fleet store imports the records and policy modules, and
the engine imports the store, so this package stays free of import cycles.
"""
