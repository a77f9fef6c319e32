"""MQTT connector benchmark: prints figures, asserts nothing.

    python bench/mqtt.py [--quick]

Runs ``gatewayd run`` as a subprocess (sim-like test driver ``fastdrv`` from
tests/mqtt + the mqtt connector) against a Mosquitto on loopback, with a paho
subscriber in this process, and reports:

1. sustained values/s from the driver to the subscriber, QoS 0 and 1, per-point
   and batch mode (the driver offers more than the connector can take; the
   figure is what the subscriber received per second over the window);
2. p50/p99 latency PointSink -> subscriber at a moderate rate (value ts, taken
   when the driver reports it, vs arrival time in the subscriber);
3. drain rate of a 1,000,000-entry backlog after an outage (broker down while
   the values are produced, then started again);
4. disk bytes written per value by the gateway process (``write_bytes`` of
   /proc/<pid>/io; outbox + acks + WAL checkpoints, history off).

Targets (issue 5): >= 50,000 values/s in batch mode, p99 <= 20 ms, drain
>= 20,000 values/s, <= 60 bytes written per value.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests", "mqtt")
sys.path[:0] = [TESTS, ROOT]

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from conftest import Broker  # noqa: E402
from gatewayd.testing import DaemonProcess, site_toml  # noqa: E402


class Counter:
    """Counts values arriving (per-point messages and batch messages) on a paho thread."""

    def __init__(self, port: int, latency: bool = False) -> None:
        self.n = 0
        self.latencies: list[float] = []
        self.arrivals: list[tuple[int, float]] = []  # (value ts ms, arrival ms): bursts share one ts
        self.latency = latency
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}-{id(self)}")
        self.c.max_inflight_messages_set(0)
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, r, p: c.subscribe([("gatewayd/+/+/+/value", 1), ("gatewayd/+/+/values", 1)])
        self.c.on_subscribe = lambda *a: ready.set()
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port, 60)
        self.c.loop_start()
        ready.wait(10)

    def _msg(self, c, u, msg):
        now = time.time()
        p = msg.payload
        if msg.topic.endswith("/values"):
            k = p.count(b'"point":')
        else:
            k = 1
        if self.latency:
            d = json.loads(p)
            for v in d.get("values", [d]):
                self.latencies.append(now * 1000 - v["ts"])
                self.arrivals.append((v["ts"], now * 1000))
        with self.lock:
            self.n += k

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def write_io(pid: int) -> int:
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def cpu_of(pid: int) -> float:
    """CPU-seconds (user + system) of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def site(port: int, *, qos: int, batch: bool, per_cycle: int, interval: str, points: int, devices: int,
         total: int = 10**12, flush: str = "1s", batch_size: int = 1000) -> str:
    devs = "\n".join(f"[drivers.fast.devices.d{i}]\ncount = {points}\n" for i in range(devices))
    return f"""
[history]
enabled = false
flush_interval = "{flush}"
batch_size = {batch_size}

[drivers.fast]
type = "fastdrv"
plugin = "fastdrv"
per_cycle = {per_cycle}
interval = "{interval}"
total = {total}

{devs}

[connectors.up]
type = "mqtt"
port = {port}
qos = {qos}
batch = {str(batch).lower()}
batch_max = 1000
inflight_window = 5000
read_batch = 5000
reconnect_min = "100ms"
reconnect_max = "200ms"
ack_interval = "200ms"
"""


def run_gateway(tmp: str, text: str) -> DaemonProcess:
    path = os.path.join(tmp, "gatewayd.toml")
    with open(path, "w") as fh:
        fh.write(site_toml(tmp, text))
    env = {"PYTHONPATH": os.pathsep.join([TESTS, ROOT, os.path.join(ROOT, "plugins")])}
    d = DaemonProcess(path, env=env)
    d.wait_ready(60)
    return d


def sustained(port: int, qos: int, batch: bool, seconds: float) -> tuple[float, int]:
    tmp = tempfile.mkdtemp(prefix="bench-mqtt-")
    # offer ~60k values/s (6,000 every 100 ms over 100 devices x 200 points)
    text = site(port, qos=qos, batch=batch, per_cycle=6_000, interval="100ms", points=200, devices=100)
    counter = Counter(port)
    d = run_gateway(tmp, text)
    try:
        time.sleep(2)  # warm up
        n0, t0, w0 = counter.n, time.monotonic(), write_io(d.proc.pid)
        g0, s0 = cpu_of(d.proc.pid), time.process_time()
        time.sleep(seconds)
        n1, t1, w1 = counter.n, time.monotonic(), write_io(d.proc.pid)
        g1, s1 = cpu_of(d.proc.pid), time.process_time()
        sustained.cpu = ((g1 - g0) / (t1 - t0), (s1 - s0) / (t1 - t0))
    finally:
        d.stop()
        d.__exit__(None, None, None)
        counter.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rate = (n1 - n0) / (t1 - t0)
    return rate, (w1 - w0) // max(1, n1 - n0)


def ctx_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of a process: involuntary ones = it was runnable, not run."""
    out = [0, 0]
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("voluntary_ctxt_switches:"):
                out[0] = int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out[1] = int(line.split()[1])
    return out[0], out[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def latency(port: int, batch: bool, per_cycle: int = 100, interval: str = "100ms",
            flush: str = "1s", seconds: float = 8) -> tuple[float, float, int]:
    """p50/p99 PointSink -> subscriber at 1,000 values/s; details (burst split, CPU, preemption) in latency.info."""
    tmp = tempfile.mkdtemp(prefix="bench-mqtt-")
    text = site(port, qos=1, batch=batch, per_cycle=per_cycle, interval=interval, points=100, devices=1,
                flush=flush)
    counter = Counter(port, latency=True)
    d = run_gateway(tmp, text)
    try:
        time.sleep(1)
        counter.latencies.clear()
        counter.arrivals.clear()
        w0 = write_io(d.proc.pid)
        g0, c0, t0 = cpu_of(d.proc.pid), ctx_switches(d.proc.pid), time.monotonic()
        time.sleep(seconds)
        t1 = time.monotonic()
        lat = sorted(counter.latencies)
        arrivals = list(counter.arrivals)
        c1 = ctx_switches(d.proc.pid)
        latency.bytes_per_value = (write_io(d.proc.pid) - w0) // max(1, len(lat))
        # a burst = the values the driver reported in one cycle (same ts): the first of a burst measures
        # the pipeline, the spread to its last measures queueing behind the burst's other messages
        bursts: dict[int, list[float]] = {}
        for ts, at in arrivals:
            bursts.setdefault(ts, []).append(at - ts)
        firsts = [min(v) for v in bursts.values()]
        spreads = [max(v) - min(v) for v in bursts.values()]
        latency.info = (f"first of burst p50 {pct(firsts, .5):.1f} / p99 {pct(firsts, .99):.1f} ms, "
                        f"burst spread p50 {pct(spreads, .5):.1f} / p99 {pct(spreads, .99):.1f} ms; "
                        f"gateway {(cpu_of(d.proc.pid) - g0) / (t1 - t0):.2f} CPU-s/s, "
                        f"{(c1[1] - c0[1]) / (t1 - t0):.0f} preemptions/s; load {os.getloadavg()[0]:.2f}")
    finally:
        d.stop()
        d.__exit__(None, None, None)
        counter.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if not lat:
        return float("nan"), float("nan"), 0
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)


def drain(broker: Broker, n: int, batch: bool, qos: int) -> tuple[float, float, int]:
    """Broker down while n values are produced; then the rate at which the backlog drains."""
    tmp = tempfile.mkdtemp(prefix="bench-mqtt-")
    text = site(broker.port, qos=qos, batch=batch, per_cycle=50_000, interval="50ms", points=1000, devices=10,
                total=n, flush="200ms", batch_size=50_000)
    broker.stop()
    d = run_gateway(tmp, text)
    try:
        from gatewayd.rpc.client import RpcClient

        sock = os.path.join(tmp, "var", "gatewayd.sock")

        def status():
            c = RpcClient(sock, timeout=30)
            try:
                return c.call("connectors.status", {"connector": "up"})[0]["outbox"] or {}
            finally:
                c.close()

        t_start = time.monotonic()
        while (status().get("head") or 0) < n:
            time.sleep(0.2)
        t_fill = time.monotonic() - t_start
        w0 = write_io(d.proc.pid)
        broker.start()
        counter = Counter(broker.port)
        t0 = time.monotonic()
        g0, s0 = cpu_of(d.proc.pid), time.process_time()
        while counter.n < n * 0.999 and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        t1 = time.monotonic()
        got = counter.n
        w1 = write_io(d.proc.pid)
        drain.cpu = ((cpu_of(d.proc.pid) - g0) / (t1 - t0), (time.process_time() - s0) / (t1 - t0))
        counter.close()
    finally:
        d.stop()
        d.__exit__(None, None, None)
        shutil.rmtree(tmp, ignore_errors=True)
    return got / (t1 - t0), t_fill, (w1 - w0) // max(1, got)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter windows, 200k backlog")
    ap.add_argument("--latency", action="store_true",
                    help="only the latency part, with the burst split and variants that show what makes the tail")
    a = ap.parse_args()
    if a.latency:
        return latency_study()
    secs = 5 if a.quick else 10
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="bench-broker-")
    broker = Broker(tmp, port=port).start()
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; mosquitto on 127.0.0.1:{port}; "
              f"load {os.getloadavg()[0]:.2f}")
        print("   (subscriber = this process's paho thread; 1.00 CPU s/s means it is saturated)")
        print("\n1. sustained values/s driver -> subscriber (offered ~60k/s; bytes written per value)")
        for qos in (0, 1):
            for batch in (False, True):
                rate, bpv = sustained(port, qos, batch, secs)
                print(f"   QoS {qos} {'batch    ' if batch else 'per-point'}: {rate:10,.0f} values/s   "
                      f"{bpv:4d} bytes written/value   CPU s/s: gateway {sustained.cpu[0]:.2f}, "
                      f"subscriber {sustained.cpu[1]:.2f}")
        print("\n2. latency PointSink -> subscriber (QoS 1, 1,000 values/s, default settings: recorder flush 1 s;"
              " entries are staged for connectors at once, committed once per flush)")
        for batch in (False, True):
            p50, p99, n = latency(port, batch)
            print(f"   {'batch    ' if batch else 'per-point'}: p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   ({n} values; "
                  f"{latency.bytes_per_value} bytes written/value)")
        n = 200_000 if a.quick else 1_000_000
        print(f"\n3. drain of a {n:,}-entry backlog after an outage (QoS 1)")
        for batch in (True, False):
            rate, fill, bpv = drain(broker, n, batch, 1)
            print(f"   {'batch    ' if batch else 'per-point'}: {rate:10,.0f} values/s drained   "
                  f"(backlog filled in {fill:.1f}s; {bpv} bytes written/value while draining; "
                  f"CPU s/s: gateway {drain.cpu[0]:.2f}, subscriber {drain.cpu[1]:.2f})")
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def latency_study() -> None:
    """Section 2 in detail: which part of the p99 is the pipeline, which is queueing behind a burst."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="bench-broker-")
    broker = Broker(tmp, port=port).start()
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f} "
              f"(1-min average before the run)")
        variants = [
            ("per-point, 100 values every 100 ms (README conditions)", False, 100, "100ms", "1s"),
            ("per-point, 10 values every 10 ms (same rate, no bursts)", False, 10, "10ms", "1s"),
            ("per-point, 100 values every 100 ms, flush 10 s (few commits)", False, 100, "100ms", "10s"),
            ("batch, 100 values every 100 ms", True, 100, "100ms", "1s"),
        ]
        for name, batch, per_cycle, interval, flush in variants:
            p50, p99, n = latency(port, batch, per_cycle, interval, flush)
            print(f"{name}:\n   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   ({n} values)\n   {latency.info}")
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
