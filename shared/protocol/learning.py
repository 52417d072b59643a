"""The learning plane's typed contract: what a round asks of a device and what it answers.

Flower carries both directions as records: the server's train message holds a
``ConfigRecord`` named ``config`` (plus the global ``arrays``); the device's reply holds a
``ConfigRecord`` named ``update`` and a ``MetricRecord`` named ``metrics``. This module is
the only place their keys and defaults are written down; both sides convert through the
symmetric pairs

* :func:`train_instruction_to_config` / :func:`train_instruction_from_config`;
* :func:`update_reply_to_records` / :func:`update_reply_from_records`.

The models are frozen and strict (no silent coercion of ``"2"`` into ``2``); a bad record
raises :class:`LearningContractError` (code ``bad_learning_message``) naming the field,
never echoing the payload.

One set of defaults (:data:`DEFAULT_LOCAL_EPOCHS`, :data:`DEFAULT_BATCH_SIZE`, ...). The
two sides used to disagree (coordinator 2 epochs x batch 16, device fallback 1 x 32), so a
device handed a config without those keys trained differently from the plan. The
coordinator's values win: they are the ones tuned on the issue's benchmark (mnist-5k, 10
clients, Dirichlet 0.3): smaller batches mean more SGD steps per round and closed most of
the gap to centralized training, and two epochs amortise each round's communication.

Pure: no I/O; Flower's record classes are imported lazily by the converters, so the
defaults stay importable by ``fedge --help`` without Flower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import ProtocolError

if TYPE_CHECKING:
    from flwr.app import ConfigRecord, MetricRecord

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_LOCAL_EPOCHS",
    "DEFAULT_LR",
    "DEFAULT_LR_DECAY",
    "DEFAULT_MAX_DELTA_NORM",
    "DEFAULT_PROXIMAL_MU",
    "SECAGG_EXTRAS",
    "SECAGG_RECORD",
    "LearningContractError",
    "SecAggParams",
    "SecAggStage",
    "TrainInstruction",
    "UpdateReply",
    "dequantize_sum",
    "quantize_weighted",
    "secagg_context",
    "secagg_mask_bits",
    "secagg_neighbours",
    "secagg_num_shares",
    "secagg_params_from_config",
    "secagg_params_to_config",
    "train_instruction_from_config",
    "train_instruction_to_config",
    "update_reply_from_records",
    "update_reply_to_records",
]

#: Passes over the local data per round.
DEFAULT_LOCAL_EPOCHS = 2
#: Client mini-batch size.
DEFAULT_BATCH_SIZE = 16
#: Client SGD learning rate in round 1.
DEFAULT_LR = 0.05
#: Round ``r`` trains with ``lr * lr_decay ** (r - 1)``.
DEFAULT_LR_DECAY = 0.95
#: FedProx proximal weight.
DEFAULT_PROXIMAL_MU = 0.01
#: L2 bound on one round's delta. Honest deltas on the benchmark measure 0.5-3 (2 epochs
#: of SGD); 10 leaves them untouched and stops a boosted (x100) update.
DEFAULT_MAX_DELTA_NORM = 10.0

UpdateModeName = Literal["fp32", "int8", "topk"]
_MAX_STR = 4096


class LearningContractError(ProtocolError):
    """A learning-plane record that does not follow the contract."""

    code = "bad_learning_message"


_STRICT = ConfigDict(frozen=True, strict=True, extra="forbid", populate_by_name=True)


class TrainInstruction(BaseModel):
    """What the coordinator asks of a device for one training round (wire: ``config``).

    Attributes:
        run_id, server_round: Which run and round; the reply must echo both.
        arch, input_shape, num_classes: The model to rebuild before loading the weights.
        local_epochs, batch_size, lr, proximal_mu: Local training (``proximal_mu > 0``:
            FedProx).
        update_mode, topk_fraction, error_feedback: How the plain path compresses deltas.
        seal_updates: Seal and sign the update to the coordinator (robust strategies).
        max_examples: The round's cap on ``num_examples`` (the FedAvg weight); ``None``:
            uncapped on the device, the coordinator still caps.
        max_delta_norm: L2 bound on the delta; under secure aggregation the device clips
            to it (the server cannot inspect individual updates).
        partition_dir, bundle_root: Simulation only (where virtual devices find data/keys).
    """

    model_config = _STRICT

    run_id: Annotated[str, Field(alias="run-id", max_length=128)] = ""
    server_round: Annotated[int, Field(alias="server-round", ge=0, le=2**31)] = 0
    arch: Annotated[str, Field(max_length=32)]
    input_shape: Annotated[tuple[int, ...], Field(alias="input-shape", min_length=1, max_length=4)]
    num_classes: Annotated[int, Field(alias="num-classes", ge=2, le=100_000)]
    local_epochs: Annotated[int, Field(alias="local-epochs", ge=1, le=1000)] = DEFAULT_LOCAL_EPOCHS
    batch_size: Annotated[int, Field(alias="batch-size", ge=1, le=1 << 20)] = DEFAULT_BATCH_SIZE
    lr: Annotated[float, Field(gt=0, le=100)] = DEFAULT_LR
    proximal_mu: Annotated[float, Field(alias="proximal-mu", ge=0, le=1e6)] = 0.0
    update_mode: Annotated[UpdateModeName, Field(alias="update-mode")] = "int8"
    topk_fraction: Annotated[float, Field(alias="topk-fraction", gt=0, le=1)] = 0.1
    error_feedback: Annotated[bool, Field(alias="error-feedback")] = False
    seal_updates: Annotated[bool, Field(alias="seal-updates")] = False
    max_examples: Annotated[int | None, Field(alias="max-examples", ge=1)] = None
    max_delta_norm: Annotated[float | None, Field(alias="max-delta-norm", gt=0)] = None
    partition_dir: Annotated[str | None, Field(alias="partition-dir", max_length=_MAX_STR)] = None
    bundle_root: Annotated[str | None, Field(alias="bundle-root", max_length=_MAX_STR)] = None


class UpdateReply(BaseModel):
    """A device's answer to a :class:`TrainInstruction` (wire: ``update`` + ``metrics``).

    Attributes:
        run_id, server_round: Echoed from the instruction (replay binding).
        mode: The compression of ``payload``.
        payload: The encoded delta (``shared.compression``), when not sealed.
        sealed, device_id: The sealed, signed delta and who signed it (robust strategies).
        num_examples: Local examples trained on: the FedAvg weight, capped by the round.
        train_loss: Mean loss of the last local epoch.
        raw_bytes, payload_bytes: float32 size of the delta and the bytes actually sent.
    """

    model_config = _STRICT

    run_id: Annotated[str, Field(alias="run-id", max_length=128)]
    server_round: Annotated[int, Field(alias="server-round", ge=0, le=2**31)]
    mode: UpdateModeName
    payload: bytes | None = None
    sealed: bytes | None = None
    device_id: Annotated[str | None, Field(alias="device-id", max_length=128)] = None
    num_examples: Annotated[int, Field(alias="num-examples", ge=1, le=2**62)]
    train_loss: Annotated[float, Field(alias="train-loss")] = 0.0
    raw_bytes: Annotated[int, Field(alias="raw-bytes", ge=0)] = 0
    payload_bytes: Annotated[int, Field(alias="payload-bytes", ge=0)] = 0


_METRIC_FIELDS = ("num_examples", "train_loss", "raw_bytes", "payload_bytes")


def _validate(model: type[BaseModel], raw: Mapping[str, Any], what: str) -> Any:
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        # Field names and reasons only: a hostile payload is never echoed back.
        where = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['type']}" for e in exc.errors()[:3]
        )
        raise LearningContractError(f"bad {what}: {where}") from None


def train_instruction_to_config(instruction: TrainInstruction) -> ConfigRecord:
    """The instruction as the ``config`` record of a Flower train message."""
    from flwr.app import ConfigRecord

    out: dict[str, Any] = {}
    for name, value in instruction.model_dump(by_alias=True, exclude_none=True).items():
        out[name] = list(value) if isinstance(value, tuple) else value
    return ConfigRecord(out)


def train_instruction_from_config(config: Mapping[str, Any]) -> TrainInstruction:
    """Parse a train message's ``config`` record (any mapping of its entries).

    Also reads what Flower's legacy SecAgg+ path sends, whose config values must be
    scalars: ``input-shape`` as ``"1,8,8"`` and FedProx's ``proximal_mu``. Keys the
    contract does not name (Flower's own, e.g. ``server-round`` duplicates) are ignored.

    Raises:
        LearningContractError: a missing or ill-typed entry.
    """
    known = {f.alias or n for n, f in TrainInstruction.model_fields.items()}
    raw = {k: v for k, v in config.items() if k in known}
    shape = raw.get("input-shape")
    if isinstance(shape, str):
        parts = shape.split(",")
        if not all(p.isascii() and p.isdigit() and len(p) <= 7 for p in parts):
            raise LearningContractError("bad train instruction: input-shape")
        raw["input-shape"] = tuple(int(p) for p in parts)
    elif isinstance(shape, list):
        raw["input-shape"] = tuple(shape)
    if "proximal-mu" not in raw and isinstance(config.get("proximal_mu"), float | int):
        raw["proximal-mu"] = float(config["proximal_mu"])
    if isinstance(raw.get("lr"), int) and not isinstance(raw.get("lr"), bool):
        raw["lr"] = float(raw["lr"])
    return _validate(TrainInstruction, raw, "train instruction")  # type: ignore[no-any-return]


def update_reply_to_records(reply: UpdateReply) -> tuple[ConfigRecord, MetricRecord]:
    """The reply as the ``update`` config record and the ``metrics`` metric record."""
    from flwr.app import ConfigRecord, MetricRecord

    dumped = reply.model_dump(by_alias=True, exclude_none=True)
    metric_keys = {UpdateReply.model_fields[n].alias for n in _METRIC_FIELDS}
    update = {k: v for k, v in dumped.items() if k not in metric_keys}
    metrics = {k: v for k, v in dumped.items() if k in metric_keys}
    return ConfigRecord(update), MetricRecord(metrics)


def update_reply_from_records(update: Mapping[str, Any], metrics: Mapping[str, Any]) -> UpdateReply:
    """Parse a reply's ``update`` and ``metrics`` records.

    Raises:
        LearningContractError: a missing or ill-typed entry (e.g. ``num-examples`` not a
            positive int), or neither ``payload`` nor ``sealed``.
    """
    raw = {**dict(metrics), **dict(update)}
    reply: UpdateReply = _validate(UpdateReply, raw, "update reply")
    if reply.payload is None and reply.sealed is None:
        raise LearningContractError("bad update reply: no payload")
    return reply


# --- Secure aggregation (fedge SecAgg) -------------------------------------------------
#
# Every message of the protocol carries a ConfigRecord named SECAGG_RECORD whose "stage"
# is one of SecAggStage; see docs/protocol.md §17 for the entries of each stage.

#: Name of the ConfigRecord the fedge SecAgg protocol travels in.
SECAGG_RECORD = "fedge-secagg"
#: Extra coordinates after the delta in the masked vector: weight, clipped, capped.
SECAGG_EXTRAS = 3


class SecAggStage(StrEnum):
    """The four stages of one secure round, in order (Bell et al. 2020)."""

    SETUP = "setup"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT = "masked-input"
    UNMASK = "unmask"


class SecAggParams(BaseModel):
    """The round's secure-aggregation parameters (sent with the share-keys stage).

    The neighbour graph is SecAgg+'s sparse ring (Bell et al. 2020): each device agrees
    keys with, masks against and Shamir-shares to its ``num_shares - 1`` neighbours only
    (:func:`secagg_neighbours`), so its work and bytes grow with ``log n``, not ``n``.

    Attributes:
        threshold: Shares needed to rebuild a secret, relative to the neighbourhood:
            ``num_shares / 2 < threshold <= num_shares`` (a strict majority of the holders
            of each secret, as Flower requires, so two disjoint coalitions cannot both
            rebuild it). Also the survivors needed to finish.
        num_shares: ``k``, the shares each device splits its secrets into, *itself
            included* (like Flower's ``num_shares``): one it keeps, one per neighbour.
            ``k`` at least the roster size is the complete graph (Bonawitz et al.'s SecAgg);
            below it ``k`` must be odd, ``(k - 1) / 2`` neighbours on each side of the ring.
            Default for ``n`` sampled devices: :func:`secagg_num_shares`.
        mask_bits: ``M = 2**mask_bits`` with ``M >= n * levels`` for the n sampled devices,
            so the sum of the survivors' quantized values never wraps.
        levels: Quantization levels ``Q`` per weighted delta value (``2**bits``).
        clip: Per-value clipping range ``c`` of the weighted delta.
        max_examples: The cap on ``num_examples``; the device's weight is
            ``min(n, max_examples) / max_examples``.
        max_delta_norm: L2 bound the device clips its delta to (``None``: no clip).
    """

    model_config = _STRICT

    threshold: Annotated[int, Field(ge=2, le=1 << 16)]
    num_shares: Annotated[int, Field(alias="num-shares", ge=2, le=1 << 16)]
    mask_bits: Annotated[int, Field(alias="mask-bits", ge=2, le=32)]
    levels: Annotated[int, Field(ge=2, le=1 << 24)]
    clip: Annotated[float, Field(gt=0, le=1e6)]
    max_examples: Annotated[int, Field(alias="max-examples", ge=1)]
    max_delta_norm: Annotated[float | None, Field(alias="max-delta-norm", gt=0)] = None

    @model_validator(mode="after")
    def _threshold_within_the_neighbourhood(self) -> SecAggParams:
        # t > k/2: at most one coalition of holders can rebuild a secret; t <= k: it can be
        # rebuilt at all.
        if not self.num_shares < 2 * self.threshold <= 2 * self.num_shares:
            raise ValueError("threshold must satisfy num-shares / 2 < threshold <= num-shares")
        return self


def secagg_num_shares(sampled: int) -> int:
    """The default neighbourhood size ``k`` (itself included) for ``sampled`` devices.

    ``min(n, 2 * ceil(log2 n) + 1)``, at least 3 (at least 2 for ``n <= 2``). Bell et al.
    show ``k = O(log n)`` neighbours keep SecAgg+ correct and private with high
    probability; the constant here is a cost/robustness trade-off, not their proven bound
    for a given corruption rate. The value is odd, so the ring is symmetric
    (``ceil(log2 n)`` neighbours on each side), and with the default majority threshold
    (``ceil(log2 n) + 1`` of ``k``) a device's secrets survive up to ``ceil(log2 n)`` lost
    holders. ``n <= 7`` and ``n = 9`` give ``k = n``: the complete graph, as before; 50
    devices get ``k = 13`` instead of 50.
    """
    if sampled <= 2:
        return 2
    return min(sampled, max(3, 2 * math.ceil(math.log2(sampled)) + 1))


def secagg_neighbours(nodes: Sequence[int], node: int, num_shares: int) -> list[int]:
    """``node``'s neighbours (itself excluded, sorted) on the ring of the sorted ``nodes``.

    The ring is the sorted roster; a node's neighbours are the ``(k - 1) / 2`` nearest on
    each side (like Flower's SecAgg+, which uses a shuffled order instead), so the relation
    is symmetric and every node has exactly ``k - 1``. ``k >= len(nodes)`` is the complete
    graph. Both halves of the protocol call this one function.

    Raises:
        ValueError: duplicate ids, ``node`` not in ``nodes``, ``num_shares < 2``, or an even
            ``num_shares`` below the roster size (no symmetric ring has that degree).
    """
    ring = sorted(nodes)
    if len(set(ring)) != len(ring):
        raise ValueError("duplicate node ids in the roster")
    if num_shares < 2:
        raise ValueError("num-shares must be at least 2")
    me = ring.index(node)  # ValueError: not in the roster
    count = len(ring)
    if num_shares >= count:
        return [n for n in ring if n != node]
    if num_shares % 2 == 0:
        raise ValueError("an even num-shares below the roster size has no symmetric ring")
    half = (num_shares - 1) // 2
    # 2 * half + 1 = k < count: the offsets never wrap onto each other.
    return sorted(ring[(me + offset) % count] for offset in range(-half, half + 1) if offset)


def secagg_mask_bits(num_clients: int, levels: int) -> int:
    """``ceil(log2(n * Q))``: the smallest power-of-two modulus ``n`` devices' sum fits in."""
    return max(2, math.ceil(math.log2(num_clients * levels)))


def secagg_context(run_id: str, server_round: int, purpose: str, *ids: int) -> bytes:
    """HKDF ``info`` binding a key to its run, round, purpose and node ids (both ends)."""
    parts = ["fedge/v1/secagg", purpose, run_id, str(server_round), *(str(i) for i in ids)]
    return "\x00".join(parts).encode()


def secagg_params_to_config(params: SecAggParams) -> dict[str, Any]:
    """The parameters as ConfigRecord entries (merged into the share-keys record)."""
    return params.model_dump(by_alias=True, exclude_none=True)


def secagg_params_from_config(config: Mapping[str, Any]) -> SecAggParams:
    """Parse the share-keys record's parameters.

    Raises:
        LearningContractError: a missing or ill-typed parameter.
    """
    known = {f.alias or n for n, f in SecAggParams.model_fields.items()}
    return _validate(  # type: ignore[no-any-return]
        SecAggParams, {k: v for k, v in config.items() if k in known}, "secagg parameters"
    )


def quantize_weighted(
    delta: NDArray[np.float32], weight: float, params: SecAggParams, rng: np.random.Generator
) -> NDArray[np.uint64]:
    """``weight * delta`` clipped to ``[-c, c]``, stochastically rounded to ``[0, Q-1]``.

    Stochastic rounding is unbiased, so the error of the sum averages out across devices.
    """
    scaled = np.clip(weight * delta.astype(np.float64), -params.clip, params.clip) + params.clip
    scaled *= (params.levels - 1) / (2 * params.clip)
    low = np.floor(scaled)
    q = low + (rng.random(scaled.shape) < (scaled - low))
    out: NDArray[np.uint64] = np.clip(q, 0, params.levels - 1).astype(np.uint64)
    return out


def dequantize_sum(
    total: NDArray[np.uint64], survivors: int, params: SecAggParams
) -> NDArray[np.float64]:
    """The float sum of ``survivors`` devices' weighted deltas from their quantized sum."""
    step = 2 * params.clip / (params.levels - 1)
    return total.astype(np.float64) * step - survivors * params.clip
