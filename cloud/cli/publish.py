"""``fedge cloud publish VERSION --devices ID… | --group NAME [--purpose P] [--json] [--api URL]``.

Per device it prints the outcome and the variant chosen, with why (``docs/protocol.md``
§15): pinned by the profile, measured fastest on the hardware class (with its median), the
static preference with nothing measured, and the variants excluded with their reasons.

Register it on the cloud app with :func:`register` (``cloud/cli.py`` owns the app).
Exit code 0 when every device committed, 1 when any failed or timed out, 2 on an error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloud.cli.common import cli_errors, emit_json
from cloud.cli.remote import ApiClient, ApiOption, RemoteError, TokenOption, client_for
from shared.errors import ConfigError, FedgeError, ProtocolError

if TYPE_CHECKING:
    from cloud.deployment.report import PublishReport

__all__ = ["publish_cmd", "register"]


def _split(values: list[str] | None) -> list[str]:
    # Accept both `--devices a --devices b` and `--devices a,b`.
    return [v for raw in values or [] for v in raw.split(",") if v]


def publish_cmd(
    version: Annotated[str, typer.Argument(help="MODEL@N (or MODEL for its latest version).")],
    devices: Annotated[
        list[str] | None,
        typer.Option("--devices", "-d", help="Target device id (repeat, or comma-separate)."),
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Every device of a group.")] = None,
    broker: Annotated[
        str,
        typer.Option("--broker", envvar="FEDGE_BROKER", help="Broker TLS listener host:port."),
    ] = "127.0.0.1:8883",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 120.0,
    purpose: Annotated[
        str,
        typer.Option(
            "--purpose",
            envvar="FEDGE_PUBLISH_PURPOSE",
            help="install (serve it), shadow (hold it beside the serving model) or trial "
            "(time every eligible variant on the devices).",
        ),
    ] = "install",
    trial_timeout: Annotated[
        float,
        typer.Option(
            "--trial-timeout",
            envvar="FEDGE_TRIAL_TIMEOUT",
            help="Seconds to wait for one round of variant trials.",
        ),
    ] = 30.0,
    trial_sample: Annotated[
        int,
        typer.Option(
            "--trial-sample",
            envvar="FEDGE_TRIAL_SAMPLE",
            help="Devices per hardware class that time unmeasured variants.",
        ),
    ] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Send an approved (never a rejected) artifact to devices and report per-device outcome.

    With ``--api URL`` the coordinator publishes (``POST /v1/deployments``) and this command
    follows the deployment until it ends or ``--timeout`` passes (the coordinator goes on;
    ``--broker`` is then the coordinator's business and is ignored).
    """
    if api:
        if purpose != "install":
            with cli_errors():
                raise ConfigError(
                    "--purpose with --api: the coordinator's rollouts send shadows",
                    code="invalid_argument",
                )
        _publish_remote(api, token, version, _split(devices), group, timeout, json_out)
        return
    from cloud.config import Settings
    from cloud.deployment.link import parse_broker
    from cloud.deployment.publisher import Publisher, select_devices
    from cloud.fleet.credentials import database_key_home
    from cloud.fleet.store import FleetStore
    from cloud.registry import Registry

    with cli_errors():
        host, port = parse_broker(broker)
        settings = Settings()
        registry = Registry.from_settings(settings)
        try:  # the enrollment records are in the registry's database
            home = database_key_home(settings.home / "keys", FleetStore.from_registry(registry))
            targets = select_devices(home, _split(devices), group)
        except BaseException:
            registry.close()
            raise
        if trial_timeout <= 0 or trial_sample < 1:
            registry.close()
            raise ConfigError(
                "--trial-timeout must be > 0 and --trial-sample >= 1", code="invalid_argument"
            )
        publisher = Publisher(
            registry,
            home,
            host=host,
            port=port,
            trial_sample=trial_sample,
            trial_timeout_s=trial_timeout,
        )
        try:
            with _progress(len(targets), enabled=not json_out) as on_progress:
                report = publisher.publish(
                    version,
                    targets,
                    timeout_s=timeout,
                    on_progress=on_progress,
                    purpose=purpose,
                )
        finally:
            registry.close()
    _finish(report, json_out)


def _finish(report: PublishReport, json_out: bool, extra: dict[str, object] | None = None) -> None:
    """Print the per-device outcomes (or the JSON report, with ``extra`` keys); exit 1
    unless every device committed."""
    from cloud.deployment.publisher import Outcome

    if json_out:
        emit_json(report.to_dict() | (extra or {}))
    else:
        for result in report.devices.values():
            reason = f" ({result.reason})" if result.reason else ""
            typer.echo(f"{result.device_id}: {result.outcome}{reason} [{result.encoding}]")
            explain = (result.choice or {}).get("explain")
            if explain:
                typer.echo(f"  variant {explain}")
        typer.echo(f"{report.bytes_sent} bytes sent in {report.seconds:.1f} s")
        phases = " · ".join(f"{name} {at:.2f} s" for name, at in report.phases.items())
        if phases:
            typer.echo(f"timeline: {phases}")
    if any(r.outcome is not Outcome.COMMITTED for r in report.devices.values()):
        raise typer.Exit(1)


#: Seconds between two ``GET /v1/deployments/{id}`` while following a remote publish.
POLL_S = 0.5
_FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


def _deployment(answer: object) -> dict[str, Any]:
    """A ``DeploymentOut`` answer, checked enough to be read."""
    if (
        not isinstance(answer, dict)
        or not isinstance(answer.get("deployment_id"), str)
        or not isinstance(answer.get("devices"), list)
    ):
        raise ProtocolError(f"expected a deployment from the coordinator, got {answer!r:.80}")
    return answer


def _remote_report(deployment: dict[str, Any], seconds: float, *, final: bool) -> PublishReport:
    """The deployment as a :class:`PublishReport` (``pending`` is the report's undecided
    ``timeout``; at the end a device still pending is reported as a timeout)."""
    from cloud.deployment.report import DeviceResult, Outcome, PublishReport

    finished = deployment.get("finished_at") is not None
    results: dict[str, DeviceResult] = {}
    for d in deployment["devices"]:
        device_id = str(d.get("device_id"))
        raw = d.get("outcome")
        outcome = Outcome(raw) if raw in {str(o) for o in Outcome} else Outcome.TIMEOUT
        reason = d.get("reason")
        if final and raw == "pending" and reason is None and not finished:
            reason = "no outcome within --timeout; the coordinator is still publishing"
        results[device_id] = DeviceResult(
            device_id,
            outcome=outcome,
            reason=reason,
            encoding=d.get("encoding"),
            precision=d.get("precision"),
            choice=d.get("variant") if isinstance(d.get("variant"), dict) else None,
        )
    report = PublishReport(str(deployment.get("version_ref", "")), "", results)
    report.bytes_sent = int(deployment.get("bytes_sent") or 0)
    report.seconds = seconds
    return report


def _artifact_sha256(client: ApiClient, ref: str) -> str:
    """The version's preferred approved TFLite artifact, as the publisher picks it (best
    effort: "" when the API does not say)."""
    from shared.precision import precision_rank

    model, _, number = ref.partition("@")
    try:
        info = client.get(f"/v1/models/{model}/versions/{number}")
    except FedgeError:
        return ""
    artifacts = info.get("artifacts") if isinstance(info, dict) else None
    approved = [
        a
        for a in artifacts or []
        if isinstance(a, dict) and a.get("format") == "tflite" and a.get("status") == "approved"
    ]
    if not approved:
        return ""
    best = min(approved, key=lambda a: (precision_rank(str(a["precision"])), a.get("bytes", 0)))
    return str(best.get("sha256", ""))


def _job_error(deployment: dict[str, Any]) -> RemoteError:
    """The error of a deployment job that ended before any device had an outcome."""
    text = str(deployment.get("error") or f"deployment {deployment['state']}")
    code, sep, message = text.partition(": ")
    if not sep or not code.replace("_", "").isalnum():
        code, message = "deployment_failed", text
    return RemoteError(f"deployment {deployment['deployment_id']}: {message}", code=code)


def _publish_remote(
    api: str,
    token: str | None,
    version: str,
    devices: list[str],
    group: str | None,
    timeout: float,
    json_out: bool,
) -> None:
    """``publish --api``: ``POST /v1/deployments``, then follow it until it ends."""
    with cli_errors():
        if bool(devices) == (group is not None):
            raise ConfigError("give either --devices or --group")
        client = client_for(api, token)
        started = time.monotonic()
        body: dict[str, object] = {"version": version}
        body.update({"devices": devices} if devices else {"group": group})
        deployment = _deployment(client.post("/v1/deployments", body))
        path = f"/v1/deployments/{deployment['deployment_id']}"
        deadline = started + timeout
        with _progress(len(deployment["devices"]), enabled=not json_out) as on_progress:
            while True:
                if on_progress is not None:
                    on_progress(_remote_report(deployment, 0.0, final=False))
                done = deployment.get("finished_at") is not None
                if done or deployment.get("state") in _FINAL_STATES:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(POLL_S, left))
                deployment = _deployment(client.get(path))
        report = _remote_report(deployment, time.monotonic() - started, final=True)
        undecided = all(d.get("outcome") == "pending" for d in deployment["devices"])
        if deployment.get("state") in ("failed", "cancelled") and undecided:
            raise _job_error(deployment)
        report.artifact_sha256 = _artifact_sha256(client, report.version)
    _finish(
        report,
        json_out,
        {
            "deployment_id": deployment["deployment_id"],
            "state": deployment.get("state"),
            "error": deployment.get("error"),
        },
    )


@contextlib.contextmanager
def _progress(total: int, *, enabled: bool) -> Iterator[Callable[[PublishReport], None] | None]:
    """A progress bar of devices with an outcome (on stderr; none for ``--json``)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from cloud.deployment.publisher import Outcome

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("devices done", total=total)

        def update(report: PublishReport) -> None:
            results = report.devices.values()
            done = sum(r.outcome is not Outcome.TIMEOUT for r in results)
            failed = sum(r.outcome is Outcome.FAILED for r in results)
            bar.update(task, completed=done, description=f"devices done ({failed} failed)")

        yield update


def register(cloud_app: typer.Typer) -> None:
    """Add ``publish`` to the ``fedge cloud`` app."""
    cloud_app.command("publish")(publish_cmd)
