"""Where the agent's incoming messages go: registered handlers, or the device's updater.

:meth:`AgentInbox.subscriptions` names the topics the agent listens on. A decoded message
goes to the handler registered for its kind; a raw one (a manifest, artifact chunk or
signed command) to the updater, which verifies it. Messages the agent cannot use
(malformed, no handler, no updater, an unexpected topic) are dropped and counted in
:attr:`AgentInbox.rejected`, which each telemetry window reports. A failing handler or
updater is logged, never raised: it must not stop the agent loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from edge.updater import Updater
from edge.updater.routing import dispatch
from shared.protocol import topics
from shared.protocol.messages import Message, MessageKind

__all__ = ["AgentInbox", "MessageHandler"]

logger = logging.getLogger("edge.agent")  # one logger for the whole agent, as before the split

MessageHandler = Callable[[str, Message], None]
"""Called on the agent loop with (topic, message) for a registered message kind."""


class AgentInbox:
    """Routes the agent's incoming messages (called only on the agent loop).

    Args:
        device_id: This device: the updater takes only its own and its groups' topics.
    """

    def __init__(self, device_id: str) -> None:
        self._device_id = device_id
        self._handlers: dict[MessageKind, MessageHandler] = {}
        self.rejected = 0  # messages dropped since the agent started (reported in telemetry)

    def subscriptions(self, groups: Iterable[str], updater_topics: Iterable[str] = ()) -> list[str]:
        """Topics to (re)subscribe after each connect.

        The device's commands, its groups' commands, then ``updater_topics`` (the updater's
        manifest and open downloads, :meth:`~edge.agent_updates.AgentUpdates.subscriptions`).
        """
        subs = [topics.device_cmd(self._device_id)]
        subs += [topics.group_cmd(g) for g in sorted(groups)]
        return [*subs, *updater_topics]

    def register(self, kind: MessageKind, handler: MessageHandler) -> None:
        """Route decoded messages of ``kind`` to ``handler`` (replacing any earlier one)."""
        self._handlers[kind] = handler

    def malformed(self, topic: str | None, reason: str | None) -> None:
        """Drop a message that did not decode."""
        self.rejected += 1
        logger.warning("dropped a malformed message on %s: %s", topic, reason)

    def message(self, topic: str | None, message: Message) -> None:
        """Pass a decoded message to the handler registered for its kind."""
        handler = self._handlers.get(message.kind)
        if handler is None:
            self.rejected += 1
            logger.warning("no handler for %s message on %s", message.kind, topic)
            return
        try:
            handler(topic or "", message)
        except Exception:  # a handler bug must not stop the agent
            logger.exception("handler for %s failed", message.kind)

    def raw(
        self, topic: str, payload: bytes, *, updater: Updater | None, groups: Iterable[str]
    ) -> None:
        """A manifest, chunk or command: the updater verifies it (never raises here).

        Args:
            topic, payload: The message as received.
            updater: The device's updater (None without a device bundle: dropped).
            groups: Groups whose commands this device takes.
        """
        if updater is None:
            self.rejected += 1
            logger.warning("no updater for a message on %s", topic)
            return
        try:
            known = dispatch(updater, topic, payload, device_id=self._device_id, groups=groups)
            if not known:
                self.rejected += 1
                logger.warning("ignoring a message on an unexpected topic %s", topic)
        except Exception:  # an updater bug must not stop the agent
            logger.exception("updater failed on a message on %s", topic)
