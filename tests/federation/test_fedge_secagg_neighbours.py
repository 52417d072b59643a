"""fedge SecAgg's sparse SecAgg+ neighbour graph: the ring, and rounds over it.

The ring itself (:func:`shared.protocol.learning.secagg_neighbours`) and the contract's
``num-shares``/``threshold`` rule, then whole rounds with real Flower ClientApps behind the
shipped ``fedge_secagg_mod`` (:class:`tests.federation.secagg_harness.InProcessGrid`), 12
devices with ``k = 5``: each device masks against and shares with 4 neighbours only.

The deltas sit exactly on the quantization grid (``clip = 255/512``, 8 bits: value ``j``
is ``(2j - 255)/512``), so stochastic rounding is deterministic and the unmasked total
can be compared with the plain sum of the quantized updates *exactly*.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from pydantic import ValidationError

from cloud.federation.secagg import content_nbytes
from cloud.federation.secagg_fedge import SecureRound, SecureRoundResult
from shared.protocol.learning import (
    SECAGG_EXTRAS,
    SECAGG_RECORD,
    LearningContractError,
    SecAggParams,
    SecAggStage,
    secagg_neighbours,
    secagg_num_shares,
    secagg_params_from_config,
)
from tests.federation.secagg_harness import InProcessGrid, fixed_update_app, train_config

RUN = "run-ring"
CAP = 100
SHAPES = {"w": (4, 3), "b": (3,)}
SIZE = 12 + 3
N = 12
K = 5
CLIP = 255 / 512  # 255 / (2 * CLIP) == 256 exactly: on-grid values quantize exactly


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity; give the test one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


# --- The ring --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(12, 5), (12, 3), (50, 13), (7, 7), (10, 9), (11, 5)])
def test_neighbours_are_a_symmetric_ring_of_degree_k_minus_1(n: int, k: int) -> None:
    nodes = random.Random(n * k).sample(range(1, 10_000), n)
    graph = {v: secagg_neighbours(nodes, v, k) for v in nodes}
    shuffled = list(reversed(nodes))
    for v, around in graph.items():
        assert len(around) == len(set(around)) == k - 1
        assert v not in around and set(around) <= set(nodes)
        assert secagg_neighbours(shuffled, v, k) == around  # depends on the set, not order
        for u in around:
            assert v in graph[u]  # j in N(i) <=> i in N(j)
    # On the sorted ring, the (k - 1) / 2 nearest on each side.
    ring = sorted(nodes)
    half = (k - 1) // 2
    first = {ring[i % n] for i in range(-half, half + 1)} - {ring[0]}
    assert set(graph[ring[0]]) == first


@pytest.mark.parametrize("n", [2, 3, 4, 12])
def test_k_at_least_n_is_the_complete_graph(n: int) -> None:
    nodes = list(range(10, 10 + n))
    for k in (n, n + 1, 2 * n):
        for v in nodes:
            assert secagg_neighbours(nodes, v, k) == [u for u in nodes if u != v]


def test_the_neighbour_function_refuses_what_has_no_ring() -> None:
    with pytest.raises(ValueError, match="even"):
        secagg_neighbours(list(range(12)), 0, 4)
    with pytest.raises(ValueError):
        secagg_neighbours(list(range(12)), 99, 5)  # not in the roster
    with pytest.raises(ValueError, match="duplicate"):
        secagg_neighbours([1, 2, 2, 3], 1, 3)
    with pytest.raises(ValueError):
        secagg_neighbours([1, 2, 3], 1, 1)


def test_default_k_is_odd_logarithmic_and_capped_at_n() -> None:
    assert [secagg_num_shares(n) for n in (1, 2, 3, 5, 7, 8, 9, 10, 12, 50, 1000)] == [
        2, 2, 3, 5, 7, 7, 9, 9, 9, 13, 21,
    ]  # fmt: skip
    for n in range(3, 2000):
        k = secagg_num_shares(n)
        assert k == n or (k % 2 == 1 and 3 <= k < n)


def _params(threshold: int, num_shares: int) -> dict[str, object]:
    return {
        "threshold": threshold,
        "num-shares": num_shares,
        "mask-bits": 12,
        "levels": 256,
        "clip": 0.5,
        "max-examples": CAP,
    }


@pytest.mark.parametrize(("t", "k"), [(3, 5), (5, 5), (2, 3), (2, 2), (7, 12)])
def test_a_threshold_that_is_a_majority_of_k_is_accepted(t: int, k: int) -> None:
    params = secagg_params_from_config(_params(t, k))
    assert (params.threshold, params.num_shares) == (t, k)


@pytest.mark.parametrize(("t", "k"), [(6, 5), (2, 5), (2, 4), (6, 12), (3, 2)])
def test_a_threshold_above_k_or_not_above_half_of_k_is_refused(t: int, k: int) -> None:
    with pytest.raises(LearningContractError):
        secagg_params_from_config(_params(t, k))
    with pytest.raises(ValidationError):
        SecAggParams.model_validate(_params(t, k))


def test_num_shares_is_required_and_bounded() -> None:
    raw = _params(3, 5)
    del raw["num-shares"]
    with pytest.raises(LearningContractError, match="num-shares"):
        secagg_params_from_config(raw)
    with pytest.raises(LearningContractError, match="num-shares"):
        secagg_params_from_config(_params(2, 1))


# --- Rounds over the ring --------------------------------------------------------------


def _on_grid(
    n: int, seed: int = 0
) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, list[np.ndarray]]]:
    """Each device's delta and its quantized values (``j``), exactly on the grid."""
    rng = np.random.default_rng(seed)
    deltas: dict[int, dict[str, np.ndarray]] = {}
    quantized: dict[int, list[np.ndarray]] = {}
    for node in range(1, n + 1):
        js = {name: rng.integers(0, 256, shape) for name, shape in SHAPES.items()}
        deltas[node] = {name: ((2 * j - 255) / 512).astype(np.float32) for name, j in js.items()}
        quantized[node] = [js[name].reshape(-1) for name in SHAPES]
    return deltas, quantized


class _Recording(SecureRound):
    """A SecureRound that keeps the unmasked total (mod M) for the test to compare."""

    total: np.ndarray | None = None

    def _finish(
        self,
        total: np.ndarray,
        survivors: list[int],
        names: Iterable[str],
        shapes: dict[str, tuple[int, ...]],
    ) -> None:
        self.total = total.copy()
        super()._finish(total, survivors, names, shapes)


def _round(grid: InProcessGrid, num_shares: int | None = K) -> tuple[SecureRoundResult, _Recording]:
    sized = SecureRound.sized(
        grid,
        run_id=RUN,
        server_round=1,
        sampled=len(grid.apps),
        bits=8,
        clip=CLIP,
        max_examples=CAP,
        max_delta_norm=None,
        num_shares=num_shares,
    )
    secure = _Recording(sized.grid, sized.run_id, sized.server_round, sized.params)
    arrays = ArrayRecord({n: Array(np.zeros(s, np.float32)) for n, s in SHAPES.items()})
    return secure.run(sorted(grid.apps), arrays, train_config(RUN, 1)), secure


def _grid(drop: dict[int, str] | None = None, seed: int = 0) -> InProcessGrid:
    deltas, _ = _on_grid(N, seed)
    drop = drop or {}
    return InProcessGrid({n: fixed_update_app(deltas[n], CAP, drop_at=drop.get(n)) for n in deltas})


def _assert_exact_sum(result: SecureRoundResult, secure: _Recording, summed: list[int]) -> None:
    deltas, quantized = _on_grid(N)
    assert result.mean_delta is not None, result.reason
    assert sorted(result.survivors) == summed
    assert secure.total is not None
    plain = sum(np.concatenate(quantized[n]).astype(np.uint64) for n in summed)
    # Weight (every device at the cap: 255 each), clipped, capped.
    extras = np.array([255 * len(summed), 0, 0], np.uint64)
    assert np.array_equal(secure.total, np.concatenate([plain, extras]))
    for name in SHAPES:
        expected = np.sum([deltas[n][name].astype(np.float64) for n in summed], axis=0)
        expected /= len(summed)
        assert np.array_equal(result.mean_delta[name], expected.astype(np.float32)), name


def test_a_sparse_round_gives_exactly_the_plain_sum_of_the_quantized_updates() -> None:
    grid = _grid()
    result, secure = _round(grid)
    assert (secure.params.num_shares, secure.params.threshold) == (K, 3)
    _assert_exact_sum(result, secure, list(range(1, N + 1)))
    assert result.dropped == []


@pytest.mark.parametrize("gone", [[3, 4], [3, 9], [12, 1]])
def test_two_devices_dropping_after_masking_still_give_the_exact_sum(gone: list[int]) -> None:
    # Their masked inputs are in the sum; their seeds are rebuilt from their neighbours.
    grid = _grid(dict.fromkeys(gone, "unmask"))
    result, secure = _round(grid)
    _assert_exact_sum(result, secure, list(range(1, N + 1)))


@pytest.mark.parametrize("gone", [[3, 4], [3, 9], [12, 1]])
def test_two_devices_dropping_before_masking_leave_the_exact_sum_of_the_rest(
    gone: list[int],
) -> None:
    # Their pairwise masks with their surviving neighbours are removed via their keys.
    grid = _grid(dict.fromkeys(gone, "masked-input"))
    result, secure = _round(grid)
    _assert_exact_sum(result, secure, [n for n in range(1, N + 1) if n not in gone])
    assert result.dropped == sorted(gone)


def test_a_node_left_with_fewer_than_t_surviving_neighbours_halts_before_any_share() -> None:
    # k = 5, t = 3: node 3's neighbours are 1, 2, 4, 5; with 3, 4, 5 gone only 1 and 2
    # hold its key shares (likewise 4 and 5), although 9 of 12 devices survive.
    grid = _grid(dict.fromkeys((3, 4, 5), "masked-input"))
    result, secure = _round(grid)
    assert result.mean_delta is None and result.survivors == [] and secure.total is None
    assert result.reason == "node 3 has 2 surviving neighbours to rebuild from, threshold 3"
    assert result.dropped == [3, 4, 5]
    replies = [r.content.config_records[SECAGG_RECORD] for r in grid.received]
    assert not any("shares" in r for r in replies)  # nothing revealed
    assert sum("masked" in r for r in replies) == 9


def test_too_few_neighbours_answering_unmask_halts() -> None:
    # The same three, gone one stage later: node 4's seed has 2 holders left that answer.
    grid = _grid(dict.fromkeys((3, 4, 5), "unmask"))
    result, secure = _round(grid)
    assert result.mean_delta is None and secure.total is None
    assert "shares of node" in result.reason


def _device_bytes(grid: InProcessGrid) -> dict[str, list[int]]:
    """Per stage, the payload bytes of each reply the device half produced."""
    out: dict[str, list[int]] = {"box": [], "shares": [], "boxes": [], "count": []}
    for reply in grid.received:
        record = reply.content.config_records[SECAGG_RECORD]
        if "box" in record:
            out["box"].append(content_nbytes(reply.content))
            out["boxes"].append(len(record["box"]))  # type: ignore[arg-type]
        if "shares" in record:
            out["shares"].append(content_nbytes(reply.content))
            out["count"].append(len(record["shares"]))  # type: ignore[arg-type]
    return out


def test_a_device_sends_fewer_shares_and_bytes_at_k_5_than_at_k_n() -> None:
    sparse_grid, complete_grid = _grid(), _grid()
    sparse, _ = _round(sparse_grid)
    complete, _ = _round(complete_grid, num_shares=N)
    assert sparse.mean_delta is not None and complete.mean_delta is not None
    ring, full = _device_bytes(sparse_grid), _device_bytes(complete_grid)
    assert ring["boxes"] == [K - 1] * N and full["boxes"] == [N - 1] * N
    assert ring["count"] == [K] * N and full["count"] == [N] * N
    # Measured sizes: each share-keys and unmask reply shrinks with the neighbourhood.
    assert max(ring["box"]) < min(full["box"])
    assert max(ring["shares"]) < min(full["shares"])
    assert sum(ring["box"]) < 0.5 * sum(full["box"])
    assert sparse.bytes_up < complete.bytes_up and sparse.bytes_down < complete.bytes_down
    # Both graphs aggregate the same on-grid updates to the same mean.
    for name in SHAPES:
        assert np.array_equal(sparse.mean_delta[name], complete.mean_delta[name])


def test_a_device_refuses_an_unmask_request_naming_a_non_neighbour() -> None:
    grid = _grid()
    sized = SecureRound.sized(
        grid,
        run_id=RUN,
        server_round=1,
        sampled=N,
        bits=8,
        clip=CLIP,
        max_examples=CAP,
        max_delta_norm=None,
        num_shares=K,
    )
    keys = sized._setup(list(range(1, N + 1)))
    inbox = sized._share_keys(keys)
    arrays = ArrayRecord({n: Array(np.zeros(s, np.float32)) for n, s in SHAPES.items()})
    sized._masked_input(inbox, arrays, train_config(RUN, 1), SIZE + SECAGG_EXTRAS)

    def ask(node: int, active: list[int], dropped: list[int]) -> dict[int, ConfigRecord]:
        body = ConfigRecord({"active": active, "dropped": dropped})
        return sized._exchange(SecAggStage.UNMASK, {node: RecordDict({SECAGG_RECORD: body})})

    # Node 1's neighbourhood is 11, 12, 2, 3 (and itself); 7 is not in it.
    assert secagg_neighbours(list(range(1, N + 1)), 1, K) == [2, 3, 11, 12]
    assert ask(1, [1, 2, 3, 7, 11, 12], []) == {}  # a seed share of a non-neighbour
    assert ask(2, [1, 2, 3, 4], [8]) == {}  # a key share of a non-neighbour
    assert ask(3, [1, 2, 3, 4, 5], [3]) == {}  # both shares of one node (kept check)
    # The same device state answers a request that stays within the neighbourhood.
    answered = ask(4, [2, 3, 4, 5, 6], [])
    assert list(answered) == [4]
    assert answered[4]["nodes"] == [2, 3, 4, 5, 6]
    assert len(answered[4]["shares"]) == 5  # type: ignore[arg-type]
