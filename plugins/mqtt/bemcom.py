"""BEMCom's connector message contract.

In BEMCom mode the connector publishes under ``<name>/``: ``heartbeat``,
``available_datapoints`` (when the set of datapoints changes), ``logs``, and
each value on the sensor topic the ``datapoint_map`` assigns to it;
actuator topics of the map carry commands, executed by :class:`.Commands`.
The last map is kept in the connector's learned state so a restart can send
at once.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any

import trio

from .commands import Commands
from .session import ConnectionLost, Session
from .topics import Filters, dumps

__all__ = ["Bemcom", "bemcom_key"]

#: key of the learned state holding the last datapoint_map
MAP_KEY = "bemcom_map"


def bemcom_key(point_id: str) -> str:
    """BEMCom's datapoint key of a gatewayd point id (``/`` is not allowed there)."""
    return point_id.replace("/", "__")


class _LogForward(logging.Handler):
    """Collects this connector's log records for BEMCom's ``<name>/logs`` (bounded)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: collections.deque = collections.deque(maxlen=100)
        self.wake = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append({"timestamp": int(record.created * 1000), "msg": record.getMessage(),
                                 "emitter": record.funcName, "level": record.levelno})
            self.wake.set()
        except Exception:  # pragma: no cover - logging must never raise
            pass


class Bemcom:
    """The BEMCom side of one connector.

    ``config`` is the validated ``bemcom`` table, ``name`` the topic prefix,
    ``ctx`` the connector's context (points, learned state), ``filters`` what
    the connector forwards, ``commands`` its write-back (for actuators),
    ``qos`` the QoS of value messages.
    """

    def __init__(self, config: dict, name: str, ctx: Any, filters: Filters, commands: Commands, qos: int,
                 log: logging.LoggerAdapter) -> None:
        self.cfg = config
        self.name = name
        self.ctx = ctx
        self.filters = filters
        self.commands = commands
        self.qos = qos
        self.log = log
        self.map: dict | None = None
        self._map_event = trio.Event()
        self._actuators: set[str] = set()
        self._available: tuple | None = None  # the set of datapoints last published
        self._log: _LogForward | None = None

    # ------------------------------------------------------------------ lifetime
    def start(self) -> None:
        """Load the learned datapoint_map and start forwarding the log (if ``logs`` is not off)."""
        m = self.ctx.kv_get(MAP_KEY)
        if isinstance(m, dict):
            self.map = m
            self._map_event.set()
        if self.cfg["logs"] != "off":
            self._log = _LogForward(getattr(logging, self.cfg["logs"].upper()))
            self.log.logger.addHandler(self._log)

    def stop(self) -> None:
        """Stop forwarding the log."""
        if self._log is not None:
            self.log.logger.removeHandler(self._log)

    async def connected(self, session: Session, nursery: trio.Nursery) -> None:
        """Set up one connection: subscriptions, heartbeat and log tasks in ``nursery``.

        Returns once a datapoint_map is known or ``map_wait`` has passed.
        """
        self._actuators = set()
        self._available = None  # once per connection: the broker may have lost its retained copy
        session.subscribe([(f"{self.name}/datapoint_map", 1)])
        if self.map is not None:
            self._apply_map(self.map, session)
        nursery.start_soon(self._heartbeat, session)
        if self._log is not None:
            nursery.start_soon(self._logs, session)
        if self.map is None and self.cfg["map_wait"] > 0:
            with trio.move_on_after(self.cfg["map_wait"]):
                await self._map_event.wait()

    # ------------------------------------------------------------------ receiving
    def on_message(self, msg, session: Session | None, nursery: trio.Nursery | None) -> None:
        """A message on a BEMCom topic (paho callback, trio thread); never blocks.

        ``nursery`` (the connection's) stores a new datapoint_map in the learned state.
        """
        topic = msg.topic
        if topic == f"{self.name}/datapoint_map":
            self._datapoint_map(msg.payload, session, nursery)
            return
        key = (self.map or {}).get("actuator", {}).get(topic)
        if key is None or not msg.payload:
            return
        if not self.commands.enabled or self.commands.send is None:
            self.log.warning("BEMCom actuator message on %s ignored: commands are disabled", topic)
            return
        pid = self._point_of(key)
        self.commands.enqueue(("bemcom", topic, pid, msg.payload, None, bool(msg.retain)), session)

    def _points(self) -> dict[str, Any]:
        return self.ctx.gateway.points.points

    def _point_of(self, key: str) -> str | None:
        for pid in self._points():
            if bemcom_key(pid) == key:
                return pid
        return None

    def _datapoint_map(self, payload: bytes, session: Session | None, nursery: trio.Nursery | None) -> None:
        try:
            m = json.loads(payload)
            if not (isinstance(m, dict) and isinstance(m.get("sensor"), dict) and isinstance(m.get("actuator"), dict)):
                raise ValueError("needs the objects \"sensor\" and \"actuator\"")
        except ValueError as e:
            self.log.error("ignored a datapoint_map on %s/datapoint_map: %s", self.name, e)
            return
        self.map = m
        self._map_event.set()
        if session is not None:
            self._apply_map(m, session)
        if nursery is not None:
            nursery.start_soon(self.ctx.kv_set, MAP_KEY, m)
        self.log.info("datapoint_map: %d sensor, %d actuator datapoint(s)", len(m["sensor"]), len(m["actuator"]))

    def _apply_map(self, m: dict, session: Session) -> None:
        want = {t for t in m["actuator"] if isinstance(t, str) and t and "+" not in t and "#" not in t}
        new = want - self._actuators
        gone = self._actuators - want
        if new:
            session.subscribe([(t, max(1, self.commands.cfg["qos"])) for t in sorted(new)], retain_as_published=True)
        if gone and session.client is not None:
            session.client.unsubscribe(sorted(gone))
        self._actuators = want
        session.kick()

    # ------------------------------------------------------------------ sending
    def value(self, v: Any) -> Any:
        """A value as BEMCom expects it (a JSON string when ``value_as_string``)."""
        if not self.cfg["value_as_string"]:
            return v
        if isinstance(v, bool):
            return "true" if v else "false"
        return "" if v is None else (json.dumps(v) if not isinstance(v, str) else v)

    def encode(self, d: dict, out: list) -> bool:
        """Append the message of event ``d`` to ``out``; ``False`` when it is not sent (not a mapped value)."""
        if d["kind"] != "value" or self.map is None:
            return False
        topic = self.map["sensor"].get(bemcom_key(d["point"]))
        if not isinstance(topic, str) or not topic:
            return False
        body = {"value": self.value(d.get("value")), "timestamp": int(round(d["ts"] * 1000))}
        out.append((topic, dumps(body), self.qos, True))
        return True

    def _available_payload(self) -> tuple[tuple, bytes]:
        sensor: dict[str, Any] = {}
        actuator: dict[str, Any] = {}
        commands = self.commands
        for pid, p in sorted(self._points().items()):
            cfg = p.cfg
            if not self.filters.point(pid, cfg.device, cfg.tags):
                continue
            example = self.value(p.value)
            sensor[bemcom_key(pid)] = example
            if commands.enabled and cfg.writable and commands.allowed(pid, cfg.device):
                actuator[bemcom_key(pid)] = example
        return (tuple(sensor), tuple(actuator)), dumps({"sensor": sensor, "actuator": actuator})

    async def _heartbeat(self, session: Session) -> None:
        interval = self.cfg["heartbeat_interval"]
        while True:
            # published when the SET of datapoints changes (BEMCom's contract), not when example values do
            keys, avail = self._available_payload()
            if keys != self._available:
                session.publish(f"{self.name}/available_datapoints", avail, 1, True)
                self._available = keys
            now = int(time.time() * 1000)
            session.publish(f"{self.name}/heartbeat",
                            dumps({"this_heartbeats_timestamp": now,
                                   "next_heartbeats_timestamp": now + int(interval * 1000)}), 0, True)
            session.kick()
            await trio.sleep(interval)

    async def _logs(self, session: Session) -> None:
        h = self._log
        while True:
            await h.wake.wait()
            h.wake = trio.Event()
            while h.records:
                try:
                    session.publish(f"{self.name}/logs", dumps(h.records.popleft()), 0, True)
                except ConnectionLost:
                    return
            session.kick()
