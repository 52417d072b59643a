"""SecAgg+ on Flower's Simulation Engine: 3 devices, 2 rounds, digits.

One real simulation (module fixture, ~40 s) backs both properties:

* the aggregate equals the plain num_examples-weighted mean of the devices' deltas, within
  SecAgg+'s quantization error — the expected deltas are recomputed here by running the same
  deterministic client training on the same partitions from the same global weights;
* the ServerApp never receives an individual plaintext update: a recording Grid, placed
  between Flower and the ServerApp's workflow, keeps every reply, and none of them holds a
  device's delta or weights — only keys, encrypted shares and masked integer vectors.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from cloud.federation.plan import FederationPlan, RoundReport
from cloud.federation.secagg import SecAggConfig, TrafficGrid, legacy_train_config
from cloud.federation.server import FederationRunner
from cloud.federation.simulation import write_partitions
from cloud.registry import Registry
from cloud.training.serialize import model_from_bytes
from edge.learning.secagg_client import SecAggTrainer
from edge.learning.secagg_client import app as secagg_client_app
from tests.helpers.secagg import assert_weighted_mean_within_quantization_error

NUM_CLIENTS = 3
ROUNDS = 2


class RecordingGrid(TrafficGrid):
    """The shipped counting Grid, additionally keeping every reply the workflow receives."""

    def __init__(self, inner: Grid) -> None:
        super().__init__(inner, {}, 0)
        self.replies: list[Message] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.replies.extend(replies)
        return replies


@dataclass
class SecAggRun:
    runner: FederationRunner
    registry: Registry
    partition_dir: Path
    reports: list[RoundReport]
    replies: list[Message] = field(default_factory=list)

    def weights_after(self, server_round: int) -> list[np.ndarray]:
        """The global model's tensors after ``server_round`` (0: the starting model)."""
        if server_round == 0:
            return [a.numpy() for a in self.runner.initial.values()]
        ref = self.reports[server_round - 1].version
        assert ref is not None
        version = self.registry.get_version(ref)
        model = model_from_bytes(
            self.runner.spec, self.registry.read_artifact(version.artifact("torch", "fp32"))
        )
        return [v.detach().numpy() for v in model.state_dict().values()]

    def client_update(self, partition: int, server_round: int) -> tuple[list[np.ndarray], int]:
        """Recompute one device's plaintext delta for a round, as its ClientApp does."""
        context = Context(
            run_id=0,
            node_id=partition,
            node_config={"partition-id": partition},
            state=RecordDict(),
            run_config={},
        )
        config = cast(dict[str, Any], legacy_train_config(self.runner, server_round))
        delta, examples, _ = SecAggTrainer(context).fit(
            self.weights_after(server_round - 1), config
        )
        return delta, examples


@pytest.fixture(scope="module")
def secagg_run() -> Iterator[SecAggRun]:
    with tempfile.TemporaryDirectory(prefix="fedge-secagg-test-") as tmp:
        root = Path(tmp)
        registry = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
        plan = FederationPlan(
            data="digits",
            num_clients=NUM_CLIENTS,
            rounds=ROUNDS,
            local_epochs=1,
            alpha=0.5,  # label skew → unequal partition sizes, so weighting matters
            quantize=False,
            run_id="run-secagg",
            secagg_timeout=60.0,
        )
        assert plan.uses_secagg  # on by default for fedavg
        reports: list[RoundReport] = []
        parts = root / "partitions"
        parts.mkdir()
        runner = FederationRunner(
            plan,
            registry,
            on_round=reports.append,
            extra_train_config={"partition-dir": str(parts)},
        )
        write_partitions(runner, parts)
        run = SecAggRun(runner, registry, parts, reports)
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            recorder = RecordingGrid(grid)
            try:
                from cloud.federation.secagg import run_secure_federation

                run_secure_federation(runner, recorder, context)
            finally:
                run.replies = recorder.replies

        run_simulation(
            server_app=server,
            client_app=secagg_client_app,
            num_supernodes=NUM_CLIENTS,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": 2, "include_dashboard": False},
            },
        )
        yield run
        registry.close()


def test_secagg_aggregate_is_the_weighted_mean_within_quantization_error(
    secagg_run: SecAggRun,
) -> None:
    run = secagg_run
    assert [r.round for r in run.reports] == [1, 2]
    for report in run.reports:
        assert (report.participants, report.failed) == (NUM_CLIENTS, 0)
        assert report.version is not None
    for server_round in (1, 2):
        updates = [run.client_update(i, server_round) for i in range(NUM_CLIENTS)]
        before = run.weights_after(server_round - 1)
        after = run.weights_after(server_round)
        assert_weighted_mean_within_quantization_error(before, after, updates, server_round)


def test_serverapp_never_receives_a_plaintext_update(secagg_run: SecAggRun) -> None:
    run = secagg_run
    assert run.replies, "the recording grid saw no reply"
    plaintexts: list[np.ndarray] = []
    for partition in range(NUM_CLIENTS):
        delta, _ = run.client_update(partition, 1)
        local = [g + d for g, d in zip(run.weights_after(0), delta, strict=True)]
        plaintexts += [t.ravel() for t in delta + local if t.size >= 1000]
    masked_vectors = 0
    modulus = SecAggConfig().modulus_range
    for reply in run.replies:
        if reply.has_error():
            continue
        content = reply.content
        # The mod strips the ArrayRecord holding the update before replying.
        assert all(len(record) == 0 for record in content.array_records.values())
        config = content.config_records[RECORD_KEY_CONFIGS]
        if Key.MASKED_PARAMETERS not in config:
            continue
        masked_vectors += 1
        vectors = [bytes_to_ndarray(b) for b in cast(list[bytes], config[Key.MASKED_PARAMETERS])]
        for vec in vectors[1:]:  # vectors[0] is the masked example-count factor
            assert vec.dtype.kind in "iu"
            assert vec.min() >= 0 and vec.max() < modulus
            flat = vec.ravel().astype(np.float64)
            for plain in plaintexts:
                if plain.size != flat.size:
                    continue
                assert not np.allclose(flat, plain, atol=1e-3)
                # Masked values are uniform noise: no linear trace of the plaintext.
                assert abs(np.corrcoef(flat, plain)[0, 1]) < 0.2
    assert masked_vectors == NUM_CLIENTS * ROUNDS


def test_plan_defaults_secagg_on_for_fedavg_family_and_off_for_robust() -> None:
    for name in ("fedavg", "fedprox", "fedadam"):
        assert FederationPlan(strategy=name).uses_secagg
        assert not FederationPlan(strategy=name, secure_aggregation=False).uses_secagg
    for name in ("trimmed-mean", "median"):
        assert not FederationPlan(strategy=name).uses_secagg


def test_cli_refuses_secagg_with_a_robust_strategy() -> None:
    import typer
    from typer.testing import CliRunner

    from cloud.cli.federate import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps Typer in sub-command mode
        """Unused."""

    out = CliRunner().invoke(
        app, ["federate", "--strategy", "median", "--secagg", "fedge", "--json"]
    )
    assert out.exit_code != 0
    assert "SecAgg" in out.output


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_a_diverged_device_drops_out_and_the_secagg_round_completes(registry: Registry) -> None:
    """Partition 0's delta is NaN: it drops out before masking; the other two carry on."""
    from cloud.federation.simulation import run_simulated_federation

    plan = FederationPlan(
        data="digits",
        num_clients=3,
        rounds=2,
        local_epochs=2,
        quantize=False,
        secagg_timeout=60.0,
        secagg_impl="flower",
    )
    streamed: list[RoundReport] = []
    result = run_simulated_federation(
        plan,
        registry,
        on_round=streamed.append,
        client_app="tests.federation.faulty_secagg_client:app",
    )
    assert [r.round for r in streamed] == [1, 2]
    for r in streamed:
        assert (r.participants, r.failed) == (2, 1)
    assert streamed[-1].accuracy > result.initial_accuracy + 0.2


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_plan_learning_rate_decays_per_round_and_reaches_the_legacy_config(
    registry: Registry,
) -> None:
    from cloud.federation import defaults
    from shared.errors import ConfigError

    plan = FederationPlan()
    assert (plan.lr, plan.lr_decay, plan.batch_size) == (
        defaults.LR,
        defaults.LR_DECAY,
        defaults.BATCH_SIZE,
    )
    assert FederationPlan(lr=0.2, lr_decay=1.0).lr_at(7) == 0.2
    assert FederationPlan(lr=0.2, lr_decay=0.5).lr_at(3) == pytest.approx(0.05)
    with pytest.raises(ConfigError):
        FederationPlan(lr_decay=0.0)
    with pytest.raises(ConfigError):
        FederationPlan(lr_decay=1.5)
    runner = FederationRunner(FederationPlan(lr=0.1, lr_decay=0.5, quantize=False), registry)
    assert legacy_train_config(runner, 1)["lr"] == pytest.approx(0.1)
    assert legacy_train_config(runner, 3)["lr"] == pytest.approx(0.025)
    assert runner.train_config(2)["lr"] == pytest.approx(0.05)
