"""``make demo``: the whole system on one machine, end to end.

1. cloud: train a CNN on mnist-5k, quantize it to int8, verify it in LiteRT (table: torch
   eager float vs LiteRT float vs LiteRT int8).
2. fleet: root/release keys, a private Mosquitto with TLS + per-device ACLs, and three edge
   agents (hub, camera, traffic node) as separate processes.
3. deployment: publish the int8 model — signed manifest, per-device encrypted chunks, A/B
   install with probation — and run inference on every device over its loopback HTTP API.
4. learning: a federated fine-tuning run on Flower (simulation engine), quantized again, and
   rolled out as an over-the-air update (a delta when smaller); the devices hot-swap to it.

The demo's state lives in ``$FEDGE_HOME/demo`` (default ``.fedge/demo``) and is recreated
on every run. ``--cloud-only`` stops after step 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from simulations.fleet import DemoDevice, Fleet, fedge, free_port, health, infer, profile_value

ROOT = Path(__file__).resolve().parents[1]
console = Console()
DEVICES = (
    ("hub-1", "smart_home_hub"),
    ("camera-1", "smart_camera"),
    ("traffic-1", "city_traffic_node"),
)


def step(title: str) -> None:
    """Print a step header."""
    console.rule(f"[bold]{title}")


def cloud_stage(epochs: int) -> tuple[str, dict[str, Any]]:
    """Train, quantize and compare; returns the version and the measurements."""
    from cloud.cli.common import open_registry
    from cloud.quantization import quantize_version
    from cloud.quantization.compare import compare_version
    from cloud.training import TrainConfig
    from cloud.training.workflow import TrainRequest, train_and_register

    registry = open_registry()
    try:
        with console.status("training a CNN on mnist-5k"):
            version = train_and_register(
                registry, TrainRequest(data="mnist-5k", config=TrainConfig(epochs=epochs))
            )
        console.print(
            f"trained [bold]{version.ref}[/]: test accuracy "
            f"{version.metrics['test_accuracy']:.2%} in {version.metrics['seconds']:.1f}s"
        )
        with console.status("converting and quantizing (verified in LiteRT)") as status:
            report = quantize_version(registry, version.ref, on_step=status.update)
        with console.status("measuring single-thread latency"):
            rows = compare_version(registry, version.ref, runs=500)
    finally:
        registry.close()
    table = Table(title=f"{version.ref} on the held-out mnist-5k split (1 thread, batch 1)")
    for col in ("runtime", "accuracy", "bytes", "median ms", "p99 ms", "status"):
        table.add_column(col, justify="left" if col in ("runtime", "status") else "right")
    for r in rows:
        table.add_row(
            r.name,
            f"{r.accuracy:.2%}",
            f"{r.bytes:,}",
            f"{r.latency_median_ms:.3f}",
            f"{r.latency_p99_ms:.3f}",
            r.status,
        )
    console.print(table)
    console.print(f"deployable artifact: [bold]{report.selected}[/]")
    return version.ref, {"selected": report.selected, "rows": [r.to_dict() for r in rows]}


def _test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    from cloud.data import load_dataset, stratified_split

    split = stratified_split(load_dataset("mnist-5k"), seed=0)
    return split.test_x[:count], split.test_y[:count]


def device_table(fleet: Fleet, report: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """Health and on-device accuracy of every device; prints a table."""
    x, y = _test_images(200)
    table = Table(title=title)
    for col in ("device", "profile", "update", "encoding", "serving", "on-device accuracy"):
        table.add_column(col)
    rows = []
    for dev in fleet.devices:
        outcome = report["devices"].get(dev.device_id, {})
        served = health(dev)
        correct = 0
        version = "?"
        for i in range(len(x)):
            out, version = infer(dev, x[i : i + 1])
            correct += int(np.argmax(out) == y[i])
        row = {
            "device": dev.device_id,
            "outcome": outcome.get("outcome"),
            "encoding": outcome.get("encoding"),
            "version": version,
            "accuracy": correct / len(y),
            "health": served,
        }
        rows.append(row)
        table.add_row(
            dev.device_id,
            dev.profile.stem,
            str(row["outcome"]),
            str(row["encoding"]),
            version,
            f"{row['accuracy']:.1%} of {len(y)}",
        )
    console.print(table)
    return rows


def fleet_stage(version: str, env: dict[str, str], home: Path, rounds: int) -> dict[str, Any]:
    """Keys, broker, agents, first rollout, federated update, second rollout."""
    devices = []
    for device_id, profile in DEVICES:
        path = ROOT / "firmware_configs" / f"{profile}.toml"
        devices.append(
            DemoDevice(
                device_id,
                path,
                profile_value(path, "hardware_id"),
                tuple(profile_value(path, "groups")),
                free_port(),
            )
        )
    fleet = Fleet(home, env, devices)
    result: dict[str, Any] = {}
    try:
        step("2. fleet: keys, TLS broker with per-device ACLs, three edge agents")
        with console.status("fedge keys init / enroll-device / broker config / broker run"):
            fleet.setup()
        console.print(
            f"broker on mqtts://127.0.0.1:{fleet.broker_port}; devices: "
            + ", ".join(f"{d.device_id} ({d.profile.stem})" for d in devices)
        )
        fleet.start_agents()

        step(f"3. deployment: publish {version} (signed, encrypted per device, A/B install)")
        with console.status(f"fedge cloud publish {version}"):
            first = fleet.publish(version)
        console.print(f"sent {first['bytes_sent']:,} bytes in {first['seconds']:.1f}s")
        result["first_rollout"] = {
            "report": first,
            "devices": device_table(fleet, first, f"devices after {version}"),
        }

        step("4. learning: federated fine-tuning on Flower, then an over-the-air update")
        with console.status(f"fedge cloud federate: 4 clients, {rounds} rounds, from {version}"):
            fed = fedge(
                "cloud",
                "federate",
                "--data",
                "mnist-5k",
                "--clients",
                "4",
                "--rounds",
                str(rounds),
                "--local-epochs",
                "1",
                # fine-tuning a trained model: a gentle step keeps what it already knows
                "--lr",
                "0.01",
                "--init",
                version,
                env=env,
            )
        for r in fed["rounds"]:
            console.print(
                f"round {r.get('round')}: accuracy {r.get('accuracy', 0):.2%}, "
                f"participants {r.get('participants')}, bytes up {r.get('bytes_up', 0):,}"
            )
        result["federation"] = fed
        new = fed.get("best_version")
        if not (new and fed.get("deployable")):
            console.print(f"federated model {new} is not deployable; the fleet keeps {version}")
            return result
        # Roll out only what is no worse than the fleet's model beyond the accuracy budget.
        best = next((r for r in fed["rounds"] if r.get("version") == new), None)
        start = fed.get("initial_accuracy")
        if best is not None and start is not None:
            change = (best["accuracy"] - start) * 100
            console.print(
                f"best round {new}: {best['accuracy']:.2%} vs {version} {start:.2%} "
                f"({change:+.1f} points; budget -1.0)"
            )
            if change < -1.0:
                console.print(f"not rolled out: the fleet keeps {version}")
                return result
        with console.status(f"fedge cloud publish {new}"):
            second = fleet.publish(new)
        console.print(f"sent {second['bytes_sent']:,} bytes in {second['seconds']:.1f}s")
        result["second_rollout"] = {
            "report": second,
            "devices": device_table(fleet, second, f"devices after {new}"),
        }
        return result
    finally:
        fleet.stop()


def main() -> None:
    """Run the demo; ``--json`` prints every measurement as one JSON object at the end."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds")
    parser.add_argument("--cloud-only", action="store_true", help="stop after the cloud stage")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    home = Path(os.environ.get("FEDGE_HOME", ".fedge")).resolve() / "demo"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    os.environ["FEDGE_HOME"] = str(home)
    env = {**os.environ, "FEDGE_HOME": str(home)}

    step("1. cloud: train → int8 TFLite → verified in LiteRT")
    version, cloud = cloud_stage(args.epochs)
    summary: dict[str, Any] = {"version": version, "cloud": cloud}
    if not args.cloud_only:
        summary["fleet"] = fleet_stage(version, env, home, args.rounds)
    console.print(f"state and logs: {home}")
    if args.json:
        print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        console.print("interrupted; every process of the demo was stopped")
        raise SystemExit(130) from None
