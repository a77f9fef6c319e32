"""Helpers for the bacnet tests: bacpypes3 test devices in subprocesses on loopback
(127.0.0.x with distinct ports) or inside a network namespace, and site TOML."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
DEVICE = os.path.join(HERE, "bacnet_device.py")


def free_udp_port(host: str = "127.0.0.1") -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Device:
    """A bacnet_device.py subprocess; ``cmd()`` talks to it over stdin/stdout."""

    def __init__(self, address: str, instance: int, objects: int = 18, *args: str, netns: str | None = None):
        self.address, self.instance, self.objects = address, instance, objects
        self.args = list(args)
        self.netns = netns
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.start()

    @property
    def addr(self) -> str:
        """The address as the driver configures it (host:port, no prefix)."""
        host, port = self.address.rsplit(":", 1)
        return f"{host.split('/')[0]}:{port}"

    def start(self) -> None:
        argv = [sys.executable, DEVICE, "--address", self.address, "--instance", str(self.instance),
                "--objects", str(self.objects), *self.args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        line = self.proc.stdout.readline()  # blocks until the device's socket is bound
        if not line.startswith("READY"):
            self.proc.kill()
            raise RuntimeError(f"test device {self.instance} did not start: {line!r}")

    def cmd(self, line: str) -> str:
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            out = self.proc.stdout.readline().strip()
        if out.startswith("ERR"):
            raise RuntimeError(out)
        return out

    def priority_array(self, oid: str) -> list:
        return json.loads(self.cmd(f"pa {oid}")[3:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.stop()


def bacnet_site(devs, *, extra_driver: str = "", device_extra: str = "", points: str | None = None,
                port: int | None = None, local: str = "127.0.0.1", poll: str = "200ms") -> str:
    """A gatewayd TOML with one bacnet driver ``bac`` on loopback and the given devices."""
    port = port or free_udp_port()
    out = [f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 599
apdu_timeout = "300ms"
apdu_retries = 1
who_is_timeout = "500ms"
poll_interval = "{poll}"
{extra_driver}
[drivers.bac.networks.main]
address = "{local}"
port = {port}
"""]
    for d in devs:
        out.append(f"""
[drivers.bac.devices.dev{d.instance}]
device_instance = {d.instance}
address = "{d.addr}"
{device_extra}
""")
        if callable(points):
            out.append(points(d).format(dev=f"dev{d.instance}"))
            continue
        out.append(points.format(dev=f"dev{d.instance}") if points is not None else f"""
[drivers.bac.devices.dev{d.instance}.points.ai1]
object = "analog-input,1"
[drivers.bac.devices.dev{d.instance}.points.ao1]
object = "analog-output,1"
writable = true
[drivers.bac.devices.dev{d.instance}.points.bo1]
object = "binary-output,1"
kind = "binary"
writable = true
[drivers.bac.devices.dev{d.instance}.points.msv1]
object = "multi-state-value,1"
kind = "multistate"
[drivers.bac.devices.dev{d.instance}.points.ai1_units]
object = "analog-input,1"
property = "units"
kind = "string"
""")
    return "\n".join(out)
