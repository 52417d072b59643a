"""From a ``POST /v1/federation/runs`` request to a plan, and what runs the plan.

Split out of :mod:`cloud.api.federation_jobs` (which re-exports :class:`PlanRunner`):
:func:`plan_of_request` builds the plan with the very function ``fedge cloud federate``
uses (:func:`cloud.cli.federate.build_plan`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from cloud.api.schemas import FederationRunIn
from cloud.cli.federate import build_plan
from cloud.federation.plan import FederationPlan, FederationResult
from cloud.federation.server import RoundCallback
from cloud.registry import Registry

__all__ = ["PlanRunner", "plan_of_request"]


class PlanRunner(Protocol):
    """What runs a plan (:func:`cloud.cli.federate.run_plan`; tests pass a fake)."""

    def __call__(
        self,
        plan: FederationPlan,
        registry: Registry,
        *,
        engine: str,
        on_round: RoundCallback | None,
        num_cpus: int,
        home: Path | None,
    ) -> FederationResult: ...


def plan_of_request(request: FederationRunIn) -> FederationPlan:
    """The plan of a request (what ``fedge cloud federate`` builds from its options).

    Raises:
        ConfigError: the plan is inconsistent.
    """
    clients = (
        len(request.devices)
        if request.devices is not None
        else (request.clients if request.clients is not None else 3)
    )
    return build_plan(
        data=request.data,
        clients=clients,
        rounds=request.rounds,
        strategy=request.strategy,
        fraction=request.fraction,
        min_clients=request.min_clients,
        round_timeout=request.round_timeout,
        local_epochs=request.local_epochs,
        lr=request.lr,
        lr_decay=request.lr_decay,
        batch_size=request.batch_size,
        proximal_mu=request.proximal_mu,
        update=request.update,
        topk_fraction=request.topk_fraction,
        alpha=request.alpha,
        init=request.init,
        name=request.name,
        quantize=request.quantize,
        max_drop=request.max_drop,
        seed=request.seed,
        secagg=request.secagg,
        secagg_timeout=request.secagg_timeout,
        secagg_impl=request.secagg_impl,
    )
