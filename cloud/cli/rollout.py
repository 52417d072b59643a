"""``fedge cloud rollout create|list|show|pause|resume|abort|rollback|approve|save-policy``
and ``drop-candidate``.

Locally (``FEDGE_HOME``) the commands read and write the rollout tables of the database;
the leader of ``fedge cloud serve`` on that database runs what they create or request.
With ``--api URL`` (or ``FEDGE_API_URL``) they call ``/v1/rollouts`` instead. Both print
the same thing: a summary for people, or with ``--json`` the API's ``RolloutOut`` (and
``show --events`` adds the timeline).

``drop-candidate`` signs commands with the coordinator key and talks to the broker, like
``fedge cloud rollback``, so it runs only where the key home is (no ``--api``): exit 0
when no device holds the candidate any more, 1 when one refused or did not answer, 2 on
an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cloud.cli.common import JsonFlag, cli_errors, emit_json, open_registry, out_console
from cloud.cli.remote import ApiOption, TokenOption, client_for

__all__ = ["register", "rollout_app"]

rollout_app = typer.Typer(
    help="Staged rollouts gated on field evidence (canary → cohorts → everyone).",
    no_args_is_help=True,
)

PolicyFile = Annotated[
    Path | None,
    typer.Option(
        "--policy-file",
        envvar="FEDGE_ROLLOUT_POLICY_FILE",
        help="A TOML or YAML policy file (one policy, or [policies.NAME] tables).",
        exists=True,
        dir_okay=False,
    ),
]
PolicyName = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="A named policy: from --policy-file if given, else saved in the database.",
    ),
]


def _local(fn: Callable[[Any, Any], Any]) -> Any:
    """Run ``fn(store, registry)`` on the local database."""
    from cloud.fleet.store import FleetStore

    registry = open_registry()
    try:
        return fn(FleetStore.from_registry(registry), registry)
    finally:
        registry.close()


def _out(rollout: Any, *, devices: bool) -> dict[str, Any]:
    from cloud.api.schemas_rollouts import RolloutOut

    out: dict[str, Any] = RolloutOut.of(rollout, devices=devices).model_dump(mode="json")
    return out


def _print(r: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())) or "-"
    out_console.print(
        f"[bold]{r['rollout_id']}[/] {r['version']}: {r['state']} "
        f"(cohort {r['cohort'] + 1}/{len(r['cohorts'])}, phase {r['phase']}) — {counts}",
        highlight=False,
    )
    if r.get("control"):
        out_console.print(f"  requested: {r['control']} (applied by the leader's next step)")
    if r.get("reason"):
        out_console.print(f"  reason: {r['reason']}", highlight=False)


def _policy_body(
    policy_file: Path | None, name: str | None
) -> tuple[dict[str, Any] | None, str | None]:
    """(inline policy JSON, name of a policy saved in the database)."""
    if policy_file is None:
        return None, name
    from cloud.rollout.policy import load_policies
    from shared.errors import ConfigError

    policies = load_policies(policy_file)
    if name is None:
        if len(policies) != 1:
            raise ConfigError(
                f"{policy_file.name} holds {len(policies)} policies: pick one with --policy",
                code="invalid_policy",
            )
        name = next(iter(policies))
    if name not in policies:
        raise ConfigError(f"{policy_file.name} has no policy {name!r}", code="invalid_policy")
    return policies[name].model_dump(mode="json"), None


@rollout_app.command("create")
def create(
    version: Annotated[str, typer.Argument(help="MODEL@N or MODEL@latest.")],
    policy_file: PolicyFile = None,
    policy: PolicyName = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="Target group.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Target tag.")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="Target device.")] = None,
    name: Annotated[str | None, typer.Option(help="A label for people.")] = None,
    json_out: JsonFlag = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Start a staged rollout (the target options replace the policy's target)."""
    with cli_errors():
        inline, policy_name = _policy_body(policy_file, policy)
        target = None
        if group or tag or device:
            target = {"groups": group or [], "tags": tag or [], "devices": device or []}
        if api:
            body = {"version": version, "policy": inline, "policy_name": policy_name}
            body.update({"target": target, "name": name})
            result = client_for(api, token).post("/v1/rollouts", body)
        else:
            import time

            from cloud.rollout.create import resolve_policy, start_rollout
            from cloud.rollout.policy import TargetSpec

            spec = TargetSpec.model_validate(target) if target is not None else None

            def run(store: Any, registry: Any) -> dict[str, Any]:
                resolved = resolve_policy(store, inline, policy_name, spec)
                made = start_rollout(
                    store, registry, version, resolved, created_by="cli", now=time.time(),
                    name=name, policy_name=policy_name or policy,
                )  # fmt: skip
                return _out(made, devices=True)

            result = _local(run)
    if json_out:
        emit_json(result)
    else:
        _print(result)


@rollout_app.command("list")
def list_cmd(
    state: Annotated[str | None, typer.Option(help="Only rollouts in this state.")] = None,
    json_out: JsonFlag = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Rollouts, newest first."""
    with cli_errors():
        if api:
            items = list(client_for(api, token).paginate("/v1/rollouts", {"state": state}))
        else:
            from cloud.api.schemas_rollouts import RolloutOut
            from cloud.rollout.records import RolloutState

            def run(store: Any, _registry: Any) -> list[dict[str, Any]]:
                page = store.list_rollouts(state=RolloutState(state) if state else None, limit=200)
                counts = store.rollout_counts([r.rollout_id for r in page.items])
                return [
                    RolloutOut.of(r, counts=counts[r.rollout_id]).model_dump(mode="json")
                    for r in page.items
                ]

            items = _local(run)
    if json_out:
        emit_json(items)
        return
    table = Table(title=f"rollouts ({len(items)})")
    for col in ("id", "version", "state", "cohort", "phase", "devices"):
        table.add_column(col)
    for r in items:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
        cohort = f"{r['cohort'] + 1}/{len(r['cohorts'])}"
        table.add_row(r["rollout_id"], r["version"], r["state"], cohort, r["phase"], counts)
    out_console.print(table)


@rollout_app.command("show")
def show(
    rollout_id: Annotated[str, typer.Argument(help="The rollout id.")],
    events: Annotated[bool, typer.Option("--events", help="Also print the timeline.")] = False,
    json_out: JsonFlag = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """One rollout with every device's progress (and its timeline with --events)."""
    with cli_errors():
        if api:
            client = client_for(api, token)
            result = client.get(f"/v1/rollouts/{rollout_id}")
            timeline = client.get(f"/v1/rollouts/{rollout_id}/events", {"limit": 1000})["items"]
        else:
            from cloud.api.schemas_rollouts import RolloutEventOut

            def run(store: Any, _registry: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
                shown = _out(store.get_rollout(rollout_id), devices=True)
                listed = store.list_rollout_events(rollout_id, limit=1000)
                return shown, [RolloutEventOut.of(e).model_dump(mode="json") for e in listed]

            result, timeline = _local(run)
    if events:
        result = {**result, "events": timeline}
    if json_out:
        emit_json(result)
        return
    _print(result)
    for d in result["devices"] or []:
        reason = f" ({d['reason']})" if d["reason"] else ""
        out_console.print(f"  cohort {d['cohort']} {d['device_id']}: {d['state']}{reason}")
    for e in timeline if events else []:
        out_console.print(f"  [{e['event_id']}] {e['kind']} cohort={e['cohort']} {e['detail']}")


def _control_cmd(action: str) -> Callable[..., None]:
    def command(
        rollout_id: Annotated[str, typer.Argument(help="The rollout id.")],
        json_out: JsonFlag = False,
        api: ApiOption = None,
        token: TokenOption = None,
    ) -> None:
        with cli_errors():
            if api:
                result = client_for(api, token).post(f"/v1/rollouts/{rollout_id}/{action}")
            else:
                from cloud.rollout.records import CONTROL_ALLOWED, RolloutControl

                control = RolloutControl(action)

                def run(store: Any, _registry: Any) -> dict[str, Any]:
                    made = store.request_rollout_control(
                        rollout_id, control, allowed=CONTROL_ALLOWED[control]
                    )
                    return _out(store.get_rollout(made.rollout_id), devices=False)

                result = _local(run)
        if json_out:
            emit_json(result)
        else:
            _print(result)

    command.__doc__ = {
        "pause": "Pause after the current step.",
        "resume": "Resume a paused rollout.",
        "abort": "Abort: roll the current cohort back; later cohorts are never touched.",
        "rollback": "Roll back every device the rollout updated (also after it completed).",
        "approve": "Approve the next cohort of a manual-approval rollout.",
    }[action]
    return command


for _action in ("pause", "resume", "abort", "rollback", "approve"):
    rollout_app.command(_action)(_control_cmd(_action))


@rollout_app.command("save-policy")
def save_policy(
    name: Annotated[str, typer.Argument(help="The policy's name in the database.")],
    policy_file: Annotated[
        Path, typer.Option("--policy-file", exists=True, dir_okay=False, help="TOML or YAML.")
    ],
    policy: PolicyName = None,
    json_out: JsonFlag = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Save a named policy (federation runs and `create --policy NAME` use it)."""
    with cli_errors():
        body, _ = _policy_body(policy_file, policy)
        assert body is not None
        if api:
            client_for(api, token).request("PUT", f"/v1/rollout-policies/{name}", body=body)
        else:
            import time

            _local(lambda store, _r: store.save_rollout_policy(name, body, now=time.time()))
    result = {"name": name, "policy": body}
    if json_out:
        emit_json(result)
    else:
        out_console.print(f"policy {name} saved")


_ARTIFACT_ID = re.compile(r"[0-9a-f]{32}")


@rollout_app.command("drop-candidate")
def drop_candidate_cmd(
    devices: Annotated[
        str, typer.Option("--devices", help="Comma-separated device ids holding it.")
    ],
    artifact: Annotated[
        str, typer.Option("--artifact", help="The candidate's artifact id (32 hex digits).")
    ],
    broker: Annotated[
        str,
        typer.Option("--broker", envvar="FEDGE_BROKER", help="Broker TLS listener host:port."),
    ] = "127.0.0.1:8883",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 30.0,
    json_out: JsonFlag = False,
) -> None:
    """Signed drop_candidate: the devices forget a shadow candidate and stop evaluating it.

    The serving model, the committed slots and the anti-rollback floor do not change.
    A device that holds no candidate (any more) answers no_candidate: nothing to do.
    """
    ids = [d.strip() for d in devices.split(",") if d.strip()]
    if not ids:
        raise typer.BadParameter("no device ids", param_hint="--devices")
    if not _ARTIFACT_ID.fullmatch(artifact):
        raise typer.BadParameter("not 32 lowercase hex digits", param_hint="--artifact")
    with cli_errors():
        from cloud.cli.common import key_home
        from cloud.deployment.link import parse_broker
        from cloud.rollout.candidates import drop_candidates

        host, port = parse_broker(broker)
        results = drop_candidates(
            key_home(), ids, host=host, port=port, artifact_id=artifact, timeout_s=timeout
        )
    ordered = [results[d] for d in ids]
    if json_out:
        emit_json({"artifact_id": artifact, "devices": [r.to_dict() for r in ordered]})
    else:
        for r in ordered:
            reason = f" ({r.reason})" if r.reason else ""
            seq = f" seq {r.seq}" if r.seq is not None else ""
            typer.echo(f"{r.device_id}: drop_candidate{seq}: {r.outcome}{reason}")
    if not all(r.outcome.done for r in ordered):
        raise typer.Exit(1)


def register(cloud_app: typer.Typer) -> None:
    """Add ``rollout`` to ``fedge cloud``."""
    cloud_app.add_typer(rollout_app, name="rollout")
