"""``fedge sim``: run a simulated fleet (learning + rollout + faults) from a scenario file.

    fedge sim list
    fedge sim run smart-home [--clients N] [--rounds R] [--json] [--out DIR]

``--clients`` is the fleet size (every device receives models; only the kinds whose firmware
profile trains join rounds). ``FEDGE_SIM_OUT`` sets the default report directory,
``RAY_ADDRESS`` (or ``--ray-address``) runs the clients on a Ray cluster.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from cloud.cli.common import JsonFlag, cli_errors, emit, emit_json, err_console

__all__ = ["sim_app"]

sim_app = typer.Typer(
    help="Simulate fleets: federated rounds and staged rollouts together, with faults.",
    no_args_is_help=True,
)


@sim_app.command("list")
def list_cmd(as_json: JsonFlag = False) -> None:
    """List the bundled scenarios."""
    from simulations.scenario import available_scenarios, load_scenario

    with cli_errors():
        rows = {n: load_scenario(n).description for n in available_scenarios()}
        emit(rows, as_json)


@sim_app.command("run")
def run_cmd(
    scenario: Annotated[str, typer.Argument(help="Bundled scenario name or a .toml path.")],
    clients: Annotated[
        int | None, typer.Option("--clients", "-n", min=2, help="Fleet size (devices).")
    ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", "-r", min=1, help="Rounds.")] = None,
    per_round: Annotated[
        int | None, typer.Option("--per-round", min=1, help="Clients sampled per round.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", envvar="FEDGE_SIM_OUT", help="Report directory (HTML, PNG, JSON)."),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address", envvar="RAY_ADDRESS", help="Run clients on this Ray cluster."
        ),
    ] = None,
    ray_actors: Annotated[int, typer.Option(min=1, help="Ray actor pool size.")] = 2,
    as_json: JsonFlag = False,
) -> None:
    """Run SCENARIO: every strategy's rounds, then each release's staged rollout."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from simulations.report import write_report
    from simulations.runner import run_scenario
    from simulations.scenario import load_scenario

    # Flower logs every round at INFO; the progress bar says the same in one line.
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with cli_errors():
        chosen = load_scenario(scenario).with_overrides(
            devices=clients, rounds=rounds, clients_per_round=per_round
        )
        total = chosen.learning.rounds * len(chosen.learning.strategies)
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err_console,
            transient=as_json,
        )
        with bar:
            task = bar.add_task(f"{chosen.name}: rounds", total=total)

            def tick(strategy: str, server_round: int) -> None:
                bar.update(task, advance=1, description=f"{chosen.name} {strategy} r{server_round}")

            result = run_scenario(
                chosen, progress=tick, ray_address=ray_address or None, ray_actors=ray_actors
            )
        metrics = result.to_dict()
        target = out or Path(os.environ.get("FEDGE_HOME", ".fedge")) / "simulations" / chosen.name
        html = write_report(metrics, target)
        metrics["report"] = str(html)
        if as_json:
            emit_json(metrics)
            return
        for name, run in metrics["strategies"].items():
            err_console.print(
                f"{name}: accuracy {run['initial_accuracy']:.4f} -> {run['final_accuracy']:.4f}, "
                f"{run['client_updates']} client updates",
                highlight=False,
            )
        for r in metrics["rollouts"]:
            err_console.print(
                f"release {r['release']} ({r['version']}): {r['state']}, {r['installed']} "
                f"installed {r['reason']}",
                highlight=False,
            )
        typer.echo(
            f"report: {html}  (wall {metrics['wall_s']} s, peak RSS {metrics['peak_rss_mb']} MiB)"
        )
