"""Modbus polling throughput: gatewayd's modbus driver vs a naive pymodbus loop.

    python bench/modbus.py [--devices 50] [--points 200] [--seconds 20] [--naive-seconds 10]

A pymodbus simulator (SimDevice, values changing on every read) runs in a separate
process with one TCP server per device, so its CPU is not counted. Then, in this
process:

1. a real Gateway (in-process, history recorder on, state in a temp dir) polls every
   device at 1 s: half the points float32, half uint16, contiguous registers. Figures:
   points/s delivered into the point table, requests per cycle vs the planner minimum,
   gateway CPU-seconds per million points (process CPU time: driver + planner/decoder +
   point table + bus + recorder), RSS;
2. the baseline: pymodbus's own asyncio client reading each point with its own request,
   all devices concurrently, as fast as it goes.

Prints figures and ratios (no timed asserts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIM = os.path.join(HERE, "..", "tests", "modbus", "sim_server.py")


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def layout(points: int):
    """(name, address, type) for half float32, half uint16, contiguous from 0."""
    out, addr = [], 0
    for i in range(points):
        if i % 2 == 0:
            out.append((f"f{i}", addr, "float32"))
            addr += 2
        else:
            out.append((f"u{i}", addr, "uint16"))
            addr += 1
    return out, addr


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_simulator(tmp, ports, registers):
    units = {"1": {"holding": {str(a): (a * 7) & 0xFFFF for a in range(registers)}, "changing": True}}
    spec = {"servers": [{"port": p, "units": units} for p in ports], "ready": os.path.join(tmp, "ready")}
    path = os.path.join(tmp, "spec.json")
    with open(path, "w") as fh:
        json.dump(spec, fh)
    proc = subprocess.Popen([sys.executable, SIM, path])
    deadline = time.monotonic() + 60
    while not os.path.exists(spec["ready"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("simulator did not start")
        time.sleep(0.05)
    return proc


def site(ports, pts, interval="1s", history=True) -> str:
    out = ["" if history else "[history]\nenabled = false\n[outbox]\nmemory = true\n\n"]
    out += [f'[drivers.mb]\ntype = "modbus"\nhost = "127.0.0.1"\npoll_interval = "{interval}"\nresponse_timeout_ms = 2000\n']
    for i, port in enumerate(ports):
        out.append(f"[drivers.mb.devices.d{i}]\nport = {port}\n")
        for name, addr, typ in pts:
            out.append(f'[drivers.mb.devices.d{i}.points.{name}]\naddress = {addr}\ntype = "{typ}"\n')
    return "".join(out)


async def gateway_phase(tmp, ports, pts, seconds, interval, history):
    import trio

    from gatewayd.testing import run_gateway

    t_start = time.monotonic()
    async with run_gateway(tmp, site(ports, pts, interval, history)) as gw:
        ready_s = time.monotonic() - t_start
        drv = gw.drivers["mb"].instance
        with trio.fail_after(60):  # warm-up: every device has completed a few cycles
            while min(d.stats["cycles"] for d in drv.devices.values()) < 3:
                await trio.sleep(0.1)
        n0, c0, t0, w0 = gw.points.ingested, time.process_time(), time.monotonic(), drv.status()["requests"]
        cyc0 = sum(d.stats["cycles"] for d in drv.devices.values())
        await trio.sleep(seconds)
        n1, c1, t1, w1 = gw.points.ingested, time.process_time(), time.monotonic(), drv.status()["requests"]
        cyc1 = sum(d.stats["cycles"] for d in drv.devices.values())
        planned = sum(d.stats["planned_requests"] for d in drv.devices.values())
        ok = sum(1 for p in gw.points.points.values() if p.status == "ok")
        return {"points": n1 - n0, "elapsed": t1 - t0, "cpu": c1 - c0, "requests": w1 - w0,
                "cycles": cyc1 - cyc0, "planned_per_cycle": planned, "rss_mb": rss_mb(), "ok_points": ok,
                "total_points": len(gw.points.points), "start_s": ready_s,
                "events": gw.bus.published}


async def naive_phase(ports, pts, seconds):
    import logging

    from pymodbus.client import AsyncModbusTcpClient

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2) for p in ports]
    for c in clients:
        await c.connect()
    counts = [0] * len(clients)
    stop = time.monotonic() + seconds

    async def loop(i, c):
        while time.monotonic() < stop:
            for _, addr, typ in pts:
                r = await c.read_holding_registers(addr, count=2 if typ == "float32" else 1, device_id=1)
                if typ == "float32":
                    c.convert_from_registers(r.registers, c.DATATYPE.FLOAT32)
                counts[i] += 1
                if time.monotonic() >= stop:
                    break

    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop(i, c) for i, c in enumerate(clients)))
    c1, t1 = time.process_time(), time.monotonic()
    for c in clients:
        c.close()
    return {"points": sum(counts), "elapsed": t1 - t0, "cpu": c1 - c0, "rss_mb": rss_mb()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--naive-seconds", type=float, default=10)
    ap.add_argument("--interval", default="1s", help="poll interval (\"500ms\" doubles the asked rate)")
    ap.add_argument("--no-history", action="store_true", help="history recorder off, outbox in RAM: the "
                    "driver + point table + bus path alone")
    a = ap.parse_args()

    import trio

    pts, registers = layout(a.points)
    ports = free_ports(a.devices)
    with tempfile.TemporaryDirectory(prefix="bench-modbus-") as tmp:
        sim = start_simulator(tmp, ports, registers)
        try:
            g = trio.run(gateway_phase, tmp, ports, pts, a.seconds, a.interval, not a.no_history)
            n = asyncio.run(naive_phase(ports, pts, a.naive_seconds))
        finally:
            sim.terminate()
            sim.wait(10)
    pps = g["points"] / g["elapsed"]
    cpm = g["cpu"] / (g["points"] / 1e6) if g["points"] else float("nan")
    rpc = g["requests"] / g["cycles"] * a.devices if g["cycles"] else float("nan")
    npps = n["points"] / n["elapsed"]
    ncpm = n["cpu"] / (n["points"] / 1e6) if n["points"] else float("nan")
    print(f"modbus bench: {a.devices} devices x {a.points} points (half float32, half uint16, {registers} registers "
          f"each), poll {a.interval}, values changing every read, history {'off' if a.no_history else 'on'}; "
          "simulator in its own process")
    print(f"  gatewayd: {pps:,.0f} points/s delivered over {g['elapsed']:.1f} s "
          f"({g['ok_points']}/{g['total_points']} points ok), target >= 10,000")
    print(f"            requests per cycle (all devices) {rpc:.0f} vs planner minimum {g['planned_per_cycle']} "
          f"({g['requests']} requests in {g['cycles']} device cycles)")
    print(f"            CPU {g['cpu']:.2f} s = {cpm:.2f} CPU-s per million points (target <= 10), "
          f"{100 * g['cpu'] / g['elapsed']:.1f} % of one core; RSS {g['rss_mb']:.0f} MB; "
          f"gateway start {g['start_s']:.2f} s")
    print(f"  naive pymodbus loop (one request per point, asyncio client): {npps:,.0f} points/s, "
          f"{ncpm:.1f} CPU-s per million points over {n['elapsed']:.1f} s")
    print(f"  ratios: throughput x{pps / npps:.1f}, CPU per point x{ncpm / cpm:.1f} less, "
          f"requests per point {g['requests'] / max(g['points'], 1):.4f} vs 1")
    print(f"  max RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
