"""The ``mqtt`` connector: outbox cursor -> MQTT broker, and commands back.

This module is the facade: the Connector subclass, its settings schema and the
connection loop. It composes three parts, each with its own module:
:class:`.publisher.Publisher` (outbox reading, chunks, acks, encoding),
:class:`.commands.Commands` (command subscription, retained checks, execution,
responses) and :class:`.bemcom.Bemcom` (BEMCom's message contract).

Delivery.  The connector reads its outbox cursor in *chunks* (contiguous seq
ranges, at most ``inflight_window`` entries not yet acknowledged upstream),
turns each chunk into messages, and publishes them on one connection. A chunk
is *done* when the broker acknowledged every message of it (PUBACK for QoS 1,
PUBCOMP for QoS 2; QoS 0 once paho wrote it to the socket); entries the
filters skip are done at once. Done chunks advance the in-memory position in
seq order, and a small task persists it with ``cursor.ack()`` (coalesced every
``ack_interval``). After a reconnect, publishing resumes after the last done
chunk; after a restart, after the last persisted ack. So delivery is
at-least-once and duplicates are bounded by what was in flight plus what was
done but not yet persisted (``inflight_window`` + ``ack_interval`` of traffic).

Each connection gets a fresh paho client (:mod:`.session`): paho's own resend
of in-flight messages is not used, the outbox is the one source of truth.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import time
from typing import Any

import trio

from gatewayd.plugin import Bool, Connector, Duration, Enum, Int, Key, List, Schema, SecretStr, Str, Table

from .bemcom import Bemcom
from .commands import Commands
from .publisher import Publisher
from .session import ConnectFailed, MqttError, Session, SessionOptions, port_answers
from .topics import Filters, Template, check_template, dumps, rfc3339

__all__ = ["MqttConnector", "SETTINGS_SCHEMA"]

EVENT_DEFAULT = ["value", "status", "device_*", "alarm*"]

#: while the broker's port does not answer, it is tried this often (a TCP connect) during the backoff delay
PORT_PROBE_INTERVAL = 1.0

def _tmpl(whole: tuple[str, ...] = ()):
    return Str(check=lambda v: check_template(v, whole_level=whole))


TOPICS_SCHEMA = Schema({
    "value": Key(_tmpl(), "gatewayd/{gateway}/{device}/{point}/value", "a point's value (per-point mode)"),
    "batch": Key(_tmpl(), "gatewayd/{gateway}/{device}/values", "all values of one device in one message (batch mode)"),
    "status": Key(_tmpl(), "gatewayd/{gateway}/{device}/{point}/status", "a point's status change"),
    "device": Key(_tmpl(), "gatewayd/{gateway}/status/{device}", "device status / down / recovered (retained)"),
    "alarm": Key(_tmpl(), "gatewayd/{gateway}/alarms/{severity}/{point}", "alarm events"),
    "write": Key(_tmpl(), "gatewayd/{gateway}/{device}/{point}/write", "results of points.write (event kind write)"),
    "event": Key(_tmpl(), "gatewayd/{gateway}/events/{driver}/{event}", "driver events and any other kind"),
    "gateway": Key(_tmpl(), "gatewayd/{gateway}/status", "retained online/offline of this connector (Last Will)"),
})

TLS_SCHEMA = Schema({
    "enabled": Key(Bool(), True),
    "ca": Key(Str(), None, "CA bundle (PEM) that signed the broker's certificate; default: system CAs"),
    "cert": Key(Str(), None, "client certificate (PEM) for brokers that require one"),
    "key": Key(Str(), None, "private key of the client certificate (PEM); default: inside cert"),
    "key_password": Key(SecretStr(), None, "password of an encrypted key: { env = ... } or { file = ... }"),
    "verify_hostname": Key(Bool(), True, "check the broker's certificate names host (or server_name)"),
    "server_name": Key(Str(), None, "name expected in the broker's certificate (SNI), default: host"),
})

COMMANDS_SCHEMA = Schema({
    "enabled": Key(Bool(), False, "accept writes over MQTT (off by default)"),
    "allow": Key(List(Str()), list, "point-id globs that may be written, e.g. [\"ahu-*/supply_temp_sp\"]"),
    "topic": Key(_tmpl(whole=("device", "point")), "gatewayd/{gateway}/{device}/{point}/set",
                 "command topic; {device} and {point} become + in the subscription"),
    "response_topic": Key(_tmpl(), "gatewayd/{gateway}/{device}/{point}/set/result", "where results go"),
    "qos": Key(Int(min=0, max=2), 1),
    "priority": Key(Int(min=1, max=16), 16, "priority when the command gives none"),
    "queue": Key(Int(min=1, max=10_000), 100, "commands waiting at most; more are answered \"busy\""),
})

BEMCOM_SCHEMA = Schema({
    "enabled": Key(Bool(), False, "speak BEMCom's connector message contract instead of gatewayd topics"),
    "name": Key(Str(pattern=r"[^+#/\x00]+"), None, "BEMCom connector name (topic prefix); default: connector id"),
    "heartbeat_interval": Key(Duration(min=1), 30.0),
    "value_as_string": Key(Bool(), True, "values as JSON strings, as BEMCom's reference connectors send them"),
    "logs": Key(Enum("debug", "info", "warning", "error", "off"), "info", "forward this connector's log to <name>/logs"),
    "map_wait": Key(Duration(min=0), 5.0, "after connecting, wait this long for a datapoint_map before sending"),
})


def _sub_defaults(schema: Schema) -> dict:
    return {k: (key.default() if callable(key.default) else key.default) for k, key in schema.keys.items()}


SETTINGS_SCHEMA = Schema({
    "host": Key(Str(), "127.0.0.1", "broker host name or address"),
    "port": Key(Int(min=1, max=65535), None, "default 1883, or 8883 with tls"),
    "protocol": Key(Enum("3.1.1", "5"), "3.1.1", "MQTT protocol version"),
    "client_id": Key(Str(check=lambda v: check_template(v, allowed=("gateway", "connector"))),
                     "gatewayd-{gateway}-{connector}", "client identifier; {gateway} and {connector} are filled in"),
    "username": Key(SecretStr(nonempty=False), None, "user name (plain or { env = ... } / { file = ... })"),
    "password": Key(SecretStr(nonempty=False), None, "password: { env = \"NAME\" } or { file = \"path\" }"),
    "keepalive": Key(Duration(min=1, max=65535), 60.0),
    "connect_timeout": Key(Duration(min=0.1, max=300), 10.0),
    "persistent_session": Key(Bool(), False, "keep the broker session (queued commands) across reconnects"),
    "session_expiry": Key(Duration(min=0), 3600.0, "MQTT 5: how long the broker keeps a persistent session"),
    "tls": Key(Table(TLS_SCHEMA), None, "TLS settings; absent: plain TCP"),
    "qos": Key(Int(min=0, max=2), 1, "QoS of data messages"),
    "retain": Key(Bool(), False, "retain value messages"),
    "retain_status": Key(Bool(), True, "retain device status messages"),
    "lwt": Key(Bool(), True, "retained online/offline status with Last Will on topics.gateway"),
    "topics": Key(Table(TOPICS_SCHEMA), lambda: _sub_defaults(TOPICS_SCHEMA)),
    "batch": Key(Bool(), False, "one message per device and read cycle carrying all its changed values"),
    "batch_max": Key(Int(min=1, max=100_000), 1000, "values per batch message at most"),
    "include_seq": Key(Bool(), True, "add the outbox seq to payloads (lets consumers drop duplicates)"),
    "events": Key(List(Str()), lambda: list(EVENT_DEFAULT), "event kinds to forward (globs)"),
    "devices": Key(List(Str()), lambda: ["*"], "device-id globs"),
    "points": Key(List(Str()), lambda: ["*"], "point-id globs (\"device/point\")"),
    "exclude_points": Key(List(Str()), list, "point-id globs to leave out"),
    "tags": Key(List(Str()), list, "forward only points carrying one of these tags (empty: all)"),
    "commands": Key(Table(COMMANDS_SCHEMA), lambda: _sub_defaults(COMMANDS_SCHEMA)),
    "bemcom": Key(Table(BEMCOM_SCHEMA), lambda: _sub_defaults(BEMCOM_SCHEMA)),
    "inflight_window": Key(Int(min=1, max=60_000), 1000, "outbox entries sent and not yet acknowledged, at most"),
    "read_batch": Key(Int(min=1, max=100_000), 2000, "outbox entries read per chunk, at most"),
    "ack_interval": Key(Duration(min=0, max=60), 0.2, "how often the delivered position is persisted"),
    "reconnect_min": Key(Duration(min=0.05), 1.0, "first reconnect delay"),
    "reconnect_max": Key(Duration(min=0.05), 10.0, "reconnect delay cap (doubling with jitter); while the "
                         "broker's port does not answer it is probed every second and reconnected at once"),
})


class MqttConnector(Connector):
    """Northbound MQTT (see README.md in this package for every option).

    A facade: it owns the connection loop and the connector's status, and
    hands each connection to its parts — ``publisher`` (outbox delivery),
    ``commands`` (write-back) and ``bemcom`` (BEMCom's contract, when enabled).
    """

    settings_schema = SETTINGS_SCHEMA

    @classmethod
    def validate_config(cls, config):
        s = config.settings  # keys that failed validation are missing here
        c = s.get("commands") or {}
        if c.get("enabled") and not c.get("allow"):
            yield ("commands", "allow"), "commands.enabled needs an allow-list of point globs (commands.allow)"
        tls = s.get("tls")
        if tls:
            for k in ("ca", "cert", "key"):
                f = tls.get(k)
                if f and not os.access(f, os.R_OK):
                    yield ("tls", k), f"cannot read tls.{k} file {f!r}"
            if tls.get("key") and not tls.get("cert"):
                yield ("tls", "key"), "tls.key needs tls.cert"
        if s.get("password") is not None and s.get("username") is None:
            yield ("password",), "password needs username"
        if s.get("reconnect_max", 10) < s.get("reconnect_min", 1):
            yield ("reconnect_max",), "reconnect_max must be >= reconnect_min"
        if (s.get("bemcom") or {}).get("enabled") and s.get("batch"):
            yield ("batch",), "batch mode does not apply to the BEMCom contract (one topic per datapoint)"

    def __init__(self, ctx) -> None:
        super().__init__(ctx)
        s = self.s = self.config.settings
        self.gateway_id = ctx.gateway_id
        fixed = {"gateway": self.gateway_id, "connector": ctx.id}
        self.tls = s["tls"] if s["tls"] and s["tls"]["enabled"] else None
        self.port = s["port"] or (8883 if self.tls else 1883)
        self.qos = s["qos"]
        self.t = {k: Template(v, **fixed) for k, v in s["topics"].items()}
        self.filters = Filters(s["events"], s["devices"], s["points"], s["exclude_points"], s["tags"])
        self.client_id = Template(s["client_id"], **fixed).render()
        self.commands = Commands(s["commands"], fixed, self._write_point, self.log, s["connect_timeout"])
        self.bemcom: Bemcom | None = None
        if s["bemcom"]["enabled"]:
            self.bemcom = Bemcom(s["bemcom"], s["bemcom"]["name"] or ctx.id, ctx, self.filters, self.commands,
                                 self.qos, self.log)
        self.publisher = Publisher(s, self.t, self.filters, ctx.decode,
                                   self.bemcom.encode if self.bemcom is not None else None)
        self._session: Session | None = None
        self._conn_nursery: trio.Nursery | None = None
        # status
        self.state = "starting"
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.reconnects = 0

    async def _write_point(self, pid: str, value: Any, *, priority: int) -> Any:
        return await self.ctx.write_point(pid, value, priority=priority)

    @property
    def cursor(self) -> Any:
        """The outbox cursor being delivered (``None`` before :meth:`run`)."""
        return self.publisher.cursor

    # the command queue of the current connection and the last BEMCom datapoint_map (tests wait on them)
    @property
    def _cmd_send(self) -> trio.MemorySendChannel | None:
        return self.commands.send

    @property
    def _bem_map(self) -> dict | None:
        return self.bemcom.map if self.bemcom is not None else None

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        p = self.publisher
        d = {"connection": self.state, "broker": f"{self.s['host']}:{self.port}", "protocol": self.s["protocol"],
             "tls": self.tls is not None, "client_id": self.client_id,
             "mode": "bemcom" if self.bemcom is not None else ("batch" if self.s["batch"] else "per-point"),
             "qos": self.qos, "connected_since": self.connected_since, "reconnects": self.reconnects,
             "inflight": p.inflight, "published": p.published, "filtered": p.filtered,
             "position": p.done, "persisted": p.acked,
             "commands": {"enabled": self.commands.enabled, "ok": self.commands.ok,
                          "rejected": self.commands.rejected}}
        if self.last_error is not None:
            d["last_error"] = self.last_error
        return d

    # ------------------------------------------------------------------ options
    def _ssl_context(self) -> ssl.SSLContext | None:
        t = self.tls
        if t is None:
            return None
        try:
            ctx = ssl.create_default_context(cafile=t["ca"]) if t["ca"] else ssl.create_default_context()
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            if t["cert"]:
                ctx.load_cert_chain(t["cert"], t["key"], t["key_password"])
        except (OSError, ssl.SSLError) as e:
            raise MqttError(f"cannot load TLS files: {e}") from None
        if not t["verify_hostname"]:
            ctx.check_hostname = False
        return ctx

    def _status_payload(self, state: str, **extra) -> bytes:
        now = time.time()
        return dumps({"state": state, "connector": self.ctx.id, "ts": int(now * 1000), "time": rfc3339(now),
                      **extra})

    def _session_options(self) -> SessionOptions:
        s = self.s
        will = None
        if s["lwt"]:
            will = (self.t["gateway"].render(), self._status_payload("offline", reason="connection lost"), 1, True)
        return SessionOptions(
            host=s["host"], port=self.port, client_id=self.client_id, protocol=s["protocol"],
            keepalive=int(s["keepalive"]), connect_timeout=s["connect_timeout"], clean=not s["persistent_session"],
            session_expiry=int(s["session_expiry"]), username=s["username"], password=s["password"],
            ssl_context=self._ssl_context(), server_hostname=self.tls["server_name"] if self.tls else None,
            will=will, max_inflight=self.publisher.window)

    # ------------------------------------------------------------------ main
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.publisher.start(self.ctx.cursor)
        if self.bemcom is not None:
            self.bemcom.start()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self.publisher.ack_loop)
                task_status.started()
                await self._connection_loop()
        finally:
            if self.bemcom is not None:
                self.bemcom.stop()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.publisher.persist()
            self.state = "stopped"

    async def _connection_loop(self) -> None:
        s = self.s
        delay = s["reconnect_min"]
        failures = 0
        while True:
            self.state = "connecting"
            error: str | None = None
            port_down = False
            try:
                session = Session(self._session_options(), on_message=self._on_message,
                                  on_publish=self.publisher.on_publish if self.qos else None, log=self.log)
                if s["lwt"]:
                    session.farewell = (self.t["gateway"].render(),
                                        self._status_payload("offline", reason="stopped"), 1, True)
                async with trio.open_nursery() as n:
                    await n.start(session.run)
                    self._conn_nursery = n
                    self._session = session
                    self.state = "connected"
                    self.connected_since = time.time()
                    if failures or self.reconnects:
                        self.log.warning("connected to %s:%d again", s["host"], self.port)
                    else:
                        self.log.info("connected to %s:%d (%s, client id %s)", s["host"], self.port,
                                      "MQTT 5" if s["protocol"] == "5" else "MQTT 3.1.1", self.client_id)
                    failures = 0
                    delay = s["reconnect_min"]
                    self.last_error = None
                    n.start_soon(self._connected, session)
                    await session.lost.wait()
                    n.cancel_scope.cancel()
                error = session.error or "connection closed"
                self.reconnects += 1
            except* MqttError as eg:
                leaf = _leaf(eg)
                error = str(leaf)
                port_down = isinstance(leaf, ConnectFailed)
            finally:
                self._session = None
                self._conn_nursery = None
                self.connected_since = None
                self.publisher.reset_inflight()
            failures += 1
            self.last_error = error
            self.state = "backoff"
            lvl = logging.WARNING if failures <= 1 or failures % 30 == 0 else logging.DEBUG
            self.log.log(lvl, "%s; retrying in %.1fs%s", error, delay,
                         " or as soon as the port answers" if port_down and delay > PORT_PROBE_INTERVAL else "")
            await self._backoff(delay * random.uniform(0.8, 1.2), port_down)
            delay = min(delay * 2, s["reconnect_max"])

    async def _backoff(self, delay: float, probe: bool) -> None:
        """Sleep ``delay``; when the port did not answer, end early once a TCP connect to it succeeds.

        A broker that is down costs one TCP connect attempt per second; a broker
        that answers but refuses (credentials, TLS) waits the full doubling delay.
        """
        with trio.move_on_after(delay):
            if not probe or delay <= PORT_PROBE_INTERVAL:
                await trio.sleep_forever()
            while True:
                await trio.sleep(PORT_PROBE_INTERVAL)
                if await port_answers(self.s["host"], self.port, timeout=PORT_PROBE_INTERVAL):
                    self.log.debug("%s:%d answers again: reconnecting now", self.s["host"], self.port)
                    return

    async def _connected(self, session: Session) -> None:
        """Everything that lives as long as one connection."""
        if self.s["lwt"]:
            session.publish(self.t["gateway"].render(), self._status_payload("online"), 1, True)
        commands = self.commands
        async with trio.open_nursery() as n:
            if commands.enabled:
                recv = commands.open()
                if self.bemcom is None:  # BEMCom commands come on the map's actuator topics instead
                    commands.subscribe(session)
                n.start_soon(commands.worker, session, recv)
            if self.bemcom is not None:
                await self.bemcom.connected(session, n)
            session.kick()
            await self.publisher.run(session)

    def _on_message(self, msg) -> None:
        """paho callback (trio thread): route a received message; never blocks."""
        if self.bemcom is not None:
            self.bemcom.on_message(msg, self._session, self._conn_nursery)
        else:
            self.commands.on_message(msg, self._session)

    async def reloaded(self) -> None:
        """A reload may change points (units, tags, devices): drop the per-point caches."""
        self.publisher.forget_points()

    async def drain(self) -> None:
        """Shutdown grace: deliver the outbox up to its head, persist the position, return.

        From the first call on, commands are answered "stopping" and not
        executed. Publishing goes on in the connection's own tasks (and
        reconnects, if the broker is away); this only waits until everything
        up to the head is acknowledged, or until it is cancelled.
        """
        self.commands.draining = True
        if self.publisher.cursor is None:
            return
        await self.publisher.wait_delivered()
        await self.publisher.persist()


def _leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e
