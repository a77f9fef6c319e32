"""A BACnet network whose UDP port is taken: the start error names the address and who holds it."""

import os
import socket
from pathlib import Path

import trio

from gatewayd.testing import run_gateway

from bacnet_helpers import bacnet_site, free_udp_port
from gatewayd_bacnet.bindcheck import udp_port_holders


async def test_port_in_use_names_the_address_and_the_holder(tmp_path):
    port = free_udp_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", port))
    try:
        async with run_gateway(tmp_path, bacnet_site([], port=port)) as gw:
            r = gw.drivers["bac"]
            with trio.fail_after(15):
                await r.ready.wait()
            assert r.state == "backoff"
            me = f"pid {os.getpid()}"
            assert f"network main: cannot bind UDP 127.0.0.1:{port}: address already in use" in r.last_error
            assert me in r.last_error, r.last_error
    finally:
        taken.close()


def test_holders_of_a_port_from_proc():
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        holders = udp_port_holders("127.0.0.1", port)
        comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
        assert (os.getpid(), comm) in holders
        assert udp_port_holders("0.0.0.0", port) == holders  # the wildcard overlaps every address
    assert udp_port_holders("127.0.0.1", port) == []


async def test_address_not_on_this_host(tmp_path):
    async with run_gateway(tmp_path, bacnet_site([], local="192.0.2.77")) as gw:
        r = gw.drivers["bac"]
        with trio.fail_after(15):
            await r.ready.wait()
        assert "network main: cannot bind UDP 192.0.2.77:" in r.last_error
        assert "the address is not on this host" in r.last_error, r.last_error
