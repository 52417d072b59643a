"""The demo's command line and its one clean-up path (see :mod:`simulations.demo`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from simulations.demo.lifecycle import (
    DemoSettings,
    Traffic,
    federate,
    first_install,
    roll_out,
    train,
)
from simulations.demo.procs import ProcessGroup, interrupt_on_sigterm
from simulations.demo.report import print_summary, summarize
from simulations.demo.stack import ROOT, Stack, demo_devices

__all__ = ["main", "run"]


def _parser() -> argparse.ArgumentParser:
    d = DemoSettings()
    p = argparse.ArgumentParser(
        prog="python -m simulations.demo",
        description=(sys.modules["simulations.demo"].__doc__ or "").split("\n\n")[0],
    )
    p.add_argument("--devices", type=int, default=d.devices, help="edge agents (2-6)")
    p.add_argument("--data", default=d.data, choices=("mnist-5k", "digits"))
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of the first training")
    p.add_argument("--rounds", type=int, default=d.rounds, help="federated rounds")
    p.add_argument("--requests", type=int, default=d.requests, help="inference requests/device")
    p.add_argument(
        "--no-secagg",
        action="store_true",
        help="federate without secure aggregation (fedge SecAgg by default)",
    )
    p.add_argument("--bake", type=float, default=d.rollout_bake_s, help="rollout bake (s)")
    p.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p


def run(settings: DemoSettings, home: Path, console: Console, *, keep_running: bool) -> int:
    """Bring the system up, run the lifecycle, print the summary; 0 if every stage passed."""
    env = {**os.environ, "FEDGE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    os.environ["FEDGE_HOME"] = str(home)  # the in-process training opens the same registry
    procs = ProcessGroup(home, env, ROOT)
    stack = Stack(home, env, demo_devices(settings.devices, home), procs)
    result: dict[str, Any] = {"started": time.monotonic(), "errors": []}
    try:
        with console.status("keys, TLS broker with ACLs, coordinator (fedge cloud serve)"):
            stack.start_control_plane()
        result["dashboard"] = stack.api_url + "/"
        token_file = home / "dashboard-token"
        token_file.write_text(stack.viewer_token + "\n")
        token_file.chmod(0o600)
        console.print(f"coordinator and dashboard at [bold]{stack.api_url}/[/]")
        api = stack.admin
        assert api is not None
        with console.status("enrolling devices with one-time tokens (fedge edge enroll)"):
            result["enrolled"] = stack.enroll()
            result["partitions"] = stack.write_partitions(settings.data)
        stack.start_agents()
        console.print(
            "agents: " + ", ".join(f"{d.device_id} ({d.profile.stem})" for d in stack.devices)
        )
        with console.status(f"training on {settings.data}, quantizing (LiteRT-verified)"):
            result["trained"] = train(settings.data, settings.epochs)
        version = result["trained"]["version"]
        console.print(f"trained {version}: {result['trained']['float_accuracy']:.2%} (float)")
        with console.status(f"first install of {version} on every device"):
            result["first_install"] = first_install(api, version, stack.devices)
        # traffic from here on: the rollout's gates compare the candidate with what the
        # devices served before it (field telemetry) and beside it (shadow samples)
        traffic = Traffic(stack.devices, settings.data, settings.requests)
        with traffic:
            with console.status(f"{settings.rounds} federated rounds on the devices' SuperNodes"):
                result["federation"] = federate(api, stack, settings, version)
            new = result["federation"].get("best_version")
            if result["federation"]["state"] == "succeeded" and new:
                with console.status(f"rolling out {new} under traffic"):
                    result["rollout"] = roll_out(api, new, stack.devices, settings)
            else:
                result["errors"].append(
                    f"federated run {result['federation']['state']}: "
                    f"{result['federation'].get('error')}; nothing rolled out"
                )
        with console.status("measuring local inference on every device"):
            traffic.one_pass()  # the final numbers: every device on what it now serves
        result["traffic"] = traffic.stats
    except Exception as exc:  # a failed stage: report it with what was measured so far
        result["errors"].append(f"{exc.__class__.__name__}: {exc}")
    finally:
        if sys.exc_info()[0] is not None:  # Ctrl-C / SIGTERM: stop everything first
            procs.close()
    try:
        summary = summarize(result)
        (home / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print_summary(console, summary)
        if keep_running and not summary["errors"]:
            console.print("everything stays up: Ctrl-C stops it")
            while True:
                time.sleep(3600)
    finally:
        procs.close()
    return 1 if summary["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m simulations.demo``; returns the exit status (130 after Ctrl-C)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    interrupt_on_sigterm()
    # --json: the tables go to stderr, stdout holds exactly one JSON object
    stream = sys.stderr if args.json else sys.stdout
    # a log file or pipe gets 120 columns, not 80: the rollout timeline stays readable
    console = Console(stderr=args.json, width=None if stream.isatty() else 120)
    home = Path(os.environ.get("FEDGE_HOME", ".fedge")).resolve() / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    settings = DemoSettings(
        devices=args.devices,
        data=args.data,
        epochs=args.epochs,
        rounds=args.rounds,
        requests=args.requests,
        secagg=not args.no_secagg,
        rollout_bake_s=args.bake,
    )
    try:
        status = run(settings, home, console, keep_running=args.keep_running)
    except KeyboardInterrupt:
        console.print("interrupted: stopping every process of the demo")
        return 130
    if args.json:
        print((home / "summary.json").read_text())
    console.print(f"state and logs: {home}")
    return status
