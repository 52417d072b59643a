"""The ``fedge-ingest`` broker session: its subscriptions, MQTT client and CONNECT properties.

See :mod:`cloud.ingest.worker` for why the session is persistent and acknowledged manually.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud.keys import INGEST_USER, KeyHome
from shared.errors import ConfigError
from shared.protocol import topics
from shared.protocol.topics import DeviceLeaf

__all__ = ["SESSION_EXPIRY_S", "SUBSCRIPTIONS", "connect_properties", "ingest_client"]

#: How long the broker keeps queuing for a worker that is gone (restart, deploy, crash).
SESSION_EXPIRY_S = 3600
#: What the ``fedge-ingest`` ACL lets it read (``cloud.broker.render_acl``).
SUBSCRIPTIONS = (
    topics.all_devices(DeviceLeaf.STATUS),
    topics.all_devices(DeviceLeaf.TELEMETRY),
)


def ingest_client(home: KeyHome) -> mqtt.Client:
    """An MQTT 5 client with the ``fedge-ingest`` TLS identity of ``home`` (no callbacks).

    Raises:
        ConfigError: the ingest certificate is missing or unreadable.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=INGEST_USER,  # the broker forces it to the certificate's CN anyway
        protocol=mqtt.MQTTv5,
        manual_ack=True,  # PUBACK only after the commit (see cloud.ingest.worker)
    )
    cert, key = home.ingest_dir / "broker.crt", home.ingest_dir / "broker.key"
    try:
        client.tls_set(
            ca_certs=str(home.tls_dir / "ca.crt"),
            certfile=str(cert),
            keyfile=str(key),
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"ingest broker credentials unusable ({exc}); regenerate the broker config "
            "(`fedge broker config` issues the fedge-ingest certificate)"
        ) from exc
    client.username_pw_set(INGEST_USER)  # informational: the certificate is the identity
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect_properties(session_expiry_s: int, batch_max: int) -> Properties:
    """The CONNECT properties: the session expiry, and room for a batch in flight."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    # Unacknowledged messages in flight: the broker's default (20) would stall batching.
    props.ReceiveMaximum = min(65535, max(2 * batch_max, 20))
    return props
