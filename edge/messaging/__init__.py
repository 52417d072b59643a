"""MQTT 5 link of the edge agent (paho-mqtt 2.x).

The paho network thread only *decodes and enqueues* (:class:`LinkEvent`); the agent's main
loop acts on the events. A callback never raises and never does I/O of its own.
"""

from edge.messaging.client import BrokerAddress, EventKind, LinkEvent, MqttLink, parse_broker_url

__all__ = ["BrokerAddress", "EventKind", "LinkEvent", "MqttLink", "parse_broker_url"]
