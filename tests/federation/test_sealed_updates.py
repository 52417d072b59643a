"""Sealed + signed updates for robust strategies: one test per attack, plus a real run.

Replies are real Flower ``Message`` objects sealed with real keys; the guard and the real
``FedMedian`` aggregate them. Each attack asserts the rejection (and its reason) AND that the
round still aggregates exactly the honest updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from cloud.federation.guard import UpdateGuard, UpdateKeys
from cloud.federation.plan import FederationPlan, RoundReport
from cloud.federation.server import FederationRunner
from cloud.federation.simulation import run_simulated_federation
from cloud.federation.strategies import Participation, make_strategy
from cloud.registry import Registry
from shared.compression import encode_update
from shared.crypto import PrivateKey, SigningKey, seal
from shared.crypto.seal import SEAL_OVERHEAD
from shared.crypto.sealed_update import open_update, seal_update, update_associated_data
from shared.errors import BadSignatureError, ConfigError, CryptoError, UnknownKeyError
from tests.federation.test_guard import (  # noqa: F401 - _task_identity is an autouse fixture
    ROUND,
    RUN,
    _aggregate,
    _deltas,
    _global,
    _task_identity,
)

DEVICES = ("dev-a", "dev-b", "dev-c")


@dataclass
class Fleet:
    coordinator: PrivateKey
    signers: dict[str, SigningKey]

    @property
    def keys(self) -> UpdateKeys:
        return UpdateKeys(self.coordinator, {d: k.verify_key for d, k in self.signers.items()})


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(PrivateKey.generate(), {d: SigningKey.generate() for d in DEVICES})


def _guard(fleet: Fleet, strategy: str = "median") -> UpdateGuard:
    from flwr.app import Array, ArrayRecord

    guard = UpdateGuard(make_strategy(strategy, Participation()), run_id=RUN, keys=fleet.keys)
    guard.begin_round(ROUND, ArrayRecord({k: Array(v) for k, v in _global().items()}), sampled=3)
    return guard


def _sealed(
    fleet: Fleet,
    delta: dict[str, np.ndarray],
    device: str,
    *,
    signer: SigningKey | None = None,
    bound_run: str = RUN,
    bound_round: int = ROUND,
) -> Message:
    """A reply as the ClientApp sends it; the plaintext fields always claim this run/round."""
    sealed = seal_update(
        encode_update(delta, mode="int8").payload,
        coordinator=fleet.coordinator.public_key,
        signer=signer or fleet.signers[device],
        run_id=bound_run,
        server_round=bound_round,
        device_id=device,
    )
    update = ConfigRecord(
        {
            "sealed": sealed,
            "device-id": device,
            "mode": "int8",
            "run-id": RUN,
            "server-round": ROUND,
        }
    )
    metrics = MetricRecord({"num-examples": 30, "train-loss": 1.0})
    return Message(
        RecordDict({"update": update, "metrics": metrics}), dst_node_id=1, message_type="train"
    )


def _assert_only_honest_aggregated(guard: UpdateGuard, replies: list[Message], reason: str) -> None:
    """dev-a and dev-b are honest; exactly one other reply is rejected for ``reason``."""
    got = _aggregate(guard, replies)
    deltas = _deltas(3)
    for name, g in _global().items():
        # The median of two honest updates is their mean (int8 error: a step at most).
        expected = g + (deltas[0][name] + deltas[1][name]) / 2
        assert np.max(np.abs(got[name] - expected)) < 0.01
    traffic = guard.traffic[ROUND]
    assert traffic.accepted == 2
    assert len(traffic.rejected) == 1 and reason in traffic.rejected[0], traffic.rejected


def _honest(fleet: Fleet) -> list[Message]:
    deltas = _deltas(3)
    return [_sealed(fleet, deltas[0], "dev-a"), _sealed(fleet, deltas[1], "dev-b")]


def test_sealed_signed_updates_are_accepted(fleet: Fleet) -> None:
    guard = _guard(fleet, "fedavg")
    deltas = _deltas(3)
    replies = [_sealed(fleet, d, dev) for d, dev in zip(deltas, DEVICES, strict=True)]
    sizes = [len(r.content.config_records["update"]["sealed"]) for r in replies]  # type: ignore[arg-type]
    got = _aggregate(guard, replies)
    for name, g in _global().items():
        expected = g + sum(d[name] for d in deltas) / 3
        assert np.max(np.abs(got[name] - expected)) < 0.01
    traffic = guard.traffic[ROUND]
    assert traffic.accepted == 3 and traffic.rejected == []
    assert traffic.bytes_up == sum(sizes)
    # Still int8 inside the box: a quarter of float32 plus the fixed seal + signature bytes.
    assert traffic.bytes_up <= 0.26 * traffic.raw_bytes_up + 3 * (SEAL_OVERHEAD + 64 + 64)


def test_unsealed_update_is_rejected(fleet: Fleet) -> None:
    guard = _guard(fleet)
    payload = encode_update(_deltas(3)[2], mode="int8").payload
    plain = Message(
        RecordDict(
            {
                "update": ConfigRecord({"payload": payload, "run-id": RUN, "server-round": ROUND}),
                "metrics": MetricRecord({"num-examples": 30, "train-loss": 1.0}),
            }
        ),
        dst_node_id=3,
        message_type="train",
    )
    _assert_only_honest_aggregated(guard, [*_honest(fleet), plain], "not sealed and signed")


def test_unsigned_update_is_rejected(fleet: Fleet) -> None:
    """Anyone can seal to the coordinator's public key; without the device key it fails."""
    guard = _guard(fleet)
    ad = update_associated_data(RUN, ROUND, "dev-c")
    unsigned = seal(
        fleet.coordinator.public_key, encode_update(_deltas(3)[2], mode="int8").payload, ad
    )
    reply = _sealed(fleet, _deltas(3)[2], "dev-c")
    reply.content.config_records["update"]["sealed"] = unsigned
    _assert_only_honest_aggregated(guard, [*_honest(fleet), reply], "bad_signature")


def test_update_signed_by_another_device_is_rejected(fleet: Fleet) -> None:
    guard = _guard(fleet)
    forged = _sealed(fleet, _deltas(3)[2], "dev-c", signer=fleet.signers["dev-a"])
    _assert_only_honest_aggregated(guard, [*_honest(fleet), forged], "bad_signature")


def test_update_from_an_unknown_device_is_rejected(fleet: Fleet) -> None:
    guard = _guard(fleet)
    stranger = SigningKey.generate()
    reply = _sealed(fleet, _deltas(3)[2], "dev-x", signer=stranger)
    _assert_only_honest_aggregated(guard, [*_honest(fleet), reply], "unknown_key")


def test_tampered_update_is_rejected(fleet: Fleet) -> None:
    guard = _guard(fleet)
    reply = _sealed(fleet, _deltas(3)[2], "dev-c")
    update = reply.content.config_records["update"]
    box = bytearray(update["sealed"])  # type: ignore[arg-type]
    box[len(box) // 2] ^= 0x01
    update["sealed"] = bytes(box)
    _assert_only_honest_aggregated(guard, [*_honest(fleet), reply], "failed verification")


@pytest.mark.parametrize(("run", "server_round"), [("run-old", ROUND), (RUN, ROUND - 1)])
def test_replayed_update_is_rejected(fleet: Fleet, run: str, server_round: int) -> None:
    """A genuine update from another run or round, its plaintext fields rewritten to fit."""
    guard = _guard(fleet)
    replay = _sealed(fleet, _deltas(3)[2], "dev-c", bound_run=run, bound_round=server_round)
    _assert_only_honest_aggregated(guard, [*_honest(fleet), replay], "failed verification")


def test_reattributed_update_is_rejected(fleet: Fleet) -> None:
    """dev-c's genuine update presented as dev-a's: bound to dev-c, so it fails to open."""
    guard = _guard(fleet)
    reply = _sealed(fleet, _deltas(3)[2], "dev-c")
    reply.content.config_records["update"]["device-id"] = "dev-a"
    honest = _sealed(fleet, _deltas(3)[1], "dev-b")
    first = _sealed(fleet, _deltas(3)[0], "dev-a")
    # Presented first, so the rejection cannot be the one-update-per-device rule.
    _assert_only_honest_aggregated(guard, [reply, first, honest], "failed verification")


def test_second_update_from_the_same_device_in_a_round_is_rejected(fleet: Fleet) -> None:
    guard = _guard(fleet)
    again = _sealed(fleet, _deltas(3)[2], "dev-a")
    _assert_only_honest_aggregated(guard, [*_honest(fleet), again], "second update")


def test_open_update_raises_the_specific_errors(fleet: Fleet) -> None:
    payload = b"delta-bytes"
    sealed = seal_update(
        payload,
        coordinator=fleet.coordinator.public_key,
        signer=fleet.signers["dev-a"],
        run_id=RUN,
        server_round=ROUND,
        device_id="dev-a",
    )
    devices = fleet.keys.devices
    kwargs = {"coordinator": fleet.coordinator, "devices": devices, "run_id": RUN}
    assert open_update(sealed, server_round=ROUND, device_id="dev-a", **kwargs) == payload  # type: ignore[arg-type]
    with pytest.raises(CryptoError):
        open_update(sealed, server_round=ROUND + 1, device_id="dev-a", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UnknownKeyError):
        open_update(sealed, server_round=ROUND, device_id="dev-x", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(CryptoError):
        open_update(
            sealed,
            coordinator=PrivateKey.generate(),
            devices=devices,
            run_id=RUN,
            server_round=ROUND,
            device_id="dev-a",
        )
    forged = seal_update(
        payload,
        coordinator=fleet.coordinator.public_key,
        signer=fleet.signers["dev-b"],
        run_id=RUN,
        server_round=ROUND,
        device_id="dev-a",
    )
    with pytest.raises(BadSignatureError):
        open_update(forged, server_round=ROUND, device_id="dev-a", **kwargs)  # type: ignore[arg-type]


def test_robust_strategy_refuses_to_run_without_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "a")
    try:
        with pytest.raises(ConfigError, match="seal and sign"):
            FederationRunner(FederationPlan(strategy="median", quantize=False), registry)
        with pytest.raises(ConfigError, match="SecAgg"):
            FederationPlan(strategy="trimmed-mean", secure_aggregation=True)
    finally:
        registry.close()


@pytest.mark.parametrize("registry", ["sqlite"], indirect=True)
def test_median_run_with_sealed_updates_on_the_simulation_engine(registry: Registry) -> None:
    """Virtual devices get real bundles; every update is sealed, signed and accepted."""
    plan = FederationPlan(
        data="digits", num_clients=3, rounds=2, local_epochs=2, strategy="median", quantize=False
    )
    assert not plan.uses_secagg
    streamed: list[RoundReport] = []
    result = run_simulated_federation(plan, registry, on_round=streamed.append)
    assert [r.round for r in streamed] == [1, 2]
    for r in streamed:
        assert (r.participants, r.rejected, r.failed) == (3, 0, 0)
        assert r.bytes_up < 0.3 * r.raw_bytes_up  # int8 payload + seal/signature overhead
    assert streamed[-1].accuracy > result.initial_accuracy + 0.2
