"""``fedge cloud federate``: federated learning on Flower's Simulation or Deployment Engine.

Wire it with ``from cloud.cli.federate import register; register(cloud_app)`` in
``cloud/cli.py``. Heavy imports (torch, Flower, Ray) happen inside the command so
``fedge --help`` stays instant.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cloud.cli.remote import ApiOption, TokenOption, client_for
from cloud.federation import defaults

if TYPE_CHECKING:
    from cloud.federation.plan import FederationPlan, FederationResult
    from cloud.federation.server import RoundCallback
    from cloud.registry import Registry

JSON_HELP = "Print one JSON object on stdout."
#: The engines ``--engine`` (and the API's ``engine``) accept.
ENGINES = ("simulation", "deployment")


def federate_cmd(
    data: Annotated[str, typer.Option(help="digits, mnist-5k or PATH.npz.")] = "digits",
    clients: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 3,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 3,
    strategy: Annotated[
        str, typer.Option(help="fedavg, fedprox, fedadam, trimmed-mean or median.")
    ] = "fedavg",
    fraction: Annotated[float, typer.Option(help="Share of clients sampled per round.")] = 1.0,
    min_clients: Annotated[
        int | None, typer.Option(help="Minimum clients per round (default: all).")
    ] = None,
    round_timeout: Annotated[
        float, typer.Option(help="Seconds a round waits; stragglers are left out.")
    ] = 300.0,
    local_epochs: Annotated[int, typer.Option(min=1)] = defaults.LOCAL_EPOCHS,
    lr: Annotated[float, typer.Option(help="Client SGD learning rate (round 1).")] = defaults.LR,
    lr_decay: Annotated[
        float, typer.Option(help="Per-round lr decay: round r uses lr * decay**(r-1).")
    ] = defaults.LR_DECAY,
    batch_size: Annotated[int, typer.Option(min=1, help="Client mini-batch size.")] = (
        defaults.BATCH_SIZE
    ),
    proximal_mu: Annotated[
        float, typer.Option(help="FedProx proximal weight.")
    ] = defaults.PROXIMAL_MU,
    update: Annotated[str, typer.Option(help="Update compression: fp32, int8 or topk.")] = "int8",
    topk_fraction: Annotated[float, typer.Option(help="Entries a topk update keeps.")] = 0.1,
    alpha: Annotated[
        float | None, typer.Option(help="Dirichlet label-skew alpha (default IID).")
    ] = None,
    init: Annotated[str | None, typer.Option(help="Start from registry MODEL@N.")] = None,
    name: Annotated[str | None, typer.Option(help="Registry model name for rounds.")] = None,
    quantize: Annotated[bool, typer.Option(help="Quantize the best round at the end.")] = True,
    max_drop: Annotated[float, typer.Option(help="int8 accuracy budget in points.")] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    num_cpus: Annotated[int, typer.Option(min=1, help="CPUs the simulation may use.")] = 2,
    secagg_choice: Annotated[
        str | None,
        typer.Option(
            "--secagg",
            envvar="FEDGE_SECAGG",
            help="Secure aggregation: fedge (ours: full-strength masks, packed uploads), "
            "flower (Flower's SecAgg+) or off; default fedge for fedavg/fedprox, flower for "
            "fedadam, off for robust strategies.",
        ),
    ] = None,
    no_secagg: Annotated[bool, typer.Option("--no-secagg", help="Same as --secagg off.")] = False,
    max_examples: Annotated[
        int | None,
        typer.Option(min=1, help="Cap on a client's num_examples weight (default 2x mean)."),
    ] = None,
    max_delta_norm: Annotated[
        float, typer.Option(help="L2 bound on client deltas (0 disables).")
    ] = defaults.MAX_DELTA_NORM,
    dp_noise: Annotated[
        float | None,
        typer.Option(help="Central DP noise multiplier (fedge secagg); reports epsilon."),
    ] = None,
    secagg_timeout: Annotated[
        float, typer.Option(help="Seconds each SecAgg+ stage waits for devices.")
    ] = 120.0,
    client_app: Annotated[
        str | None,
        typer.Option(help="ClientApp reference module:attribute (default by --secagg)."),
    ] = None,
    engine: Annotated[
        str, typer.Option(help="simulation (Ray, virtual devices) or deployment (SuperLink).")
    ] = "simulation",
    superlink_host: Annotated[
        str, typer.Option(help="Deployment: address the SuperLink binds.")
    ] = "127.0.0.1",
    superlink_port: Annotated[
        int, typer.Option(help="Deployment: SuperLink HTTPS port (0 = any free port).")
    ] = 9093,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    api: ApiOption = None,
    token: TokenOption = None,
) -> None:
    """Run R federated rounds over N simulated devices; store every round in the registry.

    With ``--api URL`` the run is asked of the coordinator (``POST /v1/federation/runs``)
    and the server's answer is printed; a coordinator that cannot start runs answers with a
    problem (``not_implemented``), printed as an error (exit 2).
    """
    secagg, secagg_impl = _secagg_choice(secagg_choice, no_secagg)
    if api:
        wanted: dict[str, Any] = {
            "data": data,
            "clients": clients,
            "rounds": rounds,
            "strategy": strategy,
            "fraction": fraction,
            "min_clients": min_clients,
            "round_timeout": round_timeout,
            "local_epochs": local_epochs,
            "lr": lr,
            "lr_decay": lr_decay,
            "batch_size": batch_size,
            "proximal_mu": proximal_mu,
            "update": update,
            "topk_fraction": topk_fraction,
            "alpha": alpha,
            "init": init,
            "name": name,
            "quantize": quantize,
            "max_drop": max_drop,
            "seed": seed,
            "secagg": secagg,
            "secagg_timeout": secagg_timeout,
            "engine": engine,
        }
        _federate_remote(api, token, wanted, json_out)
        return
    from cloud.cli.common import cli_errors, emit_json, err_console, open_registry, out_console
    from cloud.federation.plan import RoundReport

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)

    def on_round(r: RoundReport) -> None:
        if json_out:
            return
        out_console.print(
            f"round {r.round}: accuracy {r.accuracy:.2%} loss {r.loss:.4f} "
            f"participants {r.participants} (rejected {r.rejected}, failed {r.failed}, "
            f"capped {r.capped}) "
            f"up {r.bytes_up:,} B down {r.bytes_down:,} B {r.seconds:.1f}s → {r.version}"
        )

    with cli_errors():
        plan = build_plan(
            data=data,
            clients=clients,
            rounds=rounds,
            strategy=strategy,
            fraction=fraction,
            min_clients=min_clients,
            round_timeout=round_timeout,
            local_epochs=local_epochs,
            lr=lr,
            lr_decay=lr_decay,
            batch_size=batch_size,
            proximal_mu=proximal_mu,
            update=update,
            topk_fraction=topk_fraction,
            alpha=alpha,
            init=init,
            name=name,
            quantize=quantize,
            max_drop=max_drop,
            seed=seed,
            secagg=secagg,
            secagg_timeout=secagg_timeout,
            secagg_impl=secagg_impl,
            max_examples=max_examples,
            max_delta_norm=max_delta_norm or None,
            dp_noise_multiplier=dp_noise,
        )
        if engine not in ENGINES:
            raise typer.BadParameter("use simulation or deployment", param_hint="--engine")
        registry = open_registry()
        try:
            status = (
                err_console.status(f"federating {plan.run_id}")
                if engine == "simulation"
                else nullcontext()
            )
            with status:
                result = run_plan(
                    plan,
                    registry,
                    engine=engine,
                    on_round=on_round,
                    client_app=client_app,
                    num_cpus=num_cpus,
                    superlink_host=superlink_host,
                    superlink_port=superlink_port,
                )
        finally:
            registry.close()
    if json_out:
        emit_json(result.to_dict())
        return
    q = result.quantization or {}
    out_console.print(
        f"run {result.run_id}: best {result.best_version}; "
        f"quantized {q.get('selected') or 'no'}; deployable {result.deployable}"
    )


def _secagg_choice(choice: str | None, off: bool) -> tuple[bool | None, str | None]:
    """``--secagg``/``--no-secagg`` → (plan.secure_aggregation, plan.secagg_impl)."""
    if off or choice == "off":
        return False, None
    if choice is None:
        return None, None
    if choice not in ("fedge", "flower"):
        raise typer.BadParameter("use fedge, flower or off", param_hint="--secagg")
    return True, choice


def _federate_remote(api: str, token: str | None, plan: dict[str, Any], json_out: bool) -> None:
    """``federate --api``: ask the coordinator to start the run; print what it answers."""
    from cloud.cli.common import cli_errors, emit

    with cli_errors():
        answer = client_for(api, token).post("/v1/federation/runs", plan)
    emit(answer if isinstance(answer, dict) else {"answer": answer}, json_out)


def build_plan(
    *,
    data: str = "digits",
    clients: int = 3,
    rounds: int = 3,
    strategy: str = "fedavg",
    fraction: float = 1.0,
    min_clients: int | None = None,
    round_timeout: float = 300.0,
    local_epochs: int = defaults.LOCAL_EPOCHS,
    lr: float = defaults.LR,
    lr_decay: float = defaults.LR_DECAY,
    batch_size: int = defaults.BATCH_SIZE,
    proximal_mu: float = defaults.PROXIMAL_MU,
    update: str = "int8",
    topk_fraction: float = 0.1,
    alpha: float | None = None,
    init: str | None = None,
    name: str | None = None,
    quantize: bool = True,
    max_drop: float = 1.0,
    seed: int = 0,
    secagg: bool | None = None,
    secagg_timeout: float = 120.0,
    run_id: str | None = None,
    secagg_impl: str | None = None,
    max_examples: int | None = None,
    max_delta_norm: float | None = defaults.MAX_DELTA_NORM,
    dp_noise_multiplier: float | None = None,
) -> FederationPlan:
    """The :class:`FederationPlan` of ``fedge cloud federate``'s options (same names, same
    defaults); also what ``POST /v1/federation/runs`` runs (``cloud.api.federation_jobs``).

    Raises:
        ConfigError: the plan is inconsistent (e.g. SecAgg+ with a robust strategy).
    """
    from cloud.federation.plan import FederationPlan
    from cloud.federation.strategies import Participation

    need = min_clients if min_clients is not None else max(1, round(clients * fraction))
    extra: dict[str, Any] = {} if run_id is None else {"run_id": run_id}
    return FederationPlan(
        data=data,
        num_clients=clients,
        rounds=rounds,
        strategy=strategy,
        participation=Participation(fraction, need, max(need, clients)),
        round_timeout=round_timeout,
        local_epochs=local_epochs,
        lr=lr,
        lr_decay=lr_decay,
        batch_size=batch_size,
        proximal_mu=proximal_mu,
        update_mode=update,  # type: ignore[arg-type]
        topk_fraction=topk_fraction,
        alpha=alpha,
        seed=seed,
        init_version=init,
        model_name=name,
        quantize=quantize,
        max_drop=max_drop,
        secure_aggregation=secagg,
        secagg_timeout=secagg_timeout,
        secagg_impl=secagg_impl,  # None: fedge, Flower's for FedAdam (plan.secagg_kind)
        max_examples=max_examples,
        max_delta_norm=max_delta_norm,
        dp_noise_multiplier=dp_noise_multiplier,
        **extra,
    )


def run_plan(
    plan: FederationPlan,
    registry: Registry,
    *,
    engine: str = "simulation",
    on_round: RoundCallback | None = None,
    client_app: str | None = None,
    num_cpus: int = 2,
    superlink_host: str = "127.0.0.1",
    superlink_port: int = 9093,
    home: Path | None = None,
) -> FederationResult:
    """Run ``plan`` on the Simulation Engine (``registry`` gets the rounds) or the Deployment
    Engine (the ServerApp process opens the same registry by its URL and artifact dir).

    Args:
        home: Deployment: the state directory (key home, SuperLink state); default the
            settings' ``FEDGE_HOME``.

    Raises:
        ConfigError: unknown engine; FederationError (or another FedgeError): the run failed.
    """
    if engine == "deployment":
        return _deploy(plan, on_round, client_app, superlink_host, superlink_port, home, registry)
    if engine != "simulation":
        from shared.errors import ConfigError

        raise ConfigError(f"unknown engine {engine!r}; use simulation or deployment")
    from cloud.federation.simulation import run_simulated_federation

    return run_simulated_federation(
        plan, registry, on_round=on_round, client_app=client_app, num_cpus=num_cpus
    )


def _deploy(
    plan: FederationPlan,
    on_round: RoundCallback | None,
    client_app: str | None,
    host: str,
    port: int,
    home: Path | None = None,
    registry: Registry | None = None,
) -> FederationResult:
    """Run ``plan`` on the Deployment Engine with the enrolled fleet as SuperNodes."""
    from cloud.config import Settings
    from cloud.federation.deployment import RegistryLocation, run_fleet_federation

    settings = Settings() if home is None or registry is None else None
    if registry is not None:  # the ServerApp process opens the same database and blobs
        url = registry.engine.url.render_as_string(hide_password=False)
        location = RegistryLocation(url, registry.store.root)
    else:
        assert settings is not None
        location = RegistryLocation(settings.resolved_database_url, settings.artifact_dir)
    if home is None:
        assert settings is not None
        home = settings.home
    return run_fleet_federation(
        plan,
        home=home,
        registry=location,
        host=host,
        port=port or None,
        on_round=on_round,
        client_app=client_app,
    )


def register(cloud_app: typer.Typer) -> None:
    """Add ``federate`` to the ``fedge cloud`` command group."""
    cloud_app.command("federate")(federate_cmd)
