"""The demo's summary: tables for people, one JSON object for ``--json``."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_summary", "summarize"]


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The summary of a run's raw results: rounds, float vs deployed, bytes, rollout, latency."""
    run = result.get("federation") or {}
    rounds = [
        {
            k: r.get(k)
            for k in (
                "round",
                "accuracy",
                "loss",
                "participants",
                "bytes_up",
                "bytes_down",
                "version",
            )
        }
        for r in run.get("rounds", [])
    ]
    first = (result.get("first_install") or {}).get("bytes_sent") or 0
    rollout = result.get("rollout") or {}
    deployed = rollout.get("deployment") or {}
    timeline = []
    start = None
    for e in rollout.get("events", []):
        start = e["at"] if start is None else start
        detail = e.get("detail") or {}
        timeline.append(
            {
                "t_s": round(e["at"] - start, 1),
                "kind": e["kind"],
                "cohort": e.get("cohort"),
                "gate": detail.get("gate"),
                "verdict": detail.get("verdict"),
                "values": detail.get("values"),
                "thresholds": detail.get("thresholds"),
            }
        )
    traffic = result.get("traffic") or {}
    trained = result.get("trained") or {}
    return {
        "dashboard": result.get("dashboard"),
        "devices": result.get("enrolled", []),
        "trained": trained,
        "rounds": rounds,
        "run_state": run.get("state"),
        "federated_version": run.get("best_version"),
        "float_vs_deployed": {
            "float_accuracy": trained.get("float_accuracy"),
            "deployed_accuracy_per_device": {d: s["accuracy"] for d, s in traffic.items()},
            "deployed_version_per_device": {d: s["version"] for d, s in traffic.items()},
        },
        "bytes": {
            "first_install_sent": first,
            "federation_up": sum(r.get("bytes_up") or 0 for r in rounds),
            "federation_down": sum(r.get("bytes_down") or 0 for r in rounds),
            "rollout_sent": deployed.get("bytes_sent"),
        },
        "rollout": {
            "kind": rollout.get("kind"),
            "state": (rollout.get("rollout") or deployed).get("state"),
            "timeline": timeline,
        },
        "latency_ms": {
            d: {"p50": s["p50_ms"], "p99": s["p99_ms"], "requests": s["requests"]}
            for d, s in traffic.items()
        },
        "errors": result.get("errors", []),
        "seconds": round(time.monotonic() - result.get("started", time.monotonic()), 1),
    }


def _fmt(value: Any, spec: str = "") -> str:
    return "–" if value is None else format(value, spec)


def print_summary(console: Console, s: dict[str, Any]) -> None:
    """The summary as tables."""
    rounds = Table(title=f"federated rounds ({s.get('run_state')}) → {s.get('federated_version')}")
    for col in ("round", "accuracy", "loss", "participants", "bytes up", "bytes down"):
        rounds.add_column(col, justify="right")
    for r in s["rounds"]:
        rounds.add_row(
            str(r["round"]),
            _fmt(r["accuracy"], ".2%"),
            _fmt(r["loss"], ".4f"),
            str(r["participants"]),
            _fmt(r["bytes_up"], ","),
            _fmt(r["bytes_down"], ","),
        )
    console.print(rounds)
    fvd = s["float_vs_deployed"]
    lat = Table(
        title=f"devices: deployed variant vs float (float accuracy "
        f"{_fmt(fvd['float_accuracy'], '.2%')})"
    )
    for col in ("device", "serving", "on-device accuracy", "p50 ms", "p99 ms", "requests"):
        lat.add_column(col, justify="left" if col in ("device", "serving") else "right")
    for device, stats in s["latency_ms"].items():
        lat.add_row(
            device,
            fvd["deployed_version_per_device"].get(device, "?"),
            _fmt(fvd["deployed_accuracy_per_device"].get(device), ".1%"),
            f"{stats['p50']:.2f}",
            f"{stats['p99']:.2f}",
            str(stats["requests"]),
        )
    console.print(lat)
    b = s["bytes"]
    console.print(
        f"bytes moved: first install {_fmt(b['first_install_sent'], ',')}, federation up "
        f"{b['federation_up']:,} / down {b['federation_down']:,}, rollout "
        + (f"{b['rollout_sent']:,}" if b["rollout_sent"] is not None else "(not reported)")
    )
    ro = s["rollout"]
    timeline = Table(title=f"rollout: {ro['kind']} → {ro['state']}")
    for col in ("t (s)", "event", "cohort", "gate", "verdict"):
        timeline.add_column(col)
    timeline.add_column("values", overflow="fold")
    for e in ro["timeline"]:
        values = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in (e.get("values") or {}).items()
        )
        timeline.add_row(
            str(e["t_s"]), e["kind"], _fmt(e["cohort"]), _fmt(e["gate"]), _fmt(e["verdict"]), values
        )
    console.print(timeline)
    for err in s["errors"]:
        console.print(f"[red]error[/]: {err}")
    console.print(f"dashboard: [bold]{s['dashboard']}[/] (viewer token in the demo home)")
