"""Core benchmark: a simulated site with 10,000 points changing at 1 Hz.

Runs ``gatewayd run`` as a subprocess (so its CPU and RSS are its own) twice in
the same run: an idle baseline site (1 device, 6 points) and the 10k site
(50 devices x 200 points, every value changing every second, history in COV
mode). Prints: time from exec to READY=1 (sd_notify), CPU % over the window,
RSS, values/s ingested, events/s through the bus, samples/s committed to
history.db, and bytes written to disk per sample (/proc/<pid>/io). Also the
time to load a 10,000-point TOML written point by point (``load_config``, which
reads with tomllib) against parsing it with tomlkit alone (the previous reader);
the spacing of interval-mode history samples; and ``points.read`` latency over
the control socket alone and while a hostile client holds idle connections,
watch streams, half-sent requests and audit queries (issue 11.9).

    .venv/bin/python bench/core.py [--seconds 20] [--devices 50] [--points 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gatewayd.rpc.client import RpcClient  # noqa: E402
from gatewayd.testing import DaemonProcess, site_toml  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as fh:
        for line in fh:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def run_site(name: str, devices: int, points: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        body = "[history]\nmode = \"cov\"\n\n[drivers.sim]\ntype = \"sim\"\ninterval = \"1s\"\n\n"
        for d in range(devices):
            body += f"[drivers.sim.devices.dev{d:03d}]\nmodel = \"generic\"\ngenerate = {points}\n\n"
        path = os.path.join(tmp, "gatewayd.toml")
        with open(path, "w") as fh:
            fh.write(site_toml(tmp, body, gateway_id="bench"))
        t0 = time.monotonic()
        with DaemonProcess(path) as d:
            d.wait_ready(timeout=120)
            ready = time.monotonic() - t0
            pid = d.proc.pid
            sock = os.path.join(tmp, "var", "gatewayd.sock")
            time.sleep(3)  # warm-up: first cycles, first flushes
            c = RpcClient(sock, timeout=30)
            s0 = c.call("gateway.status", {})
            cpu0, wb0, w0 = cpu_seconds(pid), write_bytes(pid), time.monotonic()
            time.sleep(seconds)
            s1 = c.call("gateway.status", {})
            cpu1, wb1, w1 = cpu_seconds(pid), write_bytes(pid), time.monotonic()
            rss = rss_mb(pid)
            c.close()
        dt = w1 - w0
        samples = s1["recorder"]["samples_written"] - s0["recorder"]["samples_written"]
        return {
            "site": name, "points": devices * points, "ready_s": ready, "cpu_pct": 100 * (cpu1 - cpu0) / dt,
            "rss_mb": rss,
            "values_per_s": (s1["values_ingested"] - s0["values_ingested"]) / dt,
            "events_per_s": (s1["events_published"] - s0["events_published"]) / dt,
            "samples_per_s": samples / dt,
            "bytes_per_sample": (wb1 - wb0) / samples if samples else float("nan"),
            "cpu_s_per_million": (cpu1 - cpu0) / max(1, s1["values_ingested"] - s0["values_ingested"]) * 1e6,
            "dropped": s1["recorder"]["dropped_before_recording"],
        }


def config_load(devices: int, points: int) -> None:
    import tomlkit

    from gatewayd.config import load_config

    parts = ['[gateway]\nid = "bench"\n\n[drivers.sim]\ntype = "sim"\n']
    for d in range(devices):
        parts.append(f"\n[drivers.sim.devices.dev{d}]\n")
        parts += [f'[drivers.sim.devices.dev{d}.points.p{p}]\nsignal = "sine"\nunit = "degC"  # comment\n'
                  for p in range(points)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.toml")
        with open(path, "w") as fh:
            fh.write("".join(parts))
        t0 = time.perf_counter()
        cfg = load_config(path)
        t_load = time.perf_counter() - t0
        n = sum(len(dev.points) for dev in cfg.drivers["sim"].devices.values())
        with open(path) as fh:
            text = fh.read()
        t0 = time.perf_counter()
        tomlkit.parse(text)
        t_kit = time.perf_counter() - t0
    print(f"config: {n} points written out in TOML: load_config (parse + validate) {t_load:.2f} s; "
          f"tomlkit.parse alone {t_kit:.2f} s (x{t_kit / t_load:.1f})\n")


def interval_spacing(seconds: float = 6.0) -> None:
    """Spacing of ``[history] mode = "interval"`` samples (interval 1 s) for a point changing every 10 ms,
    in a gateway run in-process (formerly a timed assert in tests/core/test_rpc_methods.py)."""
    import trio

    from gatewayd.testing import run_gateway

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

    async def run(tmp: str) -> list[float]:
        async with run_gateway(tmp, """
            [history]
            mode = "interval"
            interval = "1s"
            [drivers.c]
            type = "counter"
            plugin = "ext_plugins.counter"
            interval = "10ms"
            [drivers.c.devices.d1]
            [drivers.c.devices.d1.points.n]
            """) as gw:
            await trio.sleep(seconds)
            ts = [r["ts"] for r in gw.history.query("d1/n")]
        return [b - a for a, b in zip(ts, ts[1:])]

    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        gaps = trio.run(run, tmp)
    if gaps:
        print(f"interval history (1 s): {len(gaps) + 1} samples in {seconds:g} s, spacing min {min(gaps):.3f} s, "
              f"max {max(gaps):.3f} s\n")


def hostile_viewer(reads: int = 300) -> None:
    """points.read latency (ms, p50/p99/max) over the control socket, alone and while a hostile local client
    holds the control plane: 40 idle connections, 10 points.watch streams, 5 half-sent requests and audit.list
    queries in a loop over 50,000 audit entries (issue 11.9; the test asserts only that the read is
    answered meanwhile). Run as root: the hostile side is the same uid, so it meets the connection limits of
    root's pool."""
    import threading

    import trio

    from gatewayd.rpc.client import RpcClient as Client
    from gatewayd.testing import run_gateway

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

    def latencies(sock: str) -> list[float]:
        c = Client(sock, timeout=30)
        out = []
        try:
            for _ in range(reads):
                t = time.perf_counter()
                c.call("points.read", {"points": "d1/n"})
                out.append(1e3 * (time.perf_counter() - t))
        finally:
            c.close()
        return sorted(out)

    def hostile(sock: str, stop: threading.Event) -> None:
        import socket as s_

        held = []
        for i in range(40 + 10 + 5):
            s = s_.socket(s_.AF_UNIX)
            s.connect(sock)
            if 40 <= i < 50:
                s.send(b'{"jsonrpc":"2.0","method":"points.watch","id":1}\n')
            elif i >= 50:
                s.send(b'{"jsonrpc":"2.0","meth')
            held.append(s)
        c = Client(sock, timeout=60)
        while not stop.is_set():
            c.call("audit.list", {"limit": 1000, "target": "nothing*"})
        c.close()
        for s in held:
            s.close()

    async def run(tmp: str) -> tuple[list[float], list[float]]:
        async with run_gateway(tmp, """
            [drivers.c]
            type = "counter"
            plugin = "ext_plugins.counter"
            interval = "50ms"
            [drivers.c.devices.d1]
            [drivers.c.devices.d1.points.n]
            """) as gw:
            gw.state.db.write_sync(lambda conn: conn.executemany(
                "INSERT INTO audit(ts, actor, action, target, detail, ok) VALUES (?, 'a', 'x', 't', '{}', 1)",
                [(1000.0 + i,) for i in range(50_000)]))
            sock = gw.config.control.socket
            calm = await trio.to_thread.run_sync(latencies, sock)
            stop = threading.Event()
            th = threading.Thread(target=hostile, args=(sock, stop))
            th.start()
            try:
                loaded = await trio.to_thread.run_sync(latencies, sock)
            finally:
                stop.set()
                await trio.to_thread.run_sync(th.join)
            return calm, loaded

    with tempfile.TemporaryDirectory(prefix="gwbench-") as tmp:
        calm, loaded = trio.run(run, tmp)

    def fig(xs: list[float]) -> str:
        return f"p50 {xs[len(xs) // 2]:.2f} ms, p99 {xs[int(len(xs) * 0.99)]:.2f} ms, max {xs[-1]:.2f} ms"

    print(f"points.read over the control socket ({reads} reads): alone {fig(calm)}; "
          f"with a hostile client {fig(loaded)}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--points", type=int, default=200)
    a = ap.parse_args()
    config_load(a.devices, a.points)
    interval_spacing()
    hostile_viewer()
    base = run_site("baseline (1 device, 6 points)", 1, 6, a.seconds)
    big = run_site(f"{a.devices}x{a.points} points at 1 Hz", a.devices, a.points, a.seconds)
    cols = ["points", "ready_s", "cpu_pct", "rss_mb", "values_per_s", "events_per_s", "samples_per_s",
            "bytes_per_sample", "cpu_s_per_million", "dropped"]
    print(f"{'site':34}" + "".join(f"{c:>18}" for c in cols))
    for r in (base, big):
        print(f"{r['site']:34}" + "".join(f"{r[c]:>18.2f}" if isinstance(r[c], float) else f"{r[c]:>18}"
                                          for c in cols))
    print(f"\nratios 10k/baseline: RSS x{big['rss_mb'] / base['rss_mb']:.2f}, "
          f"READY x{big['ready_s'] / base['ready_s']:.2f}, CPU +{big['cpu_pct'] - base['cpu_pct']:.1f} points of %")


if __name__ == "__main__":
    main()
