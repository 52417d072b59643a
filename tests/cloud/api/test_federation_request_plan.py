"""A federation request's secure-aggregation choice reaches the plan the run executes."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cloud.api.federation_requests import plan_of_request
from cloud.api.schemas_runs import FederationRunIn


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({}, "fedge"),  # the default for fedavg is ours
        ({"secagg_impl": "flower"}, "flower"),
        ({"secagg_impl": "fedge"}, "fedge"),
        ({"secagg": False, "secagg_impl": "fedge"}, None),
        ({"strategy": "fedadam"}, "flower"),
    ],
)
def test_the_requested_secagg_implementation_is_the_plans(
    body: dict[str, object], kind: str | None
) -> None:
    request = FederationRunIn.model_validate({"data": "digits", "rounds": 1, **body})
    assert plan_of_request(request).secagg_kind == kind


def test_an_unknown_secagg_implementation_is_refused() -> None:
    with pytest.raises(ValidationError):
        FederationRunIn.model_validate({"data": "digits", "rounds": 1, "secagg_impl": "none"})
