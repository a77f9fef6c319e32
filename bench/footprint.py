"""Footprint: installed size (Modbus+MQTT set vs everything), idle RSS, exec -> READY time.

Builds the .deb for two extras sets (packaging/debian/build-deb.sh; without dpkg-deb,
installs the payload with pip --target) and reports Installed-Size and .deb size; runs
`gatewayd run` on the packaged default configuration (no devices) and on the embedded
demo site, and reports RSS after 5 s idle and the time from exec to READY=1 (sd_notify).
Prints figures; asserts nothing.
"""

import os
import shutil
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
    """(installed MB, .deb MB or None): the real package when dpkg-deb is there, else pip --target."""
    if shutil.which("dpkg-deb"):
        out = os.path.join(tmp, f"deb-{extras.replace(',', '-')}")
        r = subprocess.run(["bash", os.path.join(ROOT, "packaging", "debian", "build-deb.sh"), out],
                           env={**os.environ, "PYTHON": sys.executable, "GATEWAYD_EXTRAS": extras},
                           capture_output=True, text=True, check=True)
        deb = r.stdout.strip().splitlines()[-1]
        kib = int(subprocess.run(["dpkg-deb", "-f", deb, "Installed-Size"], capture_output=True, text=True,
                                 check=True).stdout)
        return kib * 1024 / 1e6, os.path.getsize(deb) / 1e6
    target = os.path.join(tmp, f"site-{extras.replace(',', '-')}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--target", target,
                    f"gatewayd[{extras}] @ file://{wheel}"], check=True)
    return tree_size(target) / 1e6, None


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
        (small, small_deb), (full, full_deb) = payload_size("modbus,mqtt", wheel, tmp), payload_size("all", wheel, tmp)
        deb = (lambda mb: f", .deb {mb:5.1f} MB" if mb else " (pip --target, no dpkg-deb)")
        print(f"installed, Modbus+MQTT : {small:7.1f} MB{deb(small_deb)}")
        print(f"installed, everything  : {full:7.1f} MB{deb(full_deb)}   (ratio x{full / small:.2f})")
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
