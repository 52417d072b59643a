"""Staged rollouts on a simulated fleet: a bad candidate's blast radius, cohorts vs all at
once, and the cloud-side cost per device updated.

Devices are the agents that ship (:class:`~edge.agent.Agent`, LiteRT probation), spread
over device-host processes as in ``benchmarks/ota.py`` (:mod:`benchmarks.ota_fleet`),
behind real Mosquitto (TLS + passwords + ACLs). The coordinator is this process: the
product's :class:`~cloud.rollout.engine.RolloutEngine` over
:class:`~cloud.rollout.delivery.PublisherLink` and a SQLite fleet store. In one run:

1. bootstrap: every device gets v1 (one publish to all);
2. **all at once**: v2 to every device in one publish (the baseline);
3. **cohorts**: v3 under a canary → 5 % → 25 % → 100 % policy with a bake per cohort;
   fleet-complete time beside (2) + the bakes (target: ≤ 1.5 × all-at-once + bakes);
4. **bad candidate**: v4 is an approved artifact that fails the devices' LiteRT probation;
   time from the canary's start to the abort, and how many devices were ever sent it
   (target: the canary only);
5. **plain pub/sub** of v3's bytes to as many subscribers (``benchmarks.ota.baseline_run``).

CPU seconds of the coordinator (this process, user + system) and of the broker (from
``/proc``) are measured around (2), (3) and (5) and divided by the devices updated. The
device-side cost is each device's own CPU, which one host cannot give 200 devices.

The simulated devices serve no inference traffic, so the telemetry gates (latency, error
rate, shadow agreement) are off here; they are exercised end to end on real agents under
load in ``tests/security/test_rollout_e2e.py``. The install/probation gate decides.

Writes ``benchmarks/results/rollout.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "rollout.json"


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Meter:
    """Wall time and coordinator + broker CPU seconds of one phase."""

    def __init__(self, broker_pid: int) -> None:
        from benchmarks.ota import _cpu_seconds

        self._cpu = _cpu_seconds
        self._pid = broker_pid

    def __enter__(self) -> _Meter:
        self.t0 = time.monotonic()
        self._self0, self._broker0 = _self_cpu_s(), self._cpu(self._pid)
        return self

    def __exit__(self, *_: object) -> None:
        self.wall_s = time.monotonic() - self.t0
        self.coordinator_cpu_s = _self_cpu_s() - self._self0
        self.broker_cpu_s = self._cpu(self._pid) - self._broker0

    def row(self, devices: int) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "coordinator_cpu_s": round(self.coordinator_cpu_s, 3),
            "broker_cpu_s": round(self.broker_cpu_s, 3),
            "coordinator_cpu_ms_per_device": round(1000 * self.coordinator_cpu_s / devices, 2),
            "broker_cpu_ms_per_device": round(1000 * self.broker_cpu_s / devices, 2),
        }


def _policy(devices: list[str], bake_s: float, timeout_s: float, canary: int) -> dict[str, Any]:
    return {
        "target": {"devices": devices},
        "cohorts": [{"count": canary}, {"percent": 5}, {"percent": 25}, {"percent": 100}],
        "bake_s": bake_s,
        "device_timeout_s": timeout_s,
        "max_concurrent_downloads": len(devices),
        "gates": {"field": None, "install": {"success_threshold": 1.0, "failure_threshold": 0.2}},
    }


def _run_rollout(engine: Any, store: Any, registry: Any, ref: str, policy: dict[str, Any]) -> Any:
    from cloud.rollout.create import start_rollout
    from cloud.rollout.policy import parse_policy

    made = start_rollout(
        store, registry, ref, parse_policy(policy), created_by="bench", now=time.time()
    )
    while True:
        rollout = engine.drive(made.rollout_id)
        if rollout.state.final:
            return rollout
        time.sleep(0.25)  # the leader's poll interval (``--lease-poll``; 1 s by default)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, default=200, help="simulated devices (issue: 200)")
    ap.add_argument("--device-hosts", type=int, default=8, help="device-host processes")
    ap.add_argument("--bake-s", type=float, default=2.0, help="bake time per cohort")
    ap.add_argument("--canary", type=int, default=2, help="canary size (devices)")
    ap.add_argument("--timeout-s", type=float, default=120.0, help="per-device timeout")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--model-cache", type=Path, default=Path("/tmp/fedge-rollout-models"))
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from benchmarks.ota import baseline_run, setup_fleet
    from benchmarks.ota_fleet import FleetSpec, SimulatedFleet
    from cloud.deployment.publisher import Outcome, Publisher, select_devices
    from cloud.fleet.store import FleetStore
    from cloud.registry import ArtifactStatus, Registry, VersionSource
    from cloud.registry.registry import NewArtifact
    from cloud.rollout.delivery import PublisherLink
    from cloud.rollout.engine import RolloutEngine
    from tests.helpers.models import build_models

    models = build_models(args.model_cache)
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="fedge-rollout-", dir=shm if shm.is_dir() else None))
    n = args.devices
    load_start = os.getloadavg()
    console = Console()
    console.print(f"{n} devices over {args.device_hosts} hosts in {work}", highlight=False)
    ctx = setup_fleet(work, n, n)
    ctx.update(work=work, hosts=args.device_hosts)
    home, port, proc, ids = ctx["home"], ctx["port"], ctx["proc"], ctx["ids"]
    registry = Registry(f"sqlite:///{work / 'reg.db'}", work / "store")
    store = FleetStore.from_registry(registry)
    for d in ids:
        store.add_device(d, hardware_id="hw-bench", profile=None, enrolled_at=time.time())
    bad = b"TFL3" + os.urandom(len(models.int8_b.read_bytes()))  # verifies; fails probation
    for data in (
        models.int8_a.read_bytes(),
        models.int8_b.read_bytes(),
        models.int8_a.read_bytes(),
        bad,
    ):
        art = NewArtifact("tflite", "int8", data, ArtifactStatus.APPROVED, "bench")
        registry.create_version("cnn", spec={}, source=VersionSource.TRAINED, artifacts=[art])
    link = PublisherLink(
        home,
        lambda: Publisher(registry, home, host="127.0.0.1", port=port),
        lambda: ("127.0.0.1", port),
        discover_s=0.5,
    )  # fmt: skip
    engine = RolloutEngine(store, link, rollback_timeout_s=30)
    result: dict[str, Any] = {
        "devices": n,
        "device_hosts": args.device_hosts,
        "bake_s": args.bake_s,
    }
    spec = FleetSpec("protocol", {d: str(home.device_dir(d)) for d in ids}, port, work=str(work),
                     probation="litert", hardware_id="hw-bench")  # fmt: skip
    try:
        with SimulatedFleet(spec, hosts=args.device_hosts) as fleet:
            fleet.wait_ready()
            time.sleep(1.0)
            targets = select_devices(home, ids, None)
            pub = Publisher(registry, home, host="127.0.0.1", port=port)
            console.print("bootstrap: v1 to every device…")
            boot = pub.publish("cnn@1", targets, timeout_s=args.timeout_s, discover_s=0.5)
            assert all(r.outcome is Outcome.COMMITTED for r in boot.devices.values()), "bootstrap"

            console.print("all at once: v2 in one publish…")
            with _Meter(proc.pid) as all_at_once:
                report = pub.publish("cnn@2", targets, timeout_s=args.timeout_s, discover_s=0.5)
            committed = sum(r.outcome is Outcome.COMMITTED for r in report.devices.values())
            result["all_at_once"] = {**all_at_once.row(n), "committed": committed}

            console.print("cohorts: v3 canary → 5% → 25% → 100%…")
            policy = _policy(ids, args.bake_s, args.timeout_s, args.canary)
            with _Meter(proc.pid) as cohorted:
                good = _run_rollout(engine, store, registry, "cnn@3", policy)
            bakes = args.bake_s * len([c for c in good.cohorts if c.size])
            result["cohorts"] = {
                **cohorted.row(n),
                "state": str(good.state),
                "committed": good.counts().get("committed", 0),
                "cohort_sizes": [c.size for c in good.cohorts],
                "bakes_s": bakes,
                "over_all_at_once_plus_bakes": round(
                    cohorted.wall_s / (all_at_once.wall_s + bakes), 3
                ),
                "minus_bakes_over_all_at_once": round(
                    (cohorted.wall_s - bakes) / all_at_once.wall_s, 3
                ),
            }  # fmt: skip

            console.print("bad candidate: v4 fails probation…")
            with _Meter(proc.pid) as aborted:
                bad_rollout = _run_rollout(engine, store, registry, "cnn@4", policy)
            events = store.list_rollout_events(bad_rollout.rollout_id)
            started = next(e.at for e in events if e.kind == "cohort_started")
            decided = next(e.at for e in events if e.kind == "abort")
            canary = {d.device_id for d in bad_rollout.cohort_devices(0)}
            exposed = {d.device_id for d in bad_rollout.devices if d.sends > 0}
            result["bad_candidate"] = {
                "state": str(bad_rollout.state),
                "canary": len(canary),
                "exposed_devices": len(exposed),
                "exposed_outside_canary": len(exposed - canary),
                "canary_start_to_abort_s": round(decided - started, 3),
                "canary_start_to_rolled_back_s": round(bad_rollout.finished_at - started, 3)
                if bad_rollout.finished_at
                else None,
                "gate": next(e.detail for e in events if e.kind == "gate"),
                "wall_s": round(aborted.wall_s, 3),
            }
        console.print("plain pub/sub of v3's bytes to as many subscribers…")
        artifact = registry.read_artifact(registry.get_version("cnn@3").artifacts[0])
        with _Meter(proc.pid) as plain:
            base = baseline_run(ctx, ids, artifact, 65536)
        # The broker's CPU and the wall time from baseline_run itself: from every subscriber
        # connected to the last chunk delivered (its fleet's start and TLS handshakes are not
        # the transfer). This process's CPU includes starting that fleet: an upper bound.
        result["plain_pubsub"] = {
            "wall_s": base["fleet_complete_s"],
            "broker_cpu_s": base["broker_cpu_s"],
            "broker_cpu_ms_per_device": round(1000 * base["broker_cpu_s"] / n, 2),
            "coordinator_cpu_s_upper_bound": round(plain.coordinator_cpu_s, 3),
            "coordinator_cpu_ms_per_device": round(1000 * plain.coordinator_cpu_s / n, 2),
            "chunks": base["chunks"],
        }
    finally:
        registry.close()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    result["loadavg_start"] = [round(x, 2) for x in load_start]
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["cpu_count"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    t = Table(title=f"staged rollouts, {n} simulated devices (Mosquitto TLS+ACL, loopback)")
    for col in ("run", "wall s", "coord CPU ms/dev", "broker CPU ms/dev", "notes"):
        t.add_column(col, justify="right")
    a, c, p = result["all_at_once"], result["cohorts"], result["plain_pubsub"]
    b = result["bad_candidate"]
    t.add_row(
        "all at once (v2)",
        str(a["wall_s"]),
        str(a["coordinator_cpu_ms_per_device"]),
        str(a["broker_cpu_ms_per_device"]),
        f"{a['committed']}/{n} committed",
    )
    t.add_row(
        "cohorts (v3)",
        str(c["wall_s"]),
        str(c["coordinator_cpu_ms_per_device"]),
        str(c["broker_cpu_ms_per_device"]),
        f"{c['state']}; {c['over_all_at_once_plus_bakes']}× (all at once + "
        f"{c['bakes_s']} s bakes), target ≤ 1.5",
    )
    t.add_row(
        "plain pub/sub",
        str(p["wall_s"]),
        str(p["coordinator_cpu_ms_per_device"]),
        str(p["broker_cpu_ms_per_device"]),
        f"{p['chunks']} chunks; coordinator CPU is an upper bound",
    )
    t.add_row("bad candidate (v4)", str(b["wall_s"]), "-", "-",
              f"{b['state']} {b['canary_start_to_abort_s']} s after canary start; exposed "
              f"{b['exposed_devices']} (outside canary {b['exposed_outside_canary']})")  # fmt: skip
    console.print(t)
    console.print(
        f"load average {result['loadavg_start']} → {result['loadavg_end']} "
        f"on {result['cpu_count']} cores"
    )
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
