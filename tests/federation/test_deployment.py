"""Flower's Deployment Engine for real: a SuperLink and 3 SuperNodes as processes on loopback.

The SuperLink serves TLS with a certificate from the project CA and admits only the
SuperNode keys registered at enrollment; each SuperNode is started by the device-side
supervisor from its enrollment bundle and trains on its own ``train.npz`` (unequal shares,
so the aggregate's weighting shows). Kept tiny (digits, MLP, 2 rounds, 1 local epoch) for a
shared 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import psutil
import pytest
from flwr.app import Context, RecordDict

from cloud.data import load_dataset
from cloud.data.datasets import stratified_split
from cloud.federation.deployment import (
    RegistryLocation,
    register_fleet,
    run_deployed_federation,
    superlink_tls,
)
from cloud.federation.partition import partition
from cloud.federation.plan import FederationPlan, RoundReport
from cloud.federation.secagg import legacy_train_config
from cloud.federation.server import FederationRunner
from cloud.federation.strategies import Participation
from cloud.federation.superlink import SuperLinkProcess, free_port
from cloud.keys import KeyHome
from cloud.registry import Registry, VersionSource
from cloud.training.serialize import model_from_bytes
from edge.learning.secagg_client import SecAggTrainer
from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.crypto.nodeauth import make_node_auth_key
from tests.helpers.secagg import assert_weighted_mean_within_quantization_error

DEVICES = ("dev-a", "dev-b", "dev-c")
SHARES = (0.5, 0.3, 0.2)  # of the train split, per device

pytestmark = pytest.mark.slow


@dataclass
class Federation:
    """A running SuperLink with one supervised SuperNode per enrolled device."""

    superlink: SuperLinkProcess
    nodes: dict[str, SuperNodeSupervisor]
    node_logs: dict[str, Path]
    registry: Registry
    location: RegistryLocation
    workdir: Path
    data: dict[str, Path]


def _write_device_data(root: Path, seed: int) -> dict[str, Path]:
    """Split the digits train split across the devices (IID, sizes ``SHARES``)."""
    dataset = load_dataset("digits")
    split = stratified_split(dataset, seed=seed)
    shuffled = np.concatenate(partition(split.train_y, len(DEVICES), alpha=None, seed=seed))
    cuts = (np.cumsum(SHARES)[:-1] * len(shuffled)).astype(int)
    dirs: dict[str, Path] = {}
    for device, idx in zip(DEVICES, np.split(shuffled, cuts), strict=True):
        d = root / device
        d.mkdir(parents=True)
        np.savez(d / "train.npz", x=split.train_x[idx], y=split.train_y[idx])
        dirs[device] = d
    return dirs


def _wait_online(superlink: SuperLinkProcess, count: int, timeout: float = 90.0) -> None:
    cli = superlink.cli()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(n.get("status") == "online" for n in cli.nodes()) >= count:
            return
        time.sleep(1.0)
    raise AssertionError(f"fewer than {count} SuperNodes came online: {cli.nodes()}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """One fleet for the module (starting it costs ~30 s on a loaded 2-core machine).

    The kill test must stay the last user: it leaves dev-a down.
    """
    tmp_path = tmp_path_factory.mktemp("federation")
    keys = KeyHome(tmp_path / "keys")
    keys.init()
    for device in DEVICES:
        keys.enroll_device(device, hardware_id=f"hw-{device}")
    data = _write_device_data(tmp_path / "device-data", seed=0)
    superlink = SuperLinkProcess(tmp_path / "superlink", tls=superlink_tls(keys), node_auth=True)
    superlink.start()
    nodes: dict[str, SuperNodeSupervisor] = {}
    logs: dict[str, Path] = {}
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts")
    try:
        registered = register_fleet(keys, superlink.cli(), tmp_path / "superlink")
        assert sorted(registered) == list(DEVICES)
        for device in DEVICES:
            logs[device] = tmp_path / f"{device}.log"
            config = SuperNodeConfig.from_bundle(
                superlink.address,
                keys.device_dir(device),
                data[device],
                runtime_port=free_port(),
                log_path=logs[device],
                flwr_home=tmp_path / f"flwr-{device}",
                backoff_initial=600.0,  # a killed node stays down for the whole test
            )
            nodes[device] = SuperNodeSupervisor(config)
            nodes[device].start()
        _wait_online(superlink, len(DEVICES))
        yield Federation(
            superlink,
            nodes,
            logs,
            registry,
            RegistryLocation(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts"),
            tmp_path / "runs",
            data,
        )
    finally:
        for node in nodes.values():
            node.stop()
        superlink.stop()
        registry.close()


def _plan(
    run_id: str,
    *,
    round_timeout: float,
    min_clients: int,
    secagg: bool = False,
    secagg_impl: str = "flower",
) -> FederationPlan:
    return FederationPlan(
        data="digits",
        num_clients=len(DEVICES),
        rounds=2,
        arch="mlp",
        local_epochs=1,
        participation=Participation(1.0, min_clients, len(DEVICES)),
        round_timeout=round_timeout,
        quantize=False,
        secure_aggregation=secagg,
        secagg_timeout=round_timeout,
        secagg_impl=secagg_impl,
        run_id=run_id,
    )


def test_tls_authenticated_fleet_runs_rounds_into_the_registry(federation: Federation) -> None:
    streamed: list[RoundReport] = []
    plan = _plan("run-deploy-1", round_timeout=120.0, min_clients=3)
    result = run_deployed_federation(
        plan,
        federation.superlink,
        federation.location,
        workdir=federation.workdir,
        on_round=streamed.append,
    )

    assert [r.round for r in streamed] == [1, 2]
    assert [r.participants for r in streamed] == [3, 3]
    assert streamed[-1].accuracy > result.initial_accuracy + 0.2
    assert all(r.bytes_up > 0 and r.bytes_down > 0 for r in streamed)
    versions = sorted(federation.registry.list_versions("mlp-digits-fl"), key=lambda v: v.number)
    assert [v.source_ref for v in versions] == ["run-deploy-1/round-1", "run-deploy-1/round-2"]
    assert all(v.source == VersionSource.FEDERATED for v in versions)
    assert [v.parent for v in versions] == [None, versions[0].ref]
    assert [v.metrics["test_accuracy"] for v in versions] == [r.accuracy for r in streamed]
    assert result.best_version == max(streamed, key=lambda r: r.accuracy).version


def test_secagg_plus_aggregate_over_the_superlink_is_the_weighted_mean(
    federation: Federation,
) -> None:
    """SecAgg+ (the default for FedAvg) over the Deployment Engine: 3 SuperNodes, 2 rounds,
    and each round's global model is the num_examples-weighted mean of the devices' deltas
    within SecAgg+'s quantization error.

    The expected deltas are recomputed here, as in ``test_secagg``: the same deterministic
    local training (``SecAggTrainer``, same seed) on each device's ``train.npz`` from the
    previous round's global model as stored in the registry. (~2 min: each SecAgg+ round is
    4 message exchanges with a cold ClientApp process per message.)
    """
    streamed: list[RoundReport] = []
    plan = _plan("run-deploy-secagg", round_timeout=120.0, min_clients=3, secagg=True)
    assert plan.uses_secagg
    result = run_deployed_federation(
        plan,
        federation.superlink,
        federation.location,
        workdir=federation.workdir,
        on_round=streamed.append,
    )

    assert [(r.round, r.participants, r.failed) for r in streamed] == [(1, 3, 0), (2, 3, 0)]
    assert streamed[-1].accuracy > result.initial_accuracy + 0.2
    # The ServerApp's runner, rebuilt here: same plan → same initial model and train config.
    runner = FederationRunner(plan, federation.registry)

    def global_weights(server_round: int) -> list[np.ndarray]:
        if server_round == 0:
            return [a.numpy() for a in runner.initial.values()]
        ref = streamed[server_round - 1].version
        assert ref is not None
        version = federation.registry.get_version(ref)
        assert version.source_ref == f"run-deploy-secagg/round-{server_round}"
        blob = federation.registry.read_artifact(version.artifact("torch", "fp32"))
        model = model_from_bytes(runner.spec, blob)
        return [v.detach().numpy() for v in model.state_dict().values()]

    for server_round in (1, 2):
        before, after = global_weights(server_round - 1), global_weights(server_round)
        config = cast(dict[str, Any], legacy_train_config(runner, server_round))
        updates = []
        for device in DEVICES:
            context = Context(
                run_id=0,
                node_id=0,
                node_config={"data-path": str(federation.data[device] / "train.npz")},
                state=RecordDict(),
                run_config={},
            )
            delta, examples, _ = SecAggTrainer(context).fit(before, config)
            updates.append((delta, examples))
        assert_weighted_mean_within_quantization_error(before, after, updates, server_round)


def test_fedge_secagg_over_the_superlink_is_the_bounded_weighted_mean(
    federation: Federation,
) -> None:
    """fedge SecAgg through the Deployment Engine: 3 TLS-authenticated SuperNodes running
    ``edge.learning.client_app:secure_app``. Each round's model is the capped-weight mean of
    the devices' deltas (recomputed here with the same deterministic local training) within
    the 8-bit quantization bound, and the upload is under half the float32 size."""
    streamed: list[RoundReport] = []
    plan = _plan(
        "run-deploy-fedge", round_timeout=120.0, min_clients=3, secagg=True, secagg_impl="fedge"
    )
    result = run_deployed_federation(
        plan,
        federation.superlink,
        federation.location,
        workdir=federation.workdir,
        on_round=streamed.append,
    )
    assert [(r.round, r.participants, r.failed) for r in streamed] == [(1, 3, 0), (2, 3, 0)]
    assert all(0 < r.bytes_up <= 0.5 * r.raw_bytes_up for r in streamed)
    assert streamed[-1].accuracy > result.initial_accuracy + 0.2
    runner = FederationRunner(plan, federation.registry)

    def global_weights(server_round: int) -> list[np.ndarray]:
        if server_round == 0:
            return [a.numpy() for a in runner.initial.values()]
        ref = streamed[server_round - 1].version
        assert ref is not None
        blob = federation.registry.read_artifact(
            federation.registry.get_version(ref).artifact("torch", "fp32")
        )
        return [
            v.detach().numpy() for v in model_from_bytes(runner.spec, blob).state_dict().values()
        ]

    levels, clip = (1 << plan.secagg_bits) - 1, plan.secagg_clip
    for server_round in (1, 2):
        before, after = global_weights(server_round - 1), global_weights(server_round)
        config = dict(runner.train_config(server_round))
        weighted, total = [np.zeros_like(b, np.float64) for b in before], 0.0
        unclipped = [np.ones(b.shape, bool) for b in before]
        for device in DEVICES:
            context = Context(
                run_id=0,
                node_id=0,
                node_config={"data-path": str(federation.data[device] / "train.npz")},
                state=RecordDict(),
                run_config={},
            )
            delta, examples, _ = SecAggTrainer(context).fit(before, config)
            weight = min(examples, runner.max_examples) / runner.max_examples
            total += weight
            for i, d in enumerate(delta):
                weighted[i] += weight * d
                unclipped[i] &= np.abs(weight * d) <= clip
        step = 2 * clip / levels
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            expected = b + weighted[i] / total
            bound = (3 * step + np.abs(weighted[i]) * 1.5 / levels / total) / (total - 1.5 / levels)
            ok = np.abs(a - expected) <= bound + 1e-6
            assert np.all(ok[unclipped[i]]), (server_round, i)


def _wait_for_log(path: Path, needle: str, count: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(needle) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} never appeared in {path}")


def test_supernode_killed_mid_round_leaves_the_round_to_the_others(
    federation: Federation,
) -> None:
    victim = federation.nodes["dev-a"]
    streamed: list[RoundReport] = []

    def on_round(report: RoundReport) -> None:
        streamed.append(report)
        if report.round == 1:
            # dev-a receiving its second train message means round 2 is under way and its
            # ClientApp is still starting (a fresh process per message): kill it hard (no
            # goodbye to the SuperLink) and keep it down.
            _wait_for_log(federation.node_logs["dev-a"], "Receiving: train message", 2)
            pid = victim.pid
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)  # the fixture's long backoff keeps it down

    plan = _plan("run-deploy-kill", round_timeout=40.0, min_clients=2)
    result = run_deployed_federation(
        plan,
        federation.superlink,
        federation.location,
        workdir=federation.workdir,
        on_round=on_round,
    )

    assert [r.round for r in streamed] == [1, 2]
    assert streamed[0].participants == 3
    assert streamed[1].participants == 2
    assert streamed[1].version is not None
    assert result.rounds[-1].version == streamed[1].version


def test_superlink_refuses_to_authenticate_without_tls(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="needs TLS"):
        SuperLinkProcess(tmp_path, tls=None, node_auth=True)


def test_supervisor_restarts_a_dead_supernode_and_stops_its_group(tmp_path: Path) -> None:
    data = tmp_path / "train.npz"
    np.savez(data, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    # Nothing listens on this port: the SuperNode keeps retrying, i.e. stays up.
    config = SuperNodeConfig(
        superlink=f"127.0.0.1:{free_port()}",
        data_path=data,
        insecure=True,
        runtime_port=free_port(),
        flwr_home=tmp_path / "flwr",
        backoff_initial=0.2,
    )
    supervisor = SuperNodeSupervisor(config)
    supervisor.start()
    try:
        first = _wait_pid(supervisor, lambda pid: pid is not None)
        os.killpg(first, signal.SIGKILL)
        second = _wait_pid(supervisor, lambda pid: pid not in (None, first))
        assert supervisor.restarts == 1
    finally:
        supervisor.stop()
    assert supervisor.pid == second
    with pytest.raises(ProcessLookupError):
        os.killpg(second, 0)  # the whole group is gone


_ORPHAN_PARENT = """
import sys, time
from pathlib import Path
from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor
superlink, data, port, home = sys.argv[1:5]
config = SuperNodeConfig(superlink=superlink, data_path=Path(data), insecure=True,
                         runtime_port=int(port), flwr_home=Path(home))
supervisor = SuperNodeSupervisor(config)
supervisor.start()
while supervisor.pid is None:
    time.sleep(0.05)
print(supervisor.pid, flush=True)
time.sleep(600)
"""


def test_a_sigkilled_agent_leaves_no_orphan_supernode(tmp_path: Path) -> None:
    """The supervising process dies without any cleanup: its SuperNode must go too."""
    data = tmp_path / "train.npz"
    np.savez(data, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _ORPHAN_PARENT,
            f"127.0.0.1:{free_port()}",
            str(data),
            str(free_port()),
            str(tmp_path / "flwr"),
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert psutil.pid_exists(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 20
        while psutil.pid_exists(child) and psutil.Process(child).status() != "zombie":
            assert time.monotonic() < deadline, "the SuperNode outlived its agent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()


def _wait_pid(supervisor: SuperNodeSupervisor, ok: Callable[[int | None], bool]) -> int:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        pid = supervisor.pid
        if ok(pid) and pid is not None:
            return pid
        time.sleep(0.1)
    raise AssertionError("the supervisor did not (re)start the SuperNode")


def test_superlink_rejects_a_supernode_whose_key_was_never_registered(
    federation: Federation, tmp_path: Path
) -> None:
    """A valid P-384 key and the right CA, but no enrollment: activation is refused."""
    key = make_node_auth_key()
    (tmp_path / "supernode.key").write_bytes(key.private_openssh)
    tls = federation.superlink.tls
    assert tls is not None
    (tmp_path / "ca.crt").write_bytes(tls.ca_cert.read_bytes())
    data = tmp_path / "train.npz"
    np.savez(data, x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))
    config = SuperNodeConfig.from_bundle(
        federation.superlink.address,
        tmp_path,
        data,
        runtime_port=free_port(),
        flwr_home=tmp_path / "flwr",
    )
    log_path = tmp_path / "intruder.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [*config.command(), "--max-retries", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                # as the supervisor does: the SuperNode starts its helpers by name
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
            },
        )
    try:
        code = proc.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0
    text = log_path.read_text()
    # Flower's SUPERNODE_CONNECTION_ERROR: activation refused, so it never joined.
    assert "Exit Code: 305" in text and "Failed to activate SuperNode" in text
    assert "No SuperNode found with the given public key" in (
        federation.superlink.log_path.read_text()
    )
