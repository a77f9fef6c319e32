"""Helpers to run a real gateway in tests (in-process or as a subprocess).

In-process::

    async with run_gateway(tmp_path, '''
        [drivers.sim]
        type = "sim"
        [drivers.sim.devices.d1]
        model = "meter"
    ''') as gw:
        await wait_until(gw, lambda: gw.points.points["d1/power"].status == "ok")
        result = await rpc(gw, "points.list", {"device": "d1"})

``[gateway]`` and ``[control]`` are added (state and socket in ``tmp_path``)
unless the text has them. Waiting is event-driven (:func:`wait_until` wakes on
bus events), never a sleep loop.

As a subprocess (for ``kill -9``, signals, sd_notify)::

    with DaemonProcess(config_path) as d:
        d.wait_ready()          # READY=1 through a real NOTIFY_SOCKET
        d.kill()                # SIGKILL
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Callable

import trio

from .config import load_config
from .daemon import Gateway
from .plugins import PluginRegistry

__all__ = ["site_toml", "run_gateway", "wait_until", "rpc", "DaemonProcess"]


def site_toml(tmp_path, body: str, *, gateway_id: str = "test") -> str:
    """``body`` with ``[gateway]``/``[control]`` pointing into ``tmp_path`` prepended."""
    body = textwrap.dedent(body)
    head = ""
    if "[gateway]" not in body:
        head += (f'[gateway]\nid = "{gateway_id}"\nstate_dir = "{tmp_path}/var"\n'
                 'shutdown_grace = "2s"\n\n')
    if "[control]" not in body:
        head += f'[control]\nsocket = "{tmp_path}/var/gatewayd.sock"\n\n'
    return head + body


class _NullNotifier:
    def __getattr__(self, name):
        return lambda *a, **k: None

    def watchdog_interval(self):
        return None


@asynccontextmanager
async def run_gateway(tmp_path, body: str, *, filename: str = "gatewayd.toml", notifier: Any = None):
    """Run a :class:`Gateway` on ``body`` (see :func:`site_toml`) until the block exits."""
    path = os.path.join(str(tmp_path), filename)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(site_toml(tmp_path, body))
    registry = PluginRegistry()
    cfg = load_config(path, registry=registry)
    gw = Gateway(cfg, registry, notifier=notifier or _NullNotifier())
    async with trio.open_nursery() as n:
        await n.start(partial(gw.run, handle_signals=False))
        try:
            yield gw
        finally:
            gw.shutdown()


async def wait_until(gw: Gateway, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait (event-driven) until ``predicate()`` is true; fail after ``timeout`` seconds."""
    if predicate():
        return
    sub = gw.bus.subscribe("test:wait_until", maxlen=1_000_000)
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await sub.get_batch()
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}") from None
    finally:
        sub.close()


async def rpc(gw: Gateway, method: str, params: Any = None, *, socket_path: str | None = None) -> Any:
    """Call a method over the gateway's real control socket (sync client in a thread)."""
    from .rpc.client import RpcClient

    path = socket_path or gw.config.control.socket

    def call():
        c = RpcClient(path, timeout=30)
        try:
            return c.call(method, params or {})
        finally:
            c.close()

    return await trio.to_thread.run_sync(call)


class DaemonProcess:
    """``gatewayd run -c PATH`` as a subprocess, with a real NOTIFY_SOCKET."""

    def __init__(self, config_path: str, *, env: dict | None = None, cwd: str | None = None) -> None:
        self.config_path = config_path
        self.cwd = cwd
        d = os.path.dirname(os.path.abspath(config_path))
        self.notify_path = os.path.join(d, f"notify-{os.getpid()}-{id(self)}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.messages: list[str] = []
        e = dict(os.environ)
        e.update(env or {})
        e["NOTIFY_SOCKET"] = self.notify_path
        e.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = os.path.join(d, "daemon.log")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gatewayd", "run", "-c", config_path],
                                     env=e, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        """Wait for an sd_notify datagram containing a line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        for m in self.messages:
            if any(line.startswith(prefix) for line in m.splitlines()):
                return m
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"daemon never sent {prefix!r} (exit code {self.proc.poll()}); log:\n"
                                     + self.log())
            self.notify.settimeout(min(left, 0.5))
            try:
                data = self.notify.recv(65536).decode()
            except socket.timeout:
                continue
            self.messages.append(data)
            if any(line.startswith(prefix) for line in data.splitlines()):
                return data

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for("READY=1", timeout)

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log.close()
        self.notify.close()
        try:
            os.unlink(self.notify_path)
        except FileNotFoundError:
            pass
