"""Device-side model updates: verify, download, A/B install, probation, commit.

:class:`Updater` is the transport-agnostic engine; the agent (:class:`~edge.agent.Agent`,
``fedge edge run --bundle``) runs it over MQTT. Imports no torch and nothing from ``cloud/``.
"""

from edge.updater.engine import Activate, Updater, UpdateReport, UpdaterLink
from edge.updater.state import Slot, SlotRecord, UpdaterState

__all__ = [
    "Activate",
    "Slot",
    "SlotRecord",
    "UpdateReport",
    "Updater",
    "UpdaterLink",
    "UpdaterState",
]
