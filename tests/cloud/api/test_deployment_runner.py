"""The deployment view says which serve process ran the job and when it last beat."""

from __future__ import annotations

from cloud.fleet.records import DeploymentState
from tests.cloud.api.conftest import Api
from tests.cloud.test_publish_session import FakeDevice


def test_a_deployment_shows_its_runner_and_heartbeat(api: Api) -> None:
    api.enroll("dev-a")
    device = FakeDevice(api.broker, "dev-a")
    device.start()
    r = api.client.post(
        "/v1/deployments",
        json={"version": "cnn@1", "devices": ["dev-a"]},
        headers=api.auth("operator"),
    )
    assert r.status_code == 202, r.text
    deployment_id = r.json()["deployment_id"]
    api.resources.jobs.wait(deployment_id, timeout=30)
    got = api.client.get(f"/v1/deployments/{deployment_id}", headers=api.auth("viewer")).json()
    assert got["state"] == DeploymentState.SUCCEEDED, got
    assert got["runner"] == api.resources.jobs.runner
    assert isinstance(got["heartbeat_at"], float) and got["heartbeat_at"] <= got["finished_at"]
    listed = api.client.get("/v1/deployments", headers=api.auth("viewer")).json()["items"]
    assert [d["runner"] for d in listed] == [api.resources.jobs.runner]
