"""The aggregation path: decode → validate → Flower strategy, without a network.

Replies are real Flower ``Message`` objects carrying what the ClientApp sends; the guard
and the real ``FedAvg``/``FedMedian`` aggregate them.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from cloud.federation.guard import UpdateGuard
from cloud.federation.strategies import Participation, StrategyName, make_strategy
from shared.compression import UpdateMode, encode_update

RUN = "run-test"


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity; give the test one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


ROUND = 3


def _global() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w": rng.normal(0, 1, (32, 16)).astype(np.float32),
        "b": rng.normal(0, 1, (16,)).astype(np.float32),
    }


def _guard(strategy: str = "fedavg", **limits: float | int) -> UpdateGuard:
    guard = UpdateGuard(make_strategy(strategy, Participation()), run_id=RUN, **limits)  # type: ignore[arg-type]
    guard.begin_round(ROUND, ArrayRecord({k: Array(v) for k, v in _global().items()}), sampled=3)
    return guard


def _reply(
    delta: dict[str, np.ndarray],
    examples: int,
    *,
    mode: UpdateMode = "int8",
    run: str = RUN,
    server_round: int = ROUND,
    node: int = 1,
) -> Message:
    payload = encode_update(delta, mode=mode).payload
    content = RecordDict(
        {
            "update": ConfigRecord(
                {"payload": payload, "mode": mode, "run-id": run, "server-round": server_round}
            ),
            "metrics": MetricRecord({"num-examples": examples, "train-loss": 1.0}),
        }
    )
    return Message(content, dst_node_id=node, message_type="train")


def _deltas(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(42)
    return [
        {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in _global().items()}
        for _ in range(n)
    ]


def _aggregate(guard: UpdateGuard, replies: list[Message]) -> dict[str, np.ndarray]:
    arrays, _ = guard.aggregate_train(ROUND, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


def test_fedavg_of_int8_updates_equals_weighted_mean_within_quantization_error() -> None:
    guard = _guard()
    deltas, examples = _deltas(3), [10, 30, 60]
    got = _aggregate(guard, [_reply(d, n) for d, n in zip(deltas, examples, strict=True)])
    weights = np.asarray(examples, np.float64) / sum(examples)
    for name, g in _global().items():
        exact = sum(w * (g + d[name]) for w, d in zip(weights, deltas, strict=True))
        # Each client's int8 error is at most half a step (max|delta| / 127 / 2).
        bound = sum(w * np.abs(d[name]).max() / 254 for w, d in zip(weights, deltas, strict=True))
        assert np.max(np.abs(got[name] - exact)) <= bound + 1e-6
        # ...and the aggregate really moved: it is not just the old global model.
        assert np.max(np.abs(got[name] - g)) > 10 * bound
    traffic = guard.traffic[ROUND]
    assert traffic.accepted == 3 and traffic.rejected == []
    assert traffic.bytes_up < 0.27 * traffic.raw_bytes_up


def _mean_of(deltas: list[dict[str, np.ndarray]], examples: list[int]) -> dict[str, np.ndarray]:
    weights = np.asarray(examples, np.float64) / sum(examples)
    return {
        k: sum(w * (g + d[k]) for w, d in zip(weights, deltas, strict=True))
        for k, g in _global().items()
    }


def _assert_aggregate_of_good(guard: UpdateGuard, replies: list[Message], reason: str) -> None:
    deltas = _deltas(3)
    got = _aggregate(guard, replies)
    expected = _mean_of(deltas[:2], [20, 40])
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=0.01)
    traffic = guard.traffic[ROUND]
    assert traffic.accepted == 2
    assert len(traffic.rejected) == 1 and reason in traffic.rejected[0]


def test_nan_update_is_rejected_and_the_round_goes_on() -> None:
    guard = _guard()
    good = _deltas(3)
    bad = {k: v.copy() for k, v in good[2].items()}
    bad["w"][0, 0] = np.nan
    replies = [_reply(good[0], 20), _reply(good[1], 40), _reply(bad, 1000, mode="fp32", node=3)]
    _assert_aggregate_of_good(guard, replies, "NaN or infinity")


def test_oversized_update_is_rejected_before_decoding() -> None:
    good = _deltas(3)
    raw = 4 * sum(v.size for v in _global().values())
    guard = _guard(max_update_bytes=int(raw * 0.3))  # int8 fits, float32 does not
    replies = [_reply(good[0], 20), _reply(good[1], 40), _reply(good[2], 1000, mode="fp32")]
    _assert_aggregate_of_good(guard, replies, "exceeds")


@pytest.mark.parametrize(("run", "server_round"), [("run-old", ROUND), (RUN, ROUND - 1)])
def test_replayed_update_is_rejected(run: str, server_round: int) -> None:
    guard = _guard()
    good = _deltas(3)
    replay = _reply(good[2], 1000, run=run, server_round=server_round)
    _assert_aggregate_of_good(guard, [_reply(good[0], 20), _reply(good[1], 40), replay], "replayed")


def test_update_for_another_model_is_rejected() -> None:
    guard = _guard()
    good = _deltas(3)
    wrong = {"w": good[2]["w"][:8], "b": good[2]["b"]}
    _assert_aggregate_of_good(
        guard, [_reply(good[0], 20), _reply(good[1], 40), _reply(wrong, 1000)], "shape"
    )


def test_norm_bound_rejects_a_boosted_update() -> None:
    guard = _guard(max_delta_norm=5.0)
    good = _deltas(3)
    boosted = {k: v * 100 for k, v in good[2].items()}
    _assert_aggregate_of_good(
        guard, [_reply(good[0], 20), _reply(good[1], 40), _reply(boosted, 1000)], "norm"
    )


def test_garbage_payload_is_rejected() -> None:
    guard = _guard()
    good = _deltas(3)
    garbage = _reply(good[2], 1000)
    garbage.content["update"]["payload"] = b"FUP1\xff\xff junk"  # type: ignore[index]
    _assert_aggregate_of_good(
        guard, [_reply(good[0], 20), _reply(good[1], 40), garbage], "undecodable"
    )


def test_all_rejected_leaves_the_global_model_unchanged() -> None:
    guard = _guard()
    bad = {k: np.full_like(v, np.inf) for k, v in _global().items()}
    assert guard.aggregate_train(ROUND, [_reply(bad, 5, mode="fp32")]) == (None, None)
    assert guard.traffic[ROUND].accepted == 0


def test_median_ignores_an_outlier_that_fedavg_follows() -> None:
    good = _deltas(3)
    outlier = {k: np.full_like(v, 5.0) for k, v in _global().items()}
    replies = lambda: [_reply(good[0], 10), _reply(good[1], 10), _reply(outlier, 10)]  # noqa: E731
    median = _aggregate(_guard("median"), replies())
    mean = _aggregate(_guard("fedavg"), replies())
    g = _global()["w"]
    assert np.max(np.abs(median["w"] - g)) < 1.0
    assert np.min(mean["w"] - g) > 1.0


class _ThreeNodeGrid(Grid):
    """Just enough Grid for ``configure_train``'s node sampling; nothing is sent."""

    def set_run(self, run_id: int) -> None:  # type: ignore[override]
        raise NotImplementedError

    @property
    def run(self):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        raise NotImplementedError


@pytest.mark.parametrize("name", [s.value for s in StrategyName])
def test_every_strategy_aggregates_guarded_updates(name: str) -> None:
    guard = UpdateGuard(
        make_strategy(name, Participation(min_clients=3, min_available=3)), run_id=RUN
    )
    arrays = ArrayRecord({k: Array(v) for k, v in _global().items()})
    config = ConfigRecord()
    messages = list(guard.configure_train(ROUND, arrays, config, _ThreeNodeGrid()))
    assert len(messages) == 3
    sent = messages[0].content["config"]
    assert sent["run-id"] == RUN and sent["server-round"] == ROUND
    if name == "fedprox":
        assert sent["proximal-mu"] > 0
    assert guard.traffic[ROUND].bytes_down == 3 * 4 * sum(v.size for v in _global().values())
    deltas = _deltas(3)
    got = _aggregate(guard, [_reply(d, 10 * (i + 1)) for i, d in enumerate(deltas)])
    for k, g in _global().items():
        assert np.all(np.isfinite(got[k]))
        assert not np.allclose(got[k], g)


def test_round_config_sends_each_round_its_decayed_learning_rate() -> None:
    from cloud.federation.plan import FederationPlan

    plan = FederationPlan(lr=0.1, lr_decay=0.5)
    guard = UpdateGuard(
        make_strategy("fedavg", Participation(min_clients=3, min_available=3)),
        run_id=RUN,
        round_config=lambda r: {"lr": plan.lr_at(r)},
    )
    arrays = ArrayRecord({k: Array(v) for k, v in _global().items()})
    config = ConfigRecord({"lr": plan.lr})
    for server_round, want in [(1, 0.1), (2, 0.05), (3, 0.025)]:
        messages = list(guard.configure_train(server_round, arrays, config, _ThreeNodeGrid()))
        assert all(m.content["config"]["lr"] == pytest.approx(want) for m in messages)
