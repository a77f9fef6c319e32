"""Footprint: installed size (Modbus+MQTT set vs everything), idle RSS, exec -> READY time.

Installs the payload exactly as the .deb does (pip --target) for two extras sets and
measures the trees; runs `gatewayd run` on the packaged default configuration (no
devices) and on the embedded demo site, and reports RSS after 5 s idle and the
time from exec to READY=1 (sd_notify). Prints figures; asserts nothing.
"""

import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gatewayd.testing import DaemonProcess, site_toml  # noqa: E402


def tree_size(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def payload_size(extras, wheel, tmp):
    target = os.path.join(tmp, f"site-{extras.replace(',', '-')}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", target,
                    f"gatewayd[{extras}] @ file://{wheel}"], check=True)
    return tree_size(target) / 1e6


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_site(name, body, tmp):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    path = os.path.join(d, "gatewayd.toml")
    with open(path, "w") as fh:
        fh.write(site_toml(d, body))
    t0 = time.monotonic()
    with DaemonProcess(path) as p:
        p.wait_ready(60)
        ready = time.monotonic() - t0
        time.sleep(5)
        rss = rss_mb(p.proc.pid)
    return ready, rss


def main():
    with tempfile.TemporaryDirectory(prefix="gwfoot-") as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp, ROOT], check=True)
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        small = payload_size("modbus,mqtt", wheel, tmp)
        full = payload_size("all", wheel, tmp)
        print(f"installed payload, Modbus+MQTT : {small:7.1f} MB")
        print(f"installed payload, everything  : {full:7.1f} MB   (ratio x{full / small:.2f})")
        empty = run_site("empty", "", tmp)
        with open(os.path.join(ROOT, "etc", "gatewayd.toml")) as fh:
            demo_body = fh.read().split("# ---------------------------------------------------------------- simulated devices")[1]
        demo = run_site("demo", demo_body, tmp)
        print(f"packaged default (no devices) : READY {empty[0]:5.2f} s after exec, idle RSS {empty[1]:5.1f} MB")
        print(f"demo site (3 sim devices)     : READY {demo[0]:5.2f} s after exec, idle RSS {demo[1]:5.1f} MB")
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", "import gatewayd.daemon, gatewayd.api, gatewayd.store"], check=True)
        print(f"python -c 'import gatewayd core' : {time.monotonic() - t0:5.2f} s (interpreter start included)")


if __name__ == "__main__":
    main()
