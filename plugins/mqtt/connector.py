"""The ``mqtt`` connector: outbox cursor -> MQTT broker, and commands back.

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

import collections
import json
import logging
import os
import random
import ssl
import time
from typing import Any

import trio

from gatewayd.plugin import (Bool, Connector, Duration, Enum, Int, Key, List, PointError, Schema, SecretStr, Str,
                             Table, WriteError)

from .session import ConnectFailed, ConnectionLost, MqttError, Session, SessionOptions, port_answers
from .topics import Filters, Template, check_template, dumps, rfc3339, value_body

__all__ = ["MqttConnector", "SETTINGS_SCHEMA"]

EVENT_DEFAULT = ["value", "status", "device_*", "alarm*"]

#: while the broker's port does not answer, it is tried this often (a TCP connect) during the backoff delay
PORT_PROBE_INTERVAL = 1.0

_loads = json.JSONDecoder().decode


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


class _Chunk:
    __slots__ = ("last", "n", "outstanding", "qos0_pending", "done")

    def __init__(self, last: int, n: int) -> None:
        self.last = last
        self.n = n
        self.outstanding = 0
        self.qos0_pending = False
        self.done = False


def _leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def _request_id(payload: bytes) -> dict:
    """``{"id": ...}`` of a command payload when it has one (best effort, for refusals before parsing)."""
    try:
        req = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return {"id": req["id"]} if isinstance(req, dict) and "id" in req else {}


def _bemcom_key(point_id: str) -> str:
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


class MqttConnector(Connector):
    """Northbound MQTT (see README.md in this package for every option)."""

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
        self.cmd = s["commands"]
        self.cmd_topic = Template(self.cmd["topic"], **fixed)
        self.cmd_response = Template(self.cmd["response_topic"], **fixed)
        self.cmd_allow = Filters(["*"], ["*"], self.cmd["allow"] or ["\x00never"], [], [])
        self.bem = s["bemcom"]
        self.bem_name = self.bem["name"] or ctx.id
        self.client_id = Template(s["client_id"], **fixed).render()
        self.window = s["inflight_window"]
        # delivery state
        self.cursor: Any = None
        self._done = 0          # every entry <= _done is acknowledged upstream (or filtered out)
        self._acked = 0         # ... and persisted in the outbox
        self._chunks: collections.deque[_Chunk] = collections.deque()
        self._mids: dict[int, _Chunk] = {}
        self._inflight = 0
        self._room = trio.Event()
        self._ack_wake = trio.Event()
        self._progress = trio.Event()  # set whenever _done advances (drain waits on it)
        self._draining = False
        self._vtopics: dict[str, str] = {}
        self._vinfo: dict[str, tuple] = {}  # point -> (accepted, device, driver, unit): the value fast path
        self._session: Session | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._cmd_send = self._cmd_recv = None
        # BEMCom state
        self._bem_map: dict | None = None
        self._bem_map_event = trio.Event()
        self._bem_actuators: set[str] = set()
        self._bem_available: tuple | None = None  # the set of datapoints last published
        self._bem_log: _LogForward | None = None
        # status
        self.state = "starting"
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.reconnects = 0
        self.published = 0
        self.filtered = 0
        self.commands_ok = 0
        self.commands_rejected = 0

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        d = {"connection": self.state, "broker": f"{self.s['host']}:{self.port}", "protocol": self.s["protocol"],
             "tls": self.tls is not None, "client_id": self.client_id,
             "mode": "bemcom" if self.bem["enabled"] else ("batch" if self.s["batch"] else "per-point"),
             "qos": self.qos, "connected_since": self.connected_since, "reconnects": self.reconnects,
             "inflight": self._inflight, "published": self.published, "filtered": self.filtered,
             "position": self._done, "persisted": self._acked,
             "commands": {"enabled": self.cmd["enabled"], "ok": self.commands_ok,
                          "rejected": self.commands_rejected}}
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
            will=will, max_inflight=self.window)

    # ------------------------------------------------------------------ main
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.cursor = self.ctx.cursor
        self._done = self._acked = self.cursor.position()
        if self.bem["enabled"]:
            m = self.ctx.kv_get("bemcom_map")
            if isinstance(m, dict):
                self._bem_map = m
                self._bem_map_event.set()
            if self.bem["logs"] != "off":
                self._bem_log = _LogForward(getattr(logging, self.bem["logs"].upper()))
                self.log.logger.addHandler(self._bem_log)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._ack_loop)
                task_status.started()
                await self._connection_loop()
        finally:
            if self._bem_log is not None:
                self.log.logger.removeHandler(self._bem_log)
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._persist()
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
                                  on_publish=self._on_publish if self.qos else None, log=self.log)
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
                self._reset_inflight()
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
        s = self.s
        if s["lwt"]:
            session.publish(self.t["gateway"].render(), self._status_payload("online"), 1, True)
        async with trio.open_nursery() as n:
            if self.cmd["enabled"] and not self.bem["enabled"]:
                self._cmd_send, self._cmd_recv = trio.open_memory_channel(self.cmd["queue"])
                session.subscribe([(self.cmd_topic.subscription(("device", "point")), self.cmd["qos"])],
                                  retain_as_published=True)
                n.start_soon(self._command_worker, session, self._cmd_recv)
            if self.bem["enabled"]:
                if self.cmd["enabled"]:
                    self._cmd_send, self._cmd_recv = trio.open_memory_channel(self.cmd["queue"])
                    n.start_soon(self._command_worker, session, self._cmd_recv)
                self._bem_actuators = set()
                self._bem_available = None  # once per connection: the broker may have lost its retained copy
                session.subscribe([(f"{self.bem_name}/datapoint_map", 1)])
                if self._bem_map is not None:
                    self._bem_apply_map(self._bem_map, session)
                n.start_soon(self._bem_heartbeat, session)
                if self._bem_log is not None:
                    n.start_soon(self._bem_logs, session)
                if self._bem_map is None and self.bem["map_wait"] > 0:
                    with trio.move_on_after(self.bem["map_wait"]):
                        await self._bem_map_event.wait()
            session.kick()
            await self._publisher(session)

    # ------------------------------------------------------------------ delivery
    def _reset_inflight(self) -> None:
        self._chunks.clear()
        self._mids.clear()
        self._inflight = 0
        self._room.set()

    def _on_publish(self, mid: int) -> None:
        chunk = self._mids.pop(mid, None)
        if chunk is None:
            return  # a command response, the status message ...
        chunk.outstanding -= 1
        if chunk.outstanding == 0 and not chunk.qos0_pending:
            self._complete(chunk)

    def _qos0_written(self, chunk: _Chunk) -> None:
        chunk.qos0_pending = False
        if chunk.outstanding == 0:
            self._complete(chunk)

    def _complete(self, chunk: _Chunk) -> None:
        chunk.done = True
        chunks = self._chunks
        advanced = False
        while chunks and chunks[0].done:
            c = chunks.popleft()
            self._done = c.last
            self._inflight -= c.n
            advanced = True
        if advanced:
            self._ack_wake.set()
            self._room.set()
            self._progress.set()

    async def _publisher(self, session: Session) -> None:
        sent = self._done
        window = self.window
        read_batch = self.s["read_batch"]
        cursor = self.cursor
        while True:
            room = window - self._inflight
            if room <= 0:
                self._room = trio.Event()
                await self._room.wait()
                continue
            entries = cursor.read_after(sent, max_items=min(room, read_batch))
            if not entries:
                await cursor.wait_for_data(sent)
                continue
            chunk = _Chunk(entries[-1].seq, len(entries))
            self._chunks.append(chunk)
            self._inflight += chunk.n
            sent = chunk.last
            mids = self._mids
            qos0 = False
            messages = self._encode(entries)
            for topic, payload, qos, retain in messages:
                mid = session.publish(topic, payload, qos, retain)
                if qos:
                    chunk.outstanding += 1
                    mids[mid] = chunk
                else:
                    qos0 = True
            self.published += len(messages)
            if qos0:
                chunk.qos0_pending = True
                session.when_drained(lambda c=chunk: self._qos0_written(c))
            elif chunk.outstanding == 0:
                self._complete(chunk)
            session.kick()
            await trio.lowlevel.checkpoint()

    async def drain(self) -> None:
        """Shutdown grace: deliver the outbox up to its head, persist the position, return.

        From the first call on, commands are answered "stopping" and not
        executed. Publishing goes on in the connection's own tasks (and
        reconnects, if the broker is away); this only waits until everything
        up to the head is acknowledged, or until it is cancelled.
        """
        self._draining = True
        cursor = self.cursor
        if cursor is None:
            return
        while self._done < cursor.outbox.head:
            self._progress = trio.Event()
            if self._done >= cursor.outbox.head:
                break
            await self._progress.wait()
        await self._persist()

    async def _ack_loop(self) -> None:
        interval = self.s["ack_interval"]
        while True:
            await self._ack_wake.wait()
            self._ack_wake = trio.Event()
            await self._persist()
            if interval:
                await trio.sleep(interval)

    async def _persist(self) -> None:
        done = self._done
        if done > self._acked and self.cursor is not None:
            await self.cursor.ack(done)
            self._acked = done

    # ------------------------------------------------------------------ encoding
    def _encode(self, entries) -> list[tuple[str, bytes, int, bool]]:
        decode = self.ctx.decode
        accepts = self.filters.accepts
        out: list[tuple[str, bytes, int, bool]] = []
        qos = self.qos
        seq_on = self.s["include_seq"]
        batch: dict[str, list[dict]] | None = {} if self.s["batch"] else None
        bem = self.bem["enabled"]
        vinfo = self._vinfo
        retain = self.s["retain"]
        for e in entries:
            if e.kind == "value" and not bem:
                # fast path: per-point facts cached, the payload parsed straight into the message body
                info = vinfo.get(e.key)
                if info is not None:
                    if not info[0]:
                        self.filtered += 1
                        continue
                    body = _loads(e.payload.decode())
                    ts = e.ts
                    b = {"value": body[0], "unit": info[3], "status": body[1], "ts": int(round(ts * 1000)),
                         "time": rfc3339(ts)}
                    if len(body) > 2 and body[2]:
                        b["flags"] = body[2]
                    if seq_on:
                        b["seq"] = e.seq
                    if batch is not None:
                        batch.setdefault(info[1], []).append((e.key, info[2], ts, b))
                    else:
                        out.append((self._value_topic(e.key, info[1], info[2]), dumps(b), qos, retain))
                    continue
                d = decode(e)
                vinfo[e.key] = (accepts(d), d.get("device") or e.key.split("/", 1)[0], d.get("driver"), d.get("unit"))
            else:
                d = decode(e)
            if not accepts(d):
                self.filtered += 1
                continue
            kind = d["kind"]
            if bem:
                self._bem_encode(d, out)
                continue
            if kind == "value":
                pid = d["point"]
                device = d.get("device") or pid.split("/", 1)[0]
                if batch is not None:
                    batch.setdefault(device, []).append((pid, d.get("driver"), d["ts"], value_body(d, seq_on)))
                    continue
                out.append((self._value_topic(pid, device, d.get("driver")), dumps(value_body(d, seq_on)), qos, retain))
            else:
                out.append(self._event_message(d, seq_on))
        if batch:
            bmax = self.s["batch_max"]
            for device, ds in batch.items():
                for i in range(0, len(ds), bmax):
                    part = ds[i:i + bmax]
                    values = []
                    for pid, _drv, _ts, b in part:
                        b["point"] = pid.partition("/")[2]
                        values.append(b)
                    ts = max(x[2] for x in part)
                    driver = part[0][1]
                    body = {"device": device, "driver": driver, "ts": int(round(ts * 1000)),
                            "time": rfc3339(ts), "values": values}
                    out.append((self.t["batch"].render(device=device, driver=driver, event="values"),
                                dumps(body), qos, retain))
        return out

    def _value_topic(self, pid: str, device: str, driver: str | None) -> str:
        topic = self._vtopics.get(pid)
        if topic is None:
            topic = self._vtopics[pid] = self.t["value"].render(device=device, point=pid.partition("/")[2],
                                                                driver=driver, event="value")
        return topic

    async def reloaded(self) -> None:
        """A reload may change points (units, tags, devices): drop the per-point caches."""
        self._vinfo.clear()
        self._vtopics.clear()

    def _event_message(self, d: dict, seq_on: bool) -> tuple[str, bytes, int, bool]:
        kind = d["kind"]
        ts = d.get("ts") or time.time()
        body = {k: v for k, v in d.items() if k not in ("kind", "seq", "ts", "tags")}
        body["event"] = kind
        body["ts"] = int(round(ts * 1000))
        body["time"] = rfc3339(ts)
        if seq_on:
            body["seq"] = d.get("seq")
        point = d.get("point") or ""
        dev = d.get("device") or (point.split("/", 1)[0] if point else None)
        name = point.partition("/")[2] if point else None
        retain = False
        if kind == "status":
            body["status"] = d.get("new")
            t = self.t["status"]
        elif kind in ("device_status", "device_down", "device_recovered"):
            if kind == "device_down":
                body["status"] = "down"
            elif kind == "device_recovered":
                body["status"] = "ok"
            t = self.t["device"]
            retain = self.s["retain_status"]
        elif kind.startswith("alarm"):
            t = self.t["alarm"]
        elif kind == "write":
            t = self.t["write"]
        else:
            t = self.t["event"]
        topic = t.render(device=dev, point=name, driver=d.get("driver"),
                         severity=d.get("severity") or d.get("priority") or "unknown",
                         event=d.get("name") if kind == "driver_event" else kind)
        return topic, dumps(body), self.qos, retain

    # ------------------------------------------------------------------ commands
    def _on_message(self, msg) -> None:
        """paho callback (trio thread): route a received message; never blocks."""
        topic = msg.topic
        session = self._session
        if self.bem["enabled"]:
            if topic == f"{self.bem_name}/datapoint_map":
                self._bem_datapoint_map(msg.payload, session)
                return
            key = (self._bem_map or {}).get("actuator", {}).get(topic)
            if key is None or not msg.payload:
                return
            if not self.cmd["enabled"] or self._cmd_send is None:
                self.log.warning("BEMCom actuator message on %s ignored: commands are disabled", topic)
                return
            pid = self._bem_point_of(key)
            self._enqueue(("bemcom", topic, pid, msg.payload, None, bool(msg.retain)))
            return
        m = self.cmd_topic.match(topic, ("device", "point"))
        if m is None or self._cmd_send is None:
            return
        if not msg.payload:  # clearing a retained command (or an empty message): nothing to do, nothing to say
            return
        props = getattr(msg, "properties", None)
        reply = None
        if props is not None and getattr(props, "ResponseTopic", None):
            reply = (props.ResponseTopic, getattr(props, "CorrelationData", None))
        self._enqueue(("cmd", topic, f"{m['device']}/{m['point']}", msg.payload, reply, bool(msg.retain)))

    def _enqueue(self, item) -> None:
        if self._draining:
            self.commands_rejected += 1
            self._respond(self._session, item, {"point": item[2], **_request_id(item[3]), "ok": False,
                                                "error": "gateway is stopping: command not executed"})
            return
        try:
            self._cmd_send.send_nowait(item)
        except trio.WouldBlock:
            self.commands_rejected += 1
            if item[0] == "cmd":
                self._respond(self._session, item, {"ok": False, "error": "busy: too many commands waiting"})

    def _respond(self, session: Session | None, item, body: dict) -> None:
        kind, _topic, pid, _payload, reply, _retain = item
        if kind != "cmd" or session is None:
            return
        dev, _, name = pid.partition("/")
        props = None
        if reply is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            topic = reply[0]
            if reply[1] is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.CorrelationData = reply[1]
        else:
            topic = self.cmd_response.render(device=dev, point=name)
        try:
            session.publish(topic, dumps(body), self.cmd["qos"], False, props)
            session.kick()
        except MqttError:
            pass

    async def _command_worker(self, session: Session, recv) -> None:
        async with recv:
            async for item in recv:
                if self._draining:
                    body = {"point": item[2], **_request_id(item[3]), "ok": False,
                            "error": "gateway is stopping: command not executed"}
                else:
                    body = await self._execute(item, session)
                if body.get("ok"):
                    self.commands_ok += 1
                else:
                    self.commands_rejected += 1
                    self.log.warning("command on %s rejected: %s", item[1], body.get("error"))
                self._respond(session, item, body)

    async def _execute(self, item, session: Session | None = None) -> dict:
        kind, topic, pid, payload, _reply, retained = item
        base: dict[str, Any] = {"point": pid, **_request_id(payload)}
        if not retained and session is not None and not session.opts.v5:
            # MQTT 3.1.1 brokers clear the retain flag of a message published while we are subscribed:
            # ask the broker whether this very payload is retained on the topic.
            try:
                retained = await session.retained_payload(topic, timeout=self.s["connect_timeout"]) == payload
            except MqttError as e:
                return {**base, "ok": False, "error": f"not executed: could not check that the command is not "
                                                      f"retained ({e})"}
        if retained:
            return {**base, "ok": False, "error": "retained commands are ignored (publish commands with retain=false)"}
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            return {**base, "ok": False, "error": f"payload is not UTF-8 JSON: byte 0x{payload[e.start]:02x} at "
                                                   f"position {e.start} is not UTF-8"}
        try:
            req = json.loads(text)
        except ValueError as e:
            return {**base, "ok": False, "error": f"payload is not JSON: {e}"}
        if not isinstance(req, dict) or "value" not in req:
            return {**base, "ok": False, "error": "payload must be a JSON object with \"value\" "
                                                   "(and optionally \"priority\" 1..16, \"id\")"}
        value = req["value"]
        if kind == "bemcom" and isinstance(value, str):
            try:  # BEMCom sends values as strings
                value = json.loads(value)
            except ValueError:
                pass
        prio = req.get("priority", self.cmd["priority"]) if kind == "cmd" else self.cmd["priority"]
        if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 16:
            return {**base, "ok": False, "error": f"priority must be an integer 1..16, got {prio!r}"}
        if pid is None or not self.cmd_allow.point(pid, pid.split("/", 1)[0], ()):
            return {**base, "ok": False, "error": f"point {pid!r} is not in this connector's command allow-list"}
        try:
            res = await self.ctx.write_point(pid, value, priority=prio)
        except (PointError, WriteError) as e:
            return {**base, "ok": False, "error": str(e)}
        except Exception as e:  # a bug below must not kill the connection
            self.log.error("command on %s failed", topic, exc_info=True)
            return {**base, "ok": False, "error": f"{type(e).__name__}: {e}"}
        out = {**base, "ok": True, "value": value, "priority": prio}
        if isinstance(res, dict):
            for k in ("effective", "active_level", "readback"):
                if k in res:
                    out[k] = res[k]
        return out

    # ------------------------------------------------------------------ BEMCom
    def _bem_points(self) -> dict[str, Any]:
        return self.ctx.gateway.points.points

    def _bem_point_of(self, key: str) -> str | None:
        for pid in self._bem_points():
            if _bemcom_key(pid) == key:
                return pid
        return None

    def _bem_value(self, v: Any) -> Any:
        if not self.bem["value_as_string"]:
            return v
        if isinstance(v, bool):
            return "true" if v else "false"
        return "" if v is None else (json.dumps(v) if not isinstance(v, str) else v)

    def _bem_available_payload(self) -> tuple[tuple, bytes]:
        sensor: dict[str, Any] = {}
        actuator: dict[str, Any] = {}
        for pid, p in sorted(self._bem_points().items()):
            cfg = p.cfg
            if not self.filters.point(pid, cfg.device, cfg.tags):
                continue
            example = self._bem_value(p.value)
            sensor[_bemcom_key(pid)] = example
            if self.cmd["enabled"] and cfg.writable and self.cmd_allow.point(pid, cfg.device, ()):
                actuator[_bemcom_key(pid)] = example
        return (tuple(sensor), tuple(actuator)), dumps({"sensor": sensor, "actuator": actuator})

    def _bem_datapoint_map(self, payload: bytes, session: Session | None) -> None:
        try:
            m = json.loads(payload)
            if not (isinstance(m, dict) and isinstance(m.get("sensor"), dict) and isinstance(m.get("actuator"), dict)):
                raise ValueError("needs the objects \"sensor\" and \"actuator\"")
        except ValueError as e:
            self.log.error("ignored a datapoint_map on %s/datapoint_map: %s", self.bem_name, e)
            return
        self._bem_map = m
        self._bem_map_event.set()
        if session is not None:
            self._bem_apply_map(m, session)
        if self._conn_nursery is not None:
            self._conn_nursery.start_soon(self.ctx.kv_set, "bemcom_map", m)
        self.log.info("datapoint_map: %d sensor, %d actuator datapoint(s)", len(m["sensor"]), len(m["actuator"]))

    def _bem_apply_map(self, m: dict, session: Session) -> None:
        want = {t for t in m["actuator"] if isinstance(t, str) and t and "+" not in t and "#" not in t}
        new = want - self._bem_actuators
        gone = self._bem_actuators - want
        if new:
            session.subscribe([(t, max(1, self.cmd["qos"])) for t in sorted(new)], retain_as_published=True)
        if gone and session.client is not None:
            session.client.unsubscribe(sorted(gone))
        self._bem_actuators = want
        session.kick()

    def _bem_encode(self, d: dict, out: list) -> None:
        if d["kind"] != "value" or self._bem_map is None:
            self.filtered += 1
            return
        topic = self._bem_map["sensor"].get(_bemcom_key(d["point"]))
        if not isinstance(topic, str) or not topic:
            self.filtered += 1
            return
        body = {"value": self._bem_value(d.get("value")), "timestamp": int(round(d["ts"] * 1000))}
        out.append((topic, dumps(body), self.qos, True))

    async def _bem_heartbeat(self, session: Session) -> None:
        interval = self.bem["heartbeat_interval"]
        while True:
            # published when the SET of datapoints changes (BEMCom's contract), not when example values do
            keys, avail = self._bem_available_payload()
            if keys != self._bem_available:
                session.publish(f"{self.bem_name}/available_datapoints", avail, 1, True)
                self._bem_available = keys
            now = int(time.time() * 1000)
            session.publish(f"{self.bem_name}/heartbeat",
                            dumps({"this_heartbeats_timestamp": now,
                                   "next_heartbeats_timestamp": now + int(interval * 1000)}), 0, True)
            session.kick()
            await trio.sleep(interval)

    async def _bem_logs(self, session: Session) -> None:
        h = self._bem_log
        while True:
            await h.wake.wait()
            h.wake = trio.Event()
            while h.records:
                try:
                    session.publish(f"{self.bem_name}/logs", dumps(h.records.popleft()), 0, True)
                except ConnectionLost:
                    return
            session.kick()
