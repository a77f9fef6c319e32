"""Fixtures for the MQTT connector tests: a real Mosquitto per test and a subscriber.

Every broker a test starts is stopped by its fixture; ports are picked free;
configs are written to ``tmp_path`` (loopback listener, persistence off).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import pytest
import trio

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
HERE = os.path.dirname(os.path.abspath(__file__))

if not os.path.exists(MOSQUITTO):  # pragma: no cover
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process on 127.0.0.1:``port``; ``stop()``/``start()`` keep the port."""

    def __init__(self, tmp_path, *, port: int | None = None, users: dict[str, str] | None = None,
                 tls: dict | None = None, extra: str = "") -> None:
        self.dir = os.path.join(str(tmp_path), f"broker-{id(self)}")
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or free_port()
        self.users = users
        self.tls = tls
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.log_path = os.path.join(self.dir, "mosquitto.log")
        self._write_conf()

    def _write_conf(self) -> None:
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr",
                 "log_type error", "log_type warning", "log_type notice", "log_type information",
                 "max_queued_messages 0", "max_inflight_messages 0", "max_queued_bytes 0",
                 "max_keepalive 65535",
                 # as root, mosquitto would switch to the "mosquitto" user, which cannot read tmp_path
                 f"user {pwd.getpwuid(os.getuid()).pw_name}"]
        if self.users is not None:
            pw = os.path.join(self.dir, "passwd")
            open(pw, "w").close()
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", pw, user, password], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls['ca']}", f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
            if self.tls.get("require_certificate"):
                lines += ["require_certificate true"]
        lines.append(self.extra)
        with open(self.conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> "Broker":
        assert self.proc is None
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:  # the listener is up when a TCP connect succeeds
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start (exit {self.proc.poll()}):\n{self.log()}")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None
            self._log.close()

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def broker_factory(tmp_path):
    made: list[Broker] = []

    def make(**kw) -> Broker:
        b = Broker(tmp_path, **kw)
        made.append(b)
        return b.start()

    yield make
    for b in made:
        b.stop()


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


class Subscriber:
    """A plain paho client on its own network thread (independent of the code under test).

    ``messages`` is a list of ``(topic, payload bytes, retain, qos)``; :meth:`wait_for`
    waits (in a worker thread, on a condition variable) until ``predicate(messages)``.
    """

    def __init__(self, port: int, topics: list[str] | str = "#", *, qos: int = 1, client_id: str | None = None,
                 username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 protocol: int = paho.MQTTv311) -> None:
        self.messages: list[tuple[str, bytes, bool, int]] = []
        self.cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{id(self)}",
                                  protocol=protocol)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.max_inflight_messages_set(0)
        self._subscribed = threading.Event()
        topics = [topics] if isinstance(topics, str) else topics
        self.topics = topics
        self.qos = qos

        def on_connect(c, u, flags, reason, props):
            c.subscribe([(t, qos) for t in topics])

        def on_subscribe(c, u, mid, reasons, props):
            self._subscribed.set()

        def on_message(c, u, msg):
            with self.cond:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain), msg.qos))
                self.cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("test subscriber could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[tuple[str, bytes, bool, int]]:
        with self.cond:
            return list(self.messages)

    def json(self, topic_filter: Callable[[str], bool] | None = None) -> list[tuple[str, dict]]:
        return [(t, json.loads(p)) for t, p, _r, _q in self.snapshot() if topic_filter is None or topic_filter(t)]

    async def wait_for(self, predicate: Callable[[list], bool], timeout: float = 10.0, what: str = "") -> list:
        deadline = time.monotonic() + timeout

        def wait():
            while True:
                with self.cond:
                    if predicate(self.messages):
                        return True
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(min(left, 0.5))
                # a burst wakes us per message: evaluate the predicate at most ~50 times a second
                time.sleep(0.02)

        ok = await trio.to_thread.run_sync(wait, abandon_on_cancel=True)
        if not ok:
            msgs = self.snapshot()
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; "
                                 f"{len(msgs)} messages, last: {msgs[-3:]}")
        return self.snapshot()

    async def wait_count(self, n: int, topic_filter: Callable[[str], bool] = lambda t: True, timeout: float = 10.0):
        return await self.wait_for(lambda ms: sum(1 for m in ms if topic_filter(m[0])) >= n, timeout,
                                   f"{n} messages")


@pytest.fixture
def subscriber_factory():
    made: list[Subscriber] = []

    def make(port: int, topics="#", **kw) -> Subscriber:
        s = Subscriber(port, topics, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def plugin_path(monkeypatch):
    """Make tests/mqtt importable (the test driver plugin ``fastdrv``) in-process and in subprocesses."""
    monkeypatch.syspath_prepend(HERE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([HERE] + [p for p in sys.path if p]))
    return HERE
