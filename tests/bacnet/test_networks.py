"""Networks: foreign-device registration against a bacpypes3 BBMD (loopback), and broadcast
Who-Is in a real broadcast domain (a network namespace with a veth pair; root only)."""

import os
import shutil
import subprocess

import pytest
import trio

from gatewayd.testing import rpc, run_gateway, wait_until

from bacnet_helpers import free_udp_port


def _foreign_site(bbmd: str, *, ttl: int = 10, extra: str = "") -> str:
    return f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 598
apdu_timeout = "300ms"
apdu_retries = 1
poll_interval = "200ms"
[drivers.bac.networks.wan]
mode = "foreign"
address = "127.0.0.1"
port = {free_udp_port()}
bbmd_addr = "{bbmd}"
ttl = {ttl}
{extra}
"""


async def test_foreign_device_registration_and_discovery_through_bbmd(tmp_path, devices):
    bbmd = devices(4001, 9, "--bbmd", host="127.0.0.3")
    behind = devices(4002, 9, "--foreign", bbmd.addr, "--ttl", "30", host="127.0.0.4")
    async with run_gateway(tmp_path, _foreign_site(bbmd.addr, extra="reregister_at = 0.1")) as gw:
        inst = gw.drivers["bac"].instance
        st = inst.net_status["wan"]
        await inst.until(lambda: st.get("registration") == "registered", what="registered")
        # re-registration at 0.1 x ttl (1 s), long before the 10 s expire
        await inst.until(lambda: st.get("registrations", 0) >= 2, timeout=5, what="re-registration")
        nets = await rpc(gw, "bacnet.networks", {})
        assert nets["wan"]["registration"] == "registered" and nets["wan"]["bbmd"] == bbmd.addr
        # a global Who-Is goes to the BBMD as Distribute-Broadcast-To-Network and reaches its
        # foreign devices (the BBMD itself answers too)
        await trio.to_thread.run_sync(behind.cmd, "subs")  # the device is up and registered by now
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "timeout": 1.0, "objects": False})
        assert "wan:4002" in res["devices"] and "wan:4001" in res["devices"], res


async def test_foreign_registration_refused_is_reported(tmp_path, devices):
    plain = devices(4101, 9, host="127.0.0.5")  # not a BBMD: answers Register-Foreign-Device with a NAK
    async with run_gateway(tmp_path, _foreign_site(plain.addr)) as gw:
        inst = gw.drivers["bac"].instance
        st = inst.net_status["wan"]
        sub = gw.bus.subscribe("test:fd", maxlen=10_000)
        await inst.until(lambda: st.get("registration") == "failed", what="registration failure")
        assert "refused by the BBMD" in st["registration_error"]
        await wait_until(gw, lambda: sub.pending() > 0, what="event")
        evs = [e for e in sub.get_nowait() if e.kind == "driver_event" and e.name == "ForeignRegistrationFailed"]
        assert evs and evs[0].data["network"] == "wan"
        sub.close()


# ------------------------------------------------------------------ broadcast domain (netns)

def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create a network namespace and a veth pair"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"gwprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def broadcast_domain():
    """A namespace ``gwbn<pid>`` joined to the root namespace by a veth pair on 10.201.<n>.0/24:
    the test process is .1, devices in the namespace get .2, .3, ... . Removed afterwards."""
    why = _can_netns()
    if why:
        pytest.skip(f"broadcast Who-Is needs a broadcast domain: {why}")
    pid = os.getpid() % 10000
    ns, a, b = f"gwbn{pid}", f"gwv{pid}a", f"gwv{pid}b"
    net = f"10.201.{pid % 250 + 1}"
    cmds = [["ip", "netns", "add", ns],
            ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
            ["ip", "link", "set", b, "netns", ns],
            ["ip", "addr", "add", f"{net}.1/24", "dev", a],
            ["ip", "link", "set", a, "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
            ["ip", "netns", "exec", ns, "ip", "link", "set", b, "up"]]
    for host in (2, 3, 4):
        cmds.append(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.{host}/24", "dev", b])
    try:
        for c in cmds:
            subprocess.run(c, check=True, capture_output=True)
        yield ns, net
    finally:
        subprocess.run(["ip", "link", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.needs_root
async def test_global_who_is_in_a_broadcast_domain(tmp_path, devices, broadcast_domain):
    ns, net = broadcast_domain
    for host, inst in ((2, 5001), (3, 5002), (4, 5003)):
        devices(inst, 9, host=f"{net}.{host}/24", port=47808, netns=ns)
    site = f"""
[drivers.bac]
type = "bacnet"
server_device_instance = 597
apdu_timeout = "300ms"
[drivers.bac.networks.lan]
address = "{net}.1/24"
"""
    async with run_gateway(tmp_path, site) as gw:
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "timeout": 1.0, "objects": False})
        assert res["devices"] == ["lan:5001", "lan:5002", "lan:5003"], res
        res = await rpc(gw, "discovery.scan", {"driver": "bac", "timeout": 1.0, "low": 5002, "high": 5002,
                                               "objects": False})
        assert res["devices"] == ["lan:5002"]
        rows = {r["key"]: r["data"] for r in await rpc(gw, "discovery.list", {"driver": "bac"})}
        assert rows["lan:5003"]["address"] == f"{net}.4"  # port 47808 is implied
