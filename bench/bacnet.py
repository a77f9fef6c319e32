"""BACnet benchmark: 10 devices x 200 objects polled every 5 s (issue 6).

Starts bacpypes3 test devices (tests/bacnet/bacnet_device.py) as subprocesses on
127.0.0.2 ... 127.0.0.11 and ``gatewayd run`` as another subprocess (so the CPU
and RSS are the gateway's own), lets one poll cycle warm up, then measures a
window: properties read per second (present-value + status-flags of every
object), ReadPropertyMultiple requests per cycle (all devices), CPU-seconds of
the gateway per million values, and its RSS. A second run polls as fast as the
devices answer (``poll_interval = 50ms``) to show the ceiling.

    /tmp/bacnet-venv/bin/python bench/bacnet.py [--devices 10] [--objects 200] [--seconds 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "tests", "bacnet"))

from bacnet_helpers import free_udp_port as free_port  # noqa: E402
from bench.core import cpu_seconds, rss_mb  # noqa: E402
from gatewayd.rpc.client import RpcClient  # noqa: E402
from gatewayd.testing import DaemonProcess, site_toml  # noqa: E402

DEVICE = os.path.join(ROOT, "tests", "bacnet", "bacnet_device.py")
KINDS = ["analog-input", "analog-output", "analog-value", "binary-input", "binary-output", "binary-value",
         "multi-state-input", "multi-state-output", "multi-state-value"]


def site(devs: list[tuple[int, str]], objects: int, interval: str) -> str:
    out = [f"""
[history]
enabled = false

[drivers.bac]
type = "bacnet"
server_device_instance = 599
poll_interval = "{interval}"
[drivers.bac.networks.main]
address = "127.0.0.1"
port = {free_port("127.0.0.1")}
"""]
    for inst, addr in devs:
        out.append(f"[drivers.bac.devices.d{inst}]\ndevice_instance = {inst}\naddress = \"{addr}\"\n")
        for i in range(objects):
            k = KINDS[i % 9]
            kind = "analog" if k.startswith("analog") else "binary" if k.startswith("binary") else "multistate"
            out.append(f"[drivers.bac.devices.d{inst}.points.p{i}]\nobject = \"{k},{i // 9 + 1}\"\n"
                       f"kind = \"{kind}\"\n")
    return "\n".join(out)


def driver_status(sock: str) -> dict:
    c = RpcClient(sock, timeout=30)
    try:
        return next(d for d in c.call("drivers.list", {}) if d["id"] == "bac")
    finally:
        c.close()


def run(n_dev: int, objects: int, interval: str, seconds: float) -> dict:
    procs, devs = [], []
    tmp = tempfile.mkdtemp(prefix="bench-bacnet-")
    try:
        for i in range(n_dev):
            host = f"127.0.0.{i + 2}"
            addr = f"{host}:{free_port(host)}"
            p = subprocess.Popen([sys.executable, DEVICE, "--address", addr, "--instance", str(7000 + i),
                                  "--objects", str(objects)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            if not p.stdout.readline().startswith("READY"):
                raise RuntimeError("a test device did not start")
            procs.append(p)
            devs.append((7000 + i, addr))
        path = os.path.join(tmp, "gatewayd.toml")
        with open(path, "w") as fh:
            fh.write(site_toml(tmp, site(devs, objects, interval)))
        with DaemonProcess(path) as d:
            d.wait_ready(60)
            sock = os.path.join(tmp, "var", "gatewayd.sock")
            want = n_dev * objects
            deadline = time.monotonic() + 120
            while driver_status(sock).get("values", 0) < want:  # warm-up: one full cycle
                if time.monotonic() > deadline:
                    raise RuntimeError("the first poll cycle did not complete")
                time.sleep(0.2)
            s0, c0, t0 = driver_status(sock), cpu_seconds(d.proc.pid), time.monotonic()
            time.sleep(seconds)
            s1, c1, t1 = driver_status(sock), cpu_seconds(d.proc.pid), time.monotonic()
            rss = rss_mb(d.proc.pid)
        dt = t1 - t0
        values = s1["values"] - s0["values"]
        props = s1["properties"] - s0["properties"]
        reqs = s1["requests"] - s0["requests"]
        cycles = sum(s1["devices"][k]["cycles"] - s0["devices"][k]["cycles"] for k in s1["devices"]) / n_dev
        return {"interval": interval, "props/s": props / dt, "values/s": values / dt,
                "req/cycle": reqs / cycles if cycles else float("nan"), "cycles": cycles,
                "cpu%": 100 * (c1 - c0) / dt, "cpu-s/Mvalues": (c1 - c0) / values * 1e6 if values else float("nan"),
                "rss_mb": rss, "errors": s1["errors"] - s0["errors"]}
    finally:
        for p in procs:
            try:
                p.stdin.write("quit\n")
                p.stdin.flush()
                p.wait(5)
            except Exception:
                p.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--objects", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--no-saturation", action="store_true")
    a = ap.parse_args()
    rows = [run(a.devices, a.objects, "5s", a.seconds)]
    if not a.no_saturation:
        rows.append(run(a.devices, a.objects, "50ms", min(a.seconds, 15.0)))
    cols = ["props/s", "values/s", "req/cycle", "cycles", "cpu%", "cpu-s/Mvalues", "rss_mb", "errors"]
    print(f"{a.devices} devices x {a.objects} objects (present-value + status-flags each), "
          f"window {a.seconds:g}s")
    print(f"{'poll_interval':>14}" + "".join(f"{c:>15}" for c in cols))
    for r in rows:
        print(f"{r['interval']:>14}" + "".join(f"{r[c]:>15.2f}" if isinstance(r[c], float) else f"{r[c]:>15}"
                                              for c in cols))


if __name__ == "__main__":
    main()
