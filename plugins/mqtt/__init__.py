"""``mqtt``: northbound MQTT connector (values, events, commands, BEMCom contract).

Reads the connector's outbox cursor and publishes to a broker with paho-mqtt's
protocol engine driven by trio (no paho thread). See ``README.md`` in this
package for every option, topics, payloads and the BEMCom mapping.
"""

from __future__ import annotations

from gatewayd.plugin import hookimpl

try:
    import paho.mqtt  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("the mqtt connector needs paho-mqtt: pip install 'gatewayd[mqtt]'") from e

from .connector import SETTINGS_SCHEMA, MqttConnector

__all__ = ["MqttConnector", "SETTINGS_SCHEMA"]


@hookimpl
def gatewayd_register(registry):
    registry.add_connector("mqtt", MqttConnector)
