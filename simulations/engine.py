"""An in-process Flower ``Grid``: the ServerApp's messages run the real ClientApp directly.

Flower's Simulation Engine gives every virtual SuperNode a Ray actor, serialises each
message into it and polls the LinkState for replies. For a simulated fleet on a few cores
that overhead is most of the cost of a round of small clients, so :class:`InProcessGrid`
implements the same ``Grid`` contract (``push_messages`` / ``pull_messages`` /
``send_and_receive``) and hands each message straight to the ClientApp object —
``edge.learning.client_app:app``, the one the devices run — with a per-node ``Context``
whose ``state`` persists across rounds (error-feedback residuals live there). Clients of a
round run one after another in one process with **one** torch intra-op thread: small
per-client batches gain nothing from intra-op parallelism, and on a shared, loaded host a
multi-threaded op waits on its slowest thread (measured here: 3.5x slower per update with
torch's default 2 threads at load 12 than with 1). Memory stays bounded: partitions are
read from disk per call and only the node contexts (empty unless error feedback is on)
are kept.

:class:`RayExecutor` runs the same calls on a Ray cluster (``RAY_ADDRESS``) through a
bounded pool of actors, each holding the ClientApp; the grid and everything above it is
unchanged.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from shared.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ClientCall", "Executor", "InProcessGrid", "LocalExecutor", "RayExecutor", "load_app"]

#: Flower's error code for an exception raised inside a ClientApp.
CLIENT_APP_RAISED = 1

#: One ClientApp invocation: the message and the destination node's context.
ClientCall = tuple[Message, Context]


def load_app(reference: str) -> Any:
    """Resolve ``module:attribute`` (how Flower apps name their components).

    Raises:
        ConfigError: the reference does not resolve.
    """
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {reference!r}: {exc}") from exc


def _call(app: Any, message: Message, context: Context) -> Message:
    """Run one message through the ClientApp; an exception becomes an error reply."""
    try:
        return cast(Message, app(message, context))
    except Exception as exc:  # a failing client is data for the server, as in Flower
        log.warning("node %s: ClientApp raised %r", context.node_id, exc)
        return Message(Error(CLIENT_APP_RAISED, repr(exc)), reply_to=message)


class Executor(Protocol):
    """Runs a batch of ClientApp calls and returns their replies in order."""

    def run(self, calls: Sequence[ClientCall]) -> list[Message]:
        """Run every call; contexts' ``state`` must reflect the calls afterwards."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


class LocalExecutor:
    """Runs the ClientApp in this process, one call after another."""

    def __init__(self, client_app: str, *, threads: int = 1) -> None:
        import torch

        self.app = load_app(client_app)
        self._threads = torch.get_num_threads()
        torch.set_num_threads(threads)

    def run(self, calls: Sequence[ClientCall]) -> list[Message]:
        """Run every call in order."""
        return [_call(self.app, msg, ctx) for msg, ctx in calls]

    def close(self) -> None:
        """Give torch its thread count back."""
        import torch

        torch.set_num_threads(self._threads)


class RayExecutor:
    """Runs the ClientApp on a Ray cluster through a bounded actor pool.

    Args:
        client_app: ``module:attribute`` of the ClientApp (imported inside each actor, so
            the cluster's workers need the same code: run from the repo or install it).
        address: Ray cluster address; default ``RAY_ADDRESS`` (``auto`` when unset).
        num_actors: Pool size, the bound on concurrent clients (and on memory).
    """

    def __init__(self, client_app: str, *, address: str | None = None, num_actors: int = 2) -> None:
        import ray
        from ray.util import ActorPool

        if not ray.is_initialized():
            ray.init(
                address=address or os.environ.get("RAY_ADDRESS", "auto"),
                log_to_driver=False,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
            )

        @ray.remote(num_cpus=1)
        class _ClientActor:
            def __init__(self, reference: str) -> None:
                self.app = load_app(reference)

            def call(self, message: Message, context: Context) -> tuple[Message, RecordDict]:
                reply = _call(self.app, message, context)
                return reply, context.state

            def node(self) -> str:
                return str(ray.get_runtime_context().get_node_id())

        self._ray = ray
        self._actors = [_ClientActor.remote(client_app) for _ in range(num_actors)]  # type: ignore[attr-defined]
        self._pool = ActorPool(self._actors)

    def run(self, calls: Sequence[ClientCall]) -> list[Message]:
        """Run the calls on the pool; copy each returned node state back into its context."""
        results = list(
            self._pool.map(lambda actor, call: actor.call.remote(call[0], call[1]), list(calls))
        )
        replies = []
        for (_, ctx), (reply, state) in zip(calls, results, strict=True):
            ctx.state = state
            replies.append(reply)
        return replies

    def nodes(self) -> set[str]:
        """Ray node ids the pool's actors run on."""
        return set(self._ray.get([a.node.remote() for a in self._actors]))

    def close(self) -> None:
        """Stop the actors (the cluster itself stays up)."""
        for actor in self._actors:
            self._ray.kill(actor)


def _claim_identity(run_id: int) -> None:
    """Stamp this process as the ServerApp task of ``run_id``, as Flower's ServerApp
    runtime does before ``main``: Flower's ``Message`` constructor reads it."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


class InProcessGrid(Grid):
    """A ``Grid`` over a fixed set of node ids whose messages an :class:`Executor` runs.

    Args:
        node_configs: ``node_config`` per node id (``partition-id``, ``num-partitions``).
        executor: Runs the ClientApp calls.
        run_config: The run's config, visible to clients in their ``Context``.
        run_id: Flower run id.
    """

    def __init__(
        self,
        node_configs: dict[int, dict[str, bool | float | int | str]],
        executor: Executor,
        *,
        run_config: dict[str, bool | float | int | str] | None = None,
        run_id: int = 1,
    ) -> None:
        self._run = Run.create_empty(run_id)
        _claim_identity(run_id)
        self.executor = executor
        self.contexts = {
            node: Context(
                run_id=run_id,
                node_id=node,
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for node, cfg in node_configs.items()
        }
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Adopt ``run`` (the grid serves exactly one run)."""
        self._run = run
        _claim_identity(run.run_id)

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message to ``dst_node_id`` (the legacy API; strategies build ``Message``)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Every node of the grid."""
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue messages for known nodes; return their ids (unknown nodes are dropped)."""
        ids: list[str] = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self.contexts:
                log.warning("dropping message to unknown node %s", msg.metadata.dst_node_id)
                continue
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self._pending[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Run whatever is pending, then hand out the replies to ``message_ids``."""
        if self._pending:
            batch = list(self._pending.values())
            self._pending.clear()
            calls = [(m, self.contexts[m.metadata.dst_node_id]) for m in batch]
            for msg, reply in zip(batch, self.executor.run(calls), strict=True):
                self._replies[msg.metadata.message_id] = reply
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, run and return every reply (``timeout`` is simulated by the fleet grid)."""
        return self.pull_messages(list(self.push_messages(messages)))
