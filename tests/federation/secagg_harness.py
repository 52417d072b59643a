"""An in-process Grid for fast fedge SecAgg tests: real Flower ClientApps, no network.

Each node is a real ``flwr.clientapp.ClientApp`` (with the real ``fedge_secagg_mod``) and
its own ``Context``; ``send_and_receive`` calls the app per message, like a SuperNode does.
A node whose app raises is silent for that stage (it dropped), as on a real link. Every
reply the server receives is kept in ``received``, for the "server never sees a plaintext
update" property.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from edge.learning.secagg_mod import fedge_secagg_mod
from shared.compression import encode_update
from shared.protocol.learning import SECAGG_RECORD, UpdateReply, update_reply_to_records

Stage = str


class InProcessGrid(Grid):
    """A Grid whose nodes are ClientApps called in this process."""

    def __init__(self, apps: dict[int, ClientApp]) -> None:
        self.apps = apps
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in apps
        }
        self.received: list[Message] = []
        self._next = 0

    def set_run(self, run: Any) -> None:
        pass

    @property
    def run(self) -> Any:
        return None

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            try:
                reply = self.apps[node](msg, self.contexts[node])
            except Exception:  # the device dropped out of this stage
                continue
            replies.append(reply)
        self.received.extend(replies)
        return replies


def fixed_update_app(
    delta: dict[str, np.ndarray], examples: int, *, drop_at: Stage | None = None
) -> ClientApp:
    """A device that "trains" to ``delta`` on ``examples`` examples (tiny and deterministic),
    behind the real fedge SecAgg mod; with ``drop_at`` it goes silent from that stage on."""

    def dropper(
        msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        record = msg.content.config_records.get(SECAGG_RECORD)
        stages = ["setup", "share-keys", "masked-input", "unmask"]
        if drop_at is not None and record is not None:
            late = stages.index(str(record["stage"])) >= stages.index(drop_at)
            if late:
                raise ConnectionError("device went away")
        return call_next(msg, ctxt)

    app = ClientApp(mods=[dropper, fedge_secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content.config_records["config"]
        reply = UpdateReply(
            run_id=str(config["run-id"]),
            server_round=int(config["server-round"]),  # type: ignore[arg-type]
            mode="fp32",
            payload=encode_update(delta, mode="fp32").payload,
            num_examples=examples,
        )
        update, metrics = update_reply_to_records(reply)
        return Message(RecordDict({"update": update, "metrics": metrics}), reply_to=msg)

    return app


def train_config(run_id: str, server_round: int) -> ConfigRecord:
    """The part of a train config the fixed-update device reads."""
    return ConfigRecord({"run-id": run_id, "server-round": server_round})


__all__ = ["InProcessGrid", "MetricRecord", "fixed_update_app", "train_config"]
