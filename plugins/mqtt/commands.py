"""Write-back over MQTT: command subscription, retained checks, execution, responses.

A :class:`Commands` object receives command messages from the paho callback
(never blocking: a bounded queue, "busy" beyond it), executes them one at a
time in :meth:`Commands.worker` through the gateway's write path, and answers
on the response topic (or the MQTT 5 response topic of the request).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable

import trio

from gatewayd.plugin import PointError, WriteError

from .session import MqttError, Session
from .topics import Filters, Template, dumps

__all__ = ["Commands", "request_id"]

#: a queued command: (kind "cmd" | "bemcom", topic, point id, payload, (response topic, correlation) | None, retained)
Item = tuple[str, str, "str | None", bytes, "tuple | None", bool]

STOPPING = "gateway is stopping: command not executed"


def request_id(payload: bytes) -> dict:
    """``{"id": ...}`` of a command payload when it has one (best effort, for refusals before parsing)."""
    try:
        req = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return {"id": req["id"]} if isinstance(req, dict) and "id" in req else {}


class Commands:
    """Commands of one connector.

    ``config`` is the validated ``commands`` table, ``fixed`` the template
    fields every topic shares (gateway, connector), ``write_point`` the
    gateway's write (``ctx.write_point``), ``check_timeout`` how long to wait
    for the broker when checking whether a command is retained.
    """

    def __init__(self, config: dict, fixed: dict, write_point: Callable[..., Awaitable[Any]],
                 log: logging.LoggerAdapter | logging.Logger, check_timeout: float) -> None:
        self.cfg = config
        self.enabled: bool = config["enabled"]
        self.topic = Template(config["topic"], **fixed)
        self.response = Template(config["response_topic"], **fixed)
        self.allow = Filters(["*"], ["*"], config["allow"] or ["\x00never"], [], [])
        self.write_point = write_point
        self.log = log
        self.check_timeout = check_timeout
        self.send: trio.MemorySendChannel | None = None
        self.draining = False
        self.ok = 0
        self.rejected = 0

    def allowed(self, pid: str, device: str) -> bool:
        """Whether point ``pid`` of ``device`` is in the allow-list."""
        return self.allow.point(pid, device, ())

    def open(self) -> trio.MemoryReceiveChannel:
        """A fresh queue for one connection; returns its receiving end for :meth:`worker`."""
        self.send, recv = trio.open_memory_channel(self.cfg["queue"])
        return recv

    def subscribe(self, session: Session) -> None:
        """Subscribe to the command topic (``{device}``/``{point}`` as ``+``)."""
        session.subscribe([(self.topic.subscription(("device", "point")), self.cfg["qos"])],
                          retain_as_published=True)

    # ------------------------------------------------------------------ receiving
    def on_message(self, msg, session: Session | None) -> None:
        """A message on the command topic (paho callback, trio thread): queue it; never blocks."""
        topic = msg.topic
        m = self.topic.match(topic, ("device", "point"))
        if m is None or self.send is None:
            return
        if not msg.payload:  # clearing a retained command (or an empty message): nothing to do, nothing to say
            return
        props = getattr(msg, "properties", None)
        reply = None
        if props is not None and getattr(props, "ResponseTopic", None):
            reply = (props.ResponseTopic, getattr(props, "CorrelationData", None))
        self.enqueue(("cmd", topic, f"{m['device']}/{m['point']}", msg.payload, reply, bool(msg.retain)), session)

    def enqueue(self, item: Item, session: Session | None) -> None:
        """Queue ``item`` for the worker; refuse it at once while stopping or when the queue is full."""
        if self.draining:
            self.rejected += 1
            self.respond(session, item, {"point": item[2], **request_id(item[3]), "ok": False, "error": STOPPING})
            return
        try:
            self.send.send_nowait(item)
        except trio.WouldBlock:
            self.rejected += 1
            if item[0] == "cmd":
                self.respond(session, item, {"ok": False, "error": "busy: too many commands waiting"})

    def respond(self, session: Session | None, item: Item, body: dict) -> None:
        """Publish the result ``body`` of a gatewayd command (BEMCom commands get no answer)."""
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
            topic = self.response.render(device=dev, point=name)
        try:
            session.publish(topic, dumps(body), self.cfg["qos"], False, props)
            session.kick()
        except MqttError:
            pass

    # ------------------------------------------------------------------ executing
    async def worker(self, session: Session, recv: trio.MemoryReceiveChannel) -> None:
        """Execute queued commands one at a time and answer each (lives as long as the connection)."""
        async with recv:
            async for item in recv:
                if self.draining:
                    body = {"point": item[2], **request_id(item[3]), "ok": False, "error": STOPPING}
                else:
                    body = await self.execute(item, session)
                if body.get("ok"):
                    self.ok += 1
                else:
                    self.rejected += 1
                    self.log.warning("command on %s rejected: %s", item[1], body.get("error"))
                self.respond(session, item, body)

    async def execute(self, item: Item, session: Session | None = None) -> dict:
        """Check and run one command; returns the result body (``ok`` true or false with ``error``)."""
        kind, topic, pid, payload, _reply, retained = item
        base: dict[str, Any] = {"point": pid, **request_id(payload)}
        if not retained and session is not None and not session.opts.v5:
            # MQTT 3.1.1 brokers clear the retain flag of a message published while we are subscribed:
            # ask the broker whether this very payload is retained on the topic.
            try:
                retained = await session.retained_payload(topic, timeout=self.check_timeout) == payload
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
        prio = req.get("priority", self.cfg["priority"]) if kind == "cmd" else self.cfg["priority"]
        if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 16:
            return {**base, "ok": False, "error": f"priority must be an integer 1..16, got {prio!r}"}
        if pid is None or not self.allowed(pid, pid.split("/", 1)[0]):
            return {**base, "ok": False, "error": f"point {pid!r} is not in this connector's command allow-list"}
        try:
            res = await self.write_point(pid, value, priority=prio)
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
