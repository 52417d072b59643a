"""fedge SecAgg: the protocol's properties, with real Flower ClientApps and the real mod.

The devices are ``flwr.clientapp.ClientApp`` objects behind the shipped
``edge.learning.secagg_mod.fedge_secagg_mod``, called in-process by
:class:`tests.federation.secagg_harness.InProcessGrid` (tiny vectors, so 50 devices stay
cheap). The Ray simulation and the SuperLink run the same code in
``test_fedge_secagg_engines.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from scipy.stats import chisquare

from cloud.federation.secagg_fedge import SecureRound, SecureRoundResult
from shared.crypto.prg import derive_key, mask_stream, unpack_mod
from shared.protocol.learning import SECAGG_EXTRAS, SECAGG_RECORD, SecAggStage
from tests.federation.secagg_harness import InProcessGrid, fixed_update_app, train_config

RUN = "run-fedge"
CAP = 100
SHAPES = {"w": (4, 3), "b": (3,)}


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity; give the test one."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _deltas(k: int, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        n: {name: rng.normal(0, 0.01, shape).astype(np.float32) for name, shape in SHAPES.items()}
        for n in range(1, k + 1)
    }


def _global() -> ArrayRecord:
    return ArrayRecord({name: Array(np.zeros(shape, np.float32)) for name, shape in SHAPES.items()})


def _run(
    grid: InProcessGrid, k: int, *, bits: int = 8, norm: float | None = 10.0, clip: float = 0.05
) -> SecureRoundResult:
    secure = SecureRound.sized(
        grid,
        run_id=RUN,
        server_round=1,
        sampled=k,
        bits=bits,
        clip=clip,
        max_examples=CAP,
        max_delta_norm=norm,
    )
    return secure.run(sorted(grid.apps), _global(), train_config(RUN, 1))


def _assert_weighted_mean(
    result: SecureRoundResult,
    deltas: dict[int, dict[str, np.ndarray]],
    examples: dict[int, int],
    survivors: list[int],
    bits: int = 8,
    clip: float = 0.05,
) -> None:
    """Within the quantization bound: each survivor's value is off by < 1 step (stochastic
    rounding), its weight by <= 1/2 level (deterministic rounding)."""
    assert result.mean_delta is not None
    assert sorted(result.survivors) == sorted(survivors)
    levels = (1 << bits) - 1
    weights = {n: min(examples[n], CAP) / CAP for n in survivors}
    total = sum(weights.values())
    step = 2 * clip / levels
    for name in SHAPES:
        summed = sum(weights[n] * deltas[n][name].astype(np.float64) for n in survivors)
        expected = summed / total
        weight_err = len(survivors) * 0.5 / levels
        bound = (len(survivors) * step + np.abs(summed) * weight_err / total) / (total - weight_err)
        assert np.all(np.abs(result.mean_delta[name] - expected) <= bound + 1e-9), name


@pytest.mark.parametrize(
    ("k", "drop_before_masking", "drop_after_masking"),
    [(3, [], [3]), (10, [2], [5, 9]), (50, [4, 17, 30], [1, 8, 22, 41, 49])],
)
def test_aggregate_is_the_weighted_mean_of_the_survivors(
    k: int, drop_before_masking: list[int], drop_after_masking: list[int]
) -> None:
    deltas = _deltas(k)
    rng = np.random.default_rng(k)
    examples = {n: int(rng.integers(5, CAP)) for n in deltas}
    drop = {n: "masked-input" for n in drop_before_masking}
    drop |= {n: "unmask" for n in drop_after_masking}
    grid = InProcessGrid(
        {n: fixed_update_app(deltas[n], examples[n], drop_at=drop.get(n)) for n in deltas}
    )
    result = _run(grid, k)
    # Devices that dropped after masking are in the sum (their seed is rebuilt from shares);
    # devices that dropped before are not (their pairwise masks are removed via their key).
    survivors = [n for n in deltas if n not in drop_before_masking]
    _assert_weighted_mean(result, deltas, examples, survivors)
    assert sorted(result.dropped) == drop_before_masking


def test_an_inflating_device_weighs_what_an_honest_device_at_the_cap_weighs() -> None:
    deltas = _deltas(4)
    deltas[4] = {name: np.full(shape, 0.04, np.float32) for name, shape in SHAPES.items()}
    examples = {1: CAP, 2: CAP, 3: CAP // 2, 4: 10**12}
    grid = InProcessGrid({n: fixed_update_app(deltas[n], examples[n]) for n in deltas})
    result = _run(grid, 4)
    _assert_weighted_mean(result, deltas, examples, [1, 2, 3, 4])  # 4 weighted as CAP
    assert result.capped == 1
    assert result.weight == pytest.approx(3.5, abs=4 * 0.5 / 255)
    assert result.mean_delta is not None
    inflated_weight = 10**12 / (10**12 + 2.5 * CAP)  # what an uncapped FedAvg would give it
    share = float(np.mean(result.mean_delta["w"])) / 0.04
    assert share < 0.35 < inflated_weight


def test_a_boosted_delta_is_clipped_to_the_norm_bound_on_the_device() -> None:
    deltas = _deltas(3)
    deltas[3] = {name: np.full(shape, 5.0, np.float32) for name, shape in SHAPES.items()}
    examples = dict.fromkeys(deltas, CAP)
    grid = InProcessGrid({n: fixed_update_app(deltas[n], examples[n]) for n in deltas})
    result = _run(grid, 3, norm=0.1, clip=0.2)
    assert result.clipped == 1
    assert result.mean_delta is not None
    flat = np.concatenate([d.reshape(-1) for d in result.mean_delta.values()])
    assert np.linalg.norm(flat) <= 0.1 + 3 * 2 * 0.2 / 255 * np.sqrt(flat.size)


def test_fewer_survivors_than_the_threshold_halts_and_reveals_nothing() -> None:
    deltas = _deltas(5)
    drop = dict.fromkeys((1, 2, 3), "masked-input")  # threshold for 5 is 3; 2 survive
    grid = InProcessGrid({n: fixed_update_app(deltas[n], CAP, drop_at=drop.get(n)) for n in deltas})
    result = _run(grid, 5)
    assert result.mean_delta is None and result.survivors == []
    assert "threshold" in result.reason
    # The round stopped before unmasking: no device revealed a single share.
    stages = [r.content.config_records[SECAGG_RECORD] for r in grid.received if not r.has_error()]
    assert not any("shares" in s for s in stages)


def test_too_few_unmask_replies_halts_the_round() -> None:
    deltas = _deltas(5)
    drop = dict.fromkeys((1, 2, 3), "unmask")  # masked inputs arrive, shares do not
    grid = InProcessGrid({n: fixed_update_app(deltas[n], CAP, drop_at=drop.get(n)) for n in deltas})
    result = _run(grid, 5)
    assert result.mean_delta is None
    assert "shares" in result.reason


def test_the_server_never_receives_an_individual_unmasked_update() -> None:
    deltas = _deltas(4)
    grid = InProcessGrid({n: fixed_update_app(deltas[n], CAP) for n in deltas})
    result = _run(grid, 4)
    assert result.mean_delta is not None
    allowed = {"pk-c", "pk-s", "dst", "box", "masked", "nodes", "shares"}
    for reply in grid.received:
        assert not reply.content.array_records and not reply.content.metric_records
        assert set(reply.content.config_records) == {SECAGG_RECORD}
        record = reply.content.config_records[SECAGG_RECORD]
        assert set(record) <= allowed
        if "masked" in record:
            node = reply.metadata.src_node_id
            bits = int(np.ceil(np.log2(4 * 256)))
            size = sum(int(np.prod(s)) for s in SHAPES.values()) + SECAGG_EXTRAS
            masked = unpack_mod(record["masked"], size, bits).astype(np.int64)  # type: ignore[arg-type]
            flat = np.concatenate([deltas[node][n].reshape(-1) for n in SHAPES])
            plain = np.round((flat + 0.05) / 0.1 * 255).astype(np.int64)
            # The masked values bear no relation to the device's quantized update.
            assert np.mean(np.abs(masked[:-SECAGG_EXTRAS] - plain) <= 2) < 0.2


def test_a_device_refuses_to_reveal_both_shares_of_one_peer() -> None:
    """A server listing a survivor as dropped would get its seed *and* its mask key, i.e.
    its individual input: every device refuses that unmask request."""
    deltas = _deltas(3)
    grid = InProcessGrid({n: fixed_update_app(deltas[n], CAP) for n in deltas})
    secure = SecureRound.sized(
        grid,
        run_id=RUN,
        server_round=1,
        sampled=3,
        bits=8,
        clip=0.05,
        max_examples=CAP,
        max_delta_norm=None,
    )
    keys = secure._setup([1, 2, 3])
    inbox = secure._share_keys(keys)
    secure._masked_input(inbox, _global(), train_config(RUN, 1), 12 + 3 + SECAGG_EXTRAS)
    body = {"active": [1, 2, 3], "dropped": [2]}
    replies = secure._exchange(
        SecAggStage.UNMASK,
        {n: RecordDict({SECAGG_RECORD: ConfigRecord(dict(body))}) for n in (1, 3)},
    )
    assert replies == {}


def test_a_replayed_stage_is_refused() -> None:
    deltas = _deltas(3)
    grid = InProcessGrid({n: fixed_update_app(deltas[n], CAP) for n in deltas})
    assert _run(grid, 3).mean_delta is not None
    secure = SecureRound.sized(
        grid,
        run_id=RUN,
        server_round=1,
        sampled=3,
        bits=8,
        clip=0.05,
        max_examples=CAP,
        max_delta_norm=None,
    )
    body = {"active": [1, 2, 3], "dropped": []}
    # The round is over: asking again for seed shares (to unmask a second sum) gets nothing.
    replies = secure._exchange(
        SecAggStage.UNMASK,
        {n: RecordDict({SECAGG_RECORD: ConfigRecord(dict(body))}) for n in (1, 2, 3)},
    )
    assert replies == {}


def test_prg_output_changes_when_any_single_byte_of_the_secret_changes() -> None:
    secret = bytes(range(32))
    reference = mask_stream(derive_key(secret, b"ctx"), 64, 16)
    for i in range(len(secret)):
        changed = bytearray(secret)
        changed[i] ^= 0x01
        other = mask_stream(derive_key(bytes(changed), b"ctx"), 64, 16)
        assert not np.array_equal(reference, other), i
    assert not np.array_equal(reference, mask_stream(derive_key(secret, b"ctx2"), 64, 16))


def test_masked_values_are_uniform_mod_m() -> None:
    # The PRG itself, fixed key: chi-square over all 2**8 residues.
    values = mask_stream(derive_key(b"\x07" * 32, b"uniformity"), 256 * 200, 8)
    assert chisquare(np.bincount(values, minlength=256)).pvalue > 1e-3
    # A masked vector of a constant update (the worst case) over M = 2**6 residues.
    size = 6000
    shapes = {"w": (size,)}
    zero = {"w": np.zeros(size, np.float32)}
    grid = InProcessGrid({n: fixed_update_app(zero, CAP) for n in (1, 2, 3)})
    secure = SecureRound.sized(
        grid,
        run_id=RUN,
        server_round=1,
        sampled=3,
        bits=4,
        clip=0.05,
        max_examples=CAP,
        max_delta_norm=None,
    )
    arrays = ArrayRecord({n: Array(np.zeros(s, np.float32)) for n, s in shapes.items()})
    assert secure.run([1, 2, 3], arrays, train_config(RUN, 1)).mean_delta is not None
    bits = secure.params.mask_bits
    assert bits == 6
    for reply in grid.received:
        record = reply.content.config_records[SECAGG_RECORD]
        if "masked" in record:
            masked = unpack_mod(record["masked"], size + SECAGG_EXTRAS, bits)  # type: ignore[arg-type]
            assert chisquare(np.bincount(masked, minlength=1 << bits)).pvalue > 1e-6
