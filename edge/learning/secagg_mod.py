"""The device half of fedge SecAgg: a Flower client mod around the ordinary train function.

Four stages per round (Bell et al. 2020; ``docs/protocol.md`` §17), each one train message
carrying a ``fedge-secagg`` record (:class:`~shared.protocol.learning.SecAggStage`):

1. **setup** — fresh X25519 pairs: ``c`` (encrypts shares) and ``s`` (pairwise masks);
   reply both public keys.
2. **share-keys** — check the roster (enough peers, unique keys, ours listed as ours), find
   our neighbours on the SecAgg+ ring (:func:`~shared.protocol.learning.secagg_neighbours`:
   the ``k - 1`` nearest of the sorted roster, ``k = num-shares``; ``k >= n`` is the
   complete graph), draw a 32-byte mask seed ``b``, Shamir-split ``b`` and ``sk_s`` into
   ``min(k, n)`` shares with the round's threshold (one we keep, one per neighbour), send each
   neighbour its two shares AES-GCM-encrypted under ``agree(c, neighbour c)`` with the run,
   round and both node ids as associated data. Nothing goes to non-neighbours, so the
   device's work and bytes grow with ``k = O(log n)``, not ``n``.
3. **masked-input** — open the shares addressed to us, run the wrapped train function
   (it answers an fp32 delta through the learning contract), then *bound its influence*:
   weight ``w = min(n, cap) / cap``, clip the delta to the L2 bound, quantize
   ``w * delta`` (:func:`~shared.protocol.learning.quantize_weighted`) and append ``w``
   and the clipped/capped flags, so the server only learns their sums. Add the seed mask
   and the pairwise masks with the neighbours whose shares arrived (``+`` towards lower
   node ids, ``-`` towards higher) mod ``M`` and reply the packed vector only — the
   plaintext arrays and metrics never leave.
4. **unmask** — for each surviving neighbour (and ourselves) reveal our share of its seed;
   for each dropped neighbour our share of its mask key. Never for a non-neighbour, never
   both for the same node, and only once per round: that is what keeps a survivor's own
   input masked.

Any violation raises :class:`SecAggAbortError`; Flower turns that into an error reply and
the coordinator treats the device as dropped.
"""

from __future__ import annotations

import logging
import os
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.crypto.shamir import create_shares

from shared.compression import MalformedUpdateError, decode_update
from shared.crypto import ContentKey, PrivateKey, PublicKey, decrypt, encrypt
from shared.crypto.prg import agree, derive_key, mask_stream, pack_mod
from shared.errors import CryptoError, FedgeError
from shared.protocol.learning import (
    SECAGG_RECORD,
    LearningContractError,
    SecAggParams,
    SecAggStage,
    quantize_weighted,
    secagg_context,
    secagg_neighbours,
    secagg_params_from_config,
    update_reply_from_records,
)

log = logging.getLogger(__name__)

__all__ = ["SecAggAbortError", "fedge_secagg_mod"]

_STATE = "fedge-secagg-state"


class SecAggAbortError(FedgeError):
    """The device refuses to continue this secure round (it is then treated as dropped)."""

    code = "secagg_abort"


def fedge_secagg_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run one stage of fedge SecAgg; other messages pass through untouched."""
    if (
        msg.metadata.message_type != MessageType.TRAIN
        or SECAGG_RECORD not in msg.content.config_records
    ):
        return call_next(msg, ctxt)
    config = msg.content.config_records[SECAGG_RECORD]
    state = dict(ctxt.state.config_records.get(_STATE, ConfigRecord({})))
    me = msg.metadata.dst_node_id
    try:
        stage = SecAggStage(str(config.get("stage")))
        if stage is SecAggStage.SETUP:
            state, out = _setup(config)
        elif stage is SecAggStage.SHARE_KEYS:
            out = _share_keys(state, config, me)
        elif stage is SecAggStage.MASKED_INPUT:
            out = _masked_input(state, config, me, msg, ctxt, call_next)
        else:
            out = _unmask(state, config, me)
    except (ValueError, KeyError, TypeError, CryptoError, LearningContractError) as exc:
        ctxt.state.config_records[_STATE] = ConfigRecord({})
        raise SecAggAbortError(f"secure round aborted: {exc}") from exc
    state["stage"] = stage.value
    ctxt.state.config_records[_STATE] = ConfigRecord(state)
    return Message(RecordDict({SECAGG_RECORD: ConfigRecord(out)}), reply_to=msg)


def _expect(state: dict[str, Any], stage: SecAggStage, config: ConfigRecord) -> None:
    """Stages run in order, within one run and round (a replayed stage is refused)."""
    if state.get("stage") != stage.value:
        raise ValueError(f"stage out of order after {state.get('stage')!r}")
    if config.get("run-id") != state.get("run-id") or config.get("round") != state.get("round"):
        raise ValueError("message for another run or round")


def _setup(config: ConfigRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    run_id, server_round = config.get("run-id"), config.get("round")
    if not isinstance(run_id, str) or not isinstance(server_round, int):
        raise TypeError("setup needs run-id and round")
    sk_c, sk_s = PrivateKey.generate(), PrivateKey.generate()
    state: dict[str, Any] = {
        "run-id": run_id,
        "round": server_round,
        "sk-c": sk_c.to_bytes(),
        "sk-s": sk_s.to_bytes(),
    }
    return state, {"pk-c": sk_c.public_key.to_bytes(), "pk-s": sk_s.public_key.to_bytes()}


def _share_keys(state: dict[str, Any], config: ConfigRecord, me: int) -> dict[str, Any]:
    _expect(state, SecAggStage.SETUP, config)
    nodes = cast(list[int], config["nodes"])
    pk_c, pk_s = cast(list[bytes], config["pk-c"]), cast(list[bytes], config["pk-s"])
    params = secagg_params_from_config(config)
    if not len(nodes) == len(pk_c) == len(pk_s) or len(set(nodes)) != len(nodes):
        raise ValueError("malformed roster")
    if len(nodes) < params.threshold:
        raise ValueError("fewer peers than the threshold")
    if len(set(pk_c) | set(pk_s)) != 2 * len(nodes):
        raise ValueError("public keys are not unique")
    mine = nodes.index(me)
    sk_c = PrivateKey.from_bytes(cast(bytes, state["sk-c"]))
    sk_s = PrivateKey.from_bytes(cast(bytes, state["sk-s"]))
    if pk_c[mine] != sk_c.public_key.to_bytes() or pk_s[mine] != sk_s.public_key.to_bytes():
        raise ValueError("the roster misstates our own keys")
    neighbours = secagg_neighbours(nodes, me, params.num_shares)
    # The secrets' holders: the neighbours and ourselves, in id order (with k >= n and the
    # server's sorted roster, share i goes to nodes[i], exactly as before the ring).
    holders = sorted([me, *neighbours])
    seed = os.urandom(32)
    seed_shares = create_shares(seed, params.threshold, len(holders))
    key_shares = create_shares(sk_s.to_bytes(), params.threshold, len(holders))
    run_id, server_round = str(state["run-id"]), int(state["round"])
    dsts, boxes = [], []
    for i, node in enumerate(holders):
        if node == me:
            continue
        peer = PublicKey.from_bytes(pk_c[nodes.index(node)])
        key = agree(sk_c, peer, _pair(run_id, server_round, me, node))
        plain = len(seed_shares[i]).to_bytes(2, "little") + seed_shares[i] + key_shares[i]
        dsts.append(node)
        boxes.append(encrypt(ContentKey(key), plain, _ad(run_id, server_round, me, node)))
    own = holders.index(me)
    state.update(
        {
            "nodes": nodes,
            "neighbours": neighbours,
            "pk-c": pk_c,
            "pk-s": pk_s,
            "seed": seed,
            "share-from": [me],
            "seed-shares": [seed_shares[own]],
            "key-shares": [key_shares[own]],
            **{f"p:{k}": v for k, v in params.model_dump(by_alias=True).items() if v is not None},
        }
    )
    return {"dst": dsts, "box": boxes}


def _pair(run_id: str, server_round: int, a: int, b: int) -> bytes:
    return secagg_context(run_id, server_round, "share", min(a, b), max(a, b))


def _ad(run_id: str, server_round: int, src: int, dst: int) -> bytes:
    return secagg_context(run_id, server_round, "share-ad", src, dst)


def _params(state: dict[str, Any]) -> SecAggParams:
    return secagg_params_from_config({k[2:]: v for k, v in state.items() if k.startswith("p:")})


def _masked_input(
    state: dict[str, Any],
    config: ConfigRecord,
    me: int,
    msg: Message,
    ctxt: Context,
    call_next: ClientAppCallable,
) -> dict[str, Any]:
    _expect(state, SecAggStage.SHARE_KEYS, config)
    params = _params(state)
    nodes = cast(list[int], state["nodes"])
    pk_c, pk_s = cast(list[bytes], state["pk-c"]), cast(list[bytes], state["pk-s"])
    srcs, boxes = cast(list[int], config["src"]), cast(list[bytes], config["box"])
    if len(srcs) != len(boxes) or len(set(srcs)) != len(srcs) or me in srcs:
        raise ValueError("malformed share delivery")
    if not set(srcs) <= set(cast(list[int], state["neighbours"])):
        # Only neighbours share with us; a mask with anyone else would never be removed.
        raise ValueError("shares from a node that is not our neighbour")
    if len(srcs) + 1 < params.threshold:
        raise ValueError("fewer peers than the threshold")
    run_id, server_round = str(state["run-id"]), int(state["round"])
    sk_c = PrivateKey.from_bytes(cast(bytes, state["sk-c"]))
    for src, box in zip(srcs, boxes, strict=True):
        peer = PublicKey.from_bytes(pk_c[nodes.index(src)])  # ValueError: not in the roster
        key = agree(sk_c, peer, _pair(run_id, server_round, src, me))
        plain = decrypt(ContentKey(key), box, _ad(run_id, server_round, src, me))
        size = int.from_bytes(plain[:2], "little")
        state["share-from"].append(src)
        state["seed-shares"].append(plain[2 : 2 + size])
        state["key-shares"].append(plain[2 + size :])

    reply = call_next(msg, ctxt)  # the ordinary train function (fp32 delta)
    if reply.has_error():
        raise ValueError("local training failed")
    vector = _bounded_vector(reply, msg, params)
    bits = params.mask_bits
    modulus = np.uint64(1 << bits)
    seed = cast(bytes, state["seed"])
    total = vector + mask_stream(
        derive_key(seed, _seed_info(run_id, server_round)), vector.size, bits
    )
    sk_s = PrivateKey.from_bytes(cast(bytes, state["sk-s"]))
    for src in srcs:
        info = secagg_context(run_id, server_round, "mask", min(me, src), max(me, src))
        mask = mask_stream(
            agree(sk_s, PublicKey.from_bytes(pk_s[nodes.index(src)]), info), vector.size, bits
        ).astype(np.uint64)
        total = total + mask if me > src else total + (modulus - mask)
    state["peers"] = srcs
    packed = pack_mod((total % modulus).astype(np.uint32), bits)
    log.info(
        "secure round %d: masked %d values into %d bytes", server_round, vector.size, len(packed)
    )
    return {"masked": packed}


def _seed_info(run_id: str, server_round: int) -> bytes:
    return secagg_context(run_id, server_round, "seed")


def _bounded_vector(reply: Message, msg: Message, params: SecAggParams) -> np.ndarray:
    """The device's quantized ``w * delta`` plus [w, clipped, capped] (bounded influence)."""
    update = reply.content.config_records.get("update")
    metrics = reply.content.metric_records.get("metrics")
    if update is None or metrics is None:
        raise ValueError("train function gave no update")
    answer = update_reply_from_records(update, metrics)
    if answer.mode != "fp32" or answer.payload is None:
        raise ValueError("secure rounds need an fp32 delta")
    names = list(msg.content.array_records["arrays"].keys())
    try:
        delta = decode_update(answer.payload, max_tensors=len(names), max_elements=1 << 28)
    except MalformedUpdateError as exc:
        raise ValueError(exc.message) from exc
    flat = np.concatenate([delta[n].reshape(-1) for n in names]).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        # The server cannot inspect this update, so the non-finite check happens here.
        raise ValueError("local training diverged")
    capped = answer.num_examples > params.max_examples
    weight = min(answer.num_examples, params.max_examples) / params.max_examples
    norm = float(np.linalg.norm(flat))
    clipped = params.max_delta_norm is not None and norm > params.max_delta_norm
    if clipped:
        assert params.max_delta_norm is not None
        flat *= params.max_delta_norm / norm
    q = quantize_weighted(flat.astype(np.float32), weight, params, np.random.default_rng())
    extras = np.array([round(weight * (params.levels - 1)), int(clipped), int(capped)], np.uint64)
    return np.concatenate([q, extras])


def _unmask(state: dict[str, Any], config: ConfigRecord, me: int) -> dict[str, Any]:
    _expect(state, SecAggStage.MASKED_INPUT, config)
    params = _params(state)
    active, dropped = cast(list[int], config["active"]), cast(list[int], config["dropped"])
    peers = set(cast(list[int], state["peers"])) | {me}
    if not set(active) | set(dropped) <= set(cast(list[int], state["neighbours"])) | {me}:
        # We hold shares of our neighbours only; a request naming anyone else is not ours.
        raise ValueError("a node that is not our neighbour")
    if len(active) < params.threshold or me not in active:
        # ``active``: the survivors among our neighbours and ourselves.
        raise ValueError("fewer survivors than the threshold")
    if set(active) & set(dropped) or not set(active) | set(dropped) <= peers:
        # Revealing both shares of one peer would unmask its individual input.
        raise ValueError("a peer listed as both survivor and dropped, or unknown")
    share_from = cast(list[int], state["share-from"])
    seeds, keys = cast(list[bytes], state["seed-shares"]), cast(list[bytes], state["key-shares"])
    shares = [seeds[share_from.index(n)] for n in active] + [
        keys[share_from.index(n)] for n in dropped
    ]
    return {"nodes": active + dropped, "shares": shares}
