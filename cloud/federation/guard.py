"""The update guard: decode, validate and count client updates before any strategy sees them.

Clients send compressed deltas (``shared.compression``), not weights. :class:`UpdateGuard`
wraps any Flower Message-API strategy: on the way out it remembers the global weights it
sent and stamps the run id into the config; on the way back it decodes each delta, checks
it, and hands the wrapped strategy ordinary full-weight replies (``global + delta``) — so
FedAvg, FedProx, FedAdam, FedTrimmedAvg and FedMedian work unchanged.

A reply is rejected (logged, counted, left out of the aggregate; the round goes on) when:

* it is not a well-formed update (no payload, bad codec bytes, no ``num-examples``);
* it belongs to another run or round (replay of an old update);
* the payload is larger than ``max_update_bytes`` (checked before decoding);
* its tensors do not match the global model's names and shapes;
* it holds NaN or infinity, or its L2 norm exceeds ``max_delta_norm``.

Bounded influence: ``num_examples`` is the FedAvg weight and the client chooses it, so a
claim above ``max_examples`` is aggregated as exactly ``max_examples`` (and counted in
``RoundTraffic.capped``): a client reporting 10^12 examples weighs what an honest client
at the cap weighs, never more.

With :class:`UpdateKeys` (required for trimmed-mean/median, which see individual updates)
every update must also arrive sealed to the coordinator and signed by an enrolled device
(:mod:`shared.crypto.sealed_update`); it is opened and verified *before* decoding, and
rejected when unsealed, unsigned, signed by another key, tampered, bound to another run,
round or device, or a second update from the same device in one round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from shared.compression import MalformedUpdateError, decode_update, float32_nbytes
from shared.crypto import PrivateKey, VerifyKey
from shared.crypto.seal import SEAL_OVERHEAD
from shared.crypto.sealed_update import SIGNATURE_BYTES, open_update
from shared.errors import FedgeError, SecurityError
from shared.protocol.learning import LearningContractError, update_reply_from_records

log = logging.getLogger(__name__)


class RejectedUpdateError(FedgeError):
    """A client update that must not reach the aggregate."""

    code = "rejected_update"


@dataclass
class RoundTraffic:
    """What one training round moved and kept.

    Attributes:
        sampled: Clients asked to train.
        accepted: Updates that passed every check and were aggregated.
        rejected: Updates refused by the guard, with reasons.
        failed: Clients that replied with an error or not at all before the deadline.
        bytes_down: Global weights sent (float32) to all sampled clients.
        bytes_up: Update payload bytes received, accepted or not.
        raw_bytes_up: What the accepted updates would have cost as float32.
        capped: Accepted updates whose ``num_examples`` claim exceeded the round's cap
            (aggregated with the cap as their weight).
        clipped: Updates clipped to the norm bound (fedge SecAgg: reported by devices).
    """

    sampled: int = 0
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    failed: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    raw_bytes_up: int = 0
    capped: int = 0
    clipped: int = 0


@dataclass(frozen=True)
class UpdateKeys:
    """What the guard needs to open sealed updates.

    Attributes:
        coordinator: The coordinator's X25519 key (devices seal to its public half).
        devices: Enrolled, non-revoked devices' Ed25519 keys by device id.
    """

    coordinator: PrivateKey
    devices: Mapping[str, VerifyKey]


class UpdateGuard(Strategy):
    """Wrap ``inner`` so it only ever aggregates decoded, validated client updates.

    Args:
        inner: The aggregation strategy (any Message-API strategy using ``arrays``).
        run_id: Stamped into every train config; replies must echo it.
        max_update_bytes: Largest accepted payload; ``None`` allows 1.1x float32 size.
        max_delta_norm: Largest accepted L2 norm of a delta; ``None`` disables the check.
        max_examples: Cap on the ``num_examples`` weight; ``None`` leaves it uncapped.
        keys: Require sealed, signed updates and open them with these keys.
        round_config: Per-round train-config entries (e.g. the decayed learning rate),
            merged into the config before each round's messages go out.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        run_id: str,
        max_update_bytes: int | None = None,
        max_delta_norm: float | None = None,
        keys: UpdateKeys | None = None,
        round_config: Callable[[int], Mapping[str, Any]] | None = None,
        max_examples: int | None = None,
    ) -> None:
        self.inner = inner
        self.max_examples = max_examples
        self.round_config = round_config
        self.keys = keys
        self._senders: set[str] = set()
        self.run_id = run_id
        self.max_update_bytes = max_update_bytes
        self.max_delta_norm = max_delta_norm
        self.traffic: dict[int, RoundTraffic] = {}
        self._global: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the wrapped strategy's configuration and the guard's limits."""
        log.info(
            "update guard: run %s, max %s bytes, max norm %s",
            self.run_id,
            self.max_update_bytes,
            self.max_delta_norm,
        )
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Stamp run, round and per-round entries; remember the global weights; count the
        bytes sent down."""
        config["run-id"] = self.run_id
        if self.round_config is not None:
            for key, value in self.round_config(server_round).items():
                config[key] = value
        config["seal-updates"] = self.keys is not None
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.begin_round(server_round, arrays, sampled=len(messages))
        return messages

    def begin_round(self, server_round: int, arrays: ArrayRecord, *, sampled: int) -> None:
        """Remember the global weights a round's deltas apply to, and the bytes sent down."""
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._senders = set()
        self.traffic[server_round] = RoundTraffic(
            sampled=sampled, bytes_down=sampled * float32_nbytes(self._global)
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Decode and check every reply; aggregate only the accepted ones."""
        traffic = self.traffic.setdefault(server_round, RoundTraffic())
        accepted: list[Message] = []
        for msg in replies:
            if msg.has_error():
                traffic.failed += 1
                continue
            try:
                msg.content, payload_bytes, raw = self.restore(server_round, msg.content)
            except RejectedUpdateError as exc:
                node = msg.metadata.src_node_id
                log.warning("round %d: rejected update from node %s: %s", server_round, node, exc)
                traffic.rejected.append(exc.message)
                traffic.bytes_up += _payload_size(msg.content)
                continue
            traffic.bytes_up += payload_bytes
            traffic.raw_bytes_up += raw
            accepted.append(msg)
        # Clients that never answered before the deadline are missing from `replies`.
        traffic.failed = max(
            traffic.failed, traffic.sampled - len(accepted) - len(traffic.rejected)
        )
        traffic.accepted = len(accepted)
        if not accepted:
            log.warning(
                "round %d: no acceptable update; the global model is unchanged", server_round
            )
            return None, None
        return self.inner.aggregate_train(server_round, accepted)

    def restore(self, server_round: int, content: RecordDict) -> tuple[RecordDict, int, int]:
        """Turn a compressed-delta reply into a full-weight reply, or refuse it.

        Returns:
            The replacement content (``arrays`` + ``metrics``), payload bytes, float32 bytes.

        Raises:
            RejectedUpdateError: for any of the reasons in the module docstring.
        """
        update = content.config_records.get("update")
        metrics = content.metric_records.get("metrics")
        if update is None or metrics is None:
            raise RejectedUpdateError("reply has no update payload or metrics")
        raw = float32_nbytes(self._global)
        limit = self.max_update_bytes if self.max_update_bytes is not None else int(raw * 1.1)
        if self.keys is not None:
            # Open before anything else is believed, including run-id/round below.
            update["payload"] = self._open(server_round, update, limit)
        if not isinstance(update.get("payload"), bytes):
            raise RejectedUpdateError("reply has no update payload or metrics")
        try:
            reply = update_reply_from_records(update, metrics)
        except LearningContractError as exc:
            raise RejectedUpdateError(exc.message) from exc
        if reply.run_id != self.run_id or reply.server_round != server_round:
            raise RejectedUpdateError(
                f"update for run {reply.run_id!r} round {reply.server_round} "
                f"replayed into run {self.run_id!r} round {server_round}"
            )
        examples = reply.num_examples
        capped = self.max_examples is not None and examples > self.max_examples
        payload = cast(bytes, update["payload"])
        if len(payload) > limit:
            raise RejectedUpdateError(f"update of {len(payload)} bytes exceeds {limit}")
        try:
            delta = decode_update(
                payload,
                max_tensors=len(self._global),
                max_elements=sum(int(a.size) for a in self._global.values()),
            )
        except MalformedUpdateError as exc:
            raise RejectedUpdateError(f"undecodable update: {exc.message}") from exc
        self.check_delta(delta)
        if capped:
            assert self.max_examples is not None
            log.warning(
                "round %d: num-examples %d over the cap %d; weighted as the cap",
                server_round,
                examples,
                self.max_examples,
            )
            examples = self.max_examples
            self.traffic.setdefault(server_round, RoundTraffic()).capped += 1
        restored = {
            k: Array(np.asarray(self._global[k] + delta[k], dtype=self._global[k].dtype))
            for k in self._global
        }
        slim = MetricRecord({"num-examples": examples, "train-loss": reply.train_loss})
        return (
            RecordDict({"arrays": ArrayRecord(restored), "metrics": slim}),
            _payload_size(content),
            raw,
        )

    def _open(self, server_round: int, update: ConfigRecord, limit: int) -> bytes:
        """Open and verify a sealed update (rule: sealed, signed, bound to run/round/device)."""
        assert self.keys is not None
        sealed, device = update.get("sealed"), update.get("device-id")
        if not isinstance(sealed, bytes) or not isinstance(device, str):
            raise RejectedUpdateError("update is not sealed and signed")
        if len(sealed) > limit + SEAL_OVERHEAD + SIGNATURE_BYTES:
            raise RejectedUpdateError(f"sealed update of {len(sealed)} bytes exceeds {limit}")
        if device in self._senders:
            raise RejectedUpdateError(f"second update from device {device!r} in this round")
        try:
            payload = open_update(
                sealed,
                coordinator=self.keys.coordinator,
                devices=self.keys.devices,
                run_id=self.run_id,
                server_round=server_round,
                device_id=device,
            )
        except SecurityError as exc:
            # Wrong run/round (replay), tampering and a foreign box look alike on purpose.
            raise RejectedUpdateError(
                f"update claimed by {device!r} failed verification ({exc.code})"
            ) from exc
        self._senders.add(device)
        return payload

    def check_delta(self, delta: dict[str, np.ndarray]) -> None:
        """Names, shapes, finiteness and (optionally) norm of a decoded delta."""
        if set(delta) != set(self._global):
            raise RejectedUpdateError("update tensors do not match the global model")
        squared = 0.0
        for name, values in delta.items():
            if values.shape != self._global[name].shape:
                raise RejectedUpdateError(f"tensor {name!r} has shape {values.shape}")
            if not np.all(np.isfinite(values)):
                raise RejectedUpdateError(f"tensor {name!r} holds NaN or infinity")
            squared += float(np.sum(np.square(values, dtype=np.float64)))
        norm = math.sqrt(squared)
        if self.max_delta_norm is not None and norm > self.max_delta_norm:
            raise RejectedUpdateError(f"update norm {norm:.3g} exceeds {self.max_delta_norm}")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Federated evaluation is the wrapped strategy's business."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Federated evaluation is the wrapped strategy's business."""
        return self.inner.aggregate_evaluate(server_round, replies)


def _payload_size(content: RecordDict) -> int:
    update = content.config_records.get("update")
    if update is None:
        return 0
    payload = update.get("sealed", update.get("payload"))
    return len(payload) if isinstance(payload, bytes) else 0
