"""BACnet/IPv6 (Annex U) for bacpypes3: the link layer its Application does not wire.

bacpypes3 ships the pieces (``bacpypes3.ipv6``: the UDP server that joins the
link-local multicast group FF02::BAC0, the BVLL codec, ``BIPNormal`` with its
virtual-MAC table and the address-resolution service element) but
``Application.from_json`` refuses IPv6 network ports. :class:`IPv6Link` stacks
them the way bacpypes3's IPv4 ``NormalLinkLayer`` stacks its own:

    NetworkServiceAccessPoint -> IPv6Link (BIPNormal) -> BVLLCodec -> IPv6DatagramServer
                                    `-- BVLLServiceElement (address resolution)

Stations on a BACnet/IPv6 network are addressed by their 3-octet virtual MAC
address (VMAC, written ``0x0004d2``); by default a device's VMAC is its device
instance (Clause H.7.2 / U.5), which :func:`vmac_for_instance` computes. The
VMAC of a peer is learned from every frame it sends (I-Am answers included) or
resolved with an Address-Resolution multicast; :meth:`IPv6Link.learn` seeds it
for networks where multicast does not reach (``peers`` in the network's TOML).
"""

from __future__ import annotations

import re

from bacpypes3.comm import bind
from bacpypes3.ipv6 import IPv6DatagramServer
from bacpypes3.ipv6.bvll import BVLLCodec
from bacpypes3.ipv6.service import BIPNormal, BVLLServiceElement
from bacpypes3.pdu import Address, IPv6Address, VirtualAddress

__all__ = ["IPv6Link", "vmac_for_instance", "parse_vmac", "parse_ipv6", "station_address"]

_VMAC = re.compile(r"^0x[0-9a-fA-F]{6}$")


def vmac_for_instance(instance: int) -> str:
    """The default VMAC of a device: its instance number in 3 octets (``0x0004d2`` for 1234)."""
    if not 0 <= instance < 1 << 22:
        raise ValueError(f"device instance {instance} is outside 0..4194303")
    return f"0x{instance:06x}"


def parse_vmac(text: str) -> VirtualAddress:
    """``"0x0004d2"`` -> VirtualAddress; a clear ValueError otherwise."""
    if not _VMAC.match(text or ""):
        raise ValueError(f"{text!r} is not a virtual MAC address (3 octets, e.g. \"0x0004d2\")")
    return VirtualAddress(text)


def parse_ipv6(text: str, port: int = 47808) -> IPv6Address:
    """``"[fd00::5]:47808"``, ``"fd00::5"`` or ``"[fe80::1%eth0]:47808"`` -> IPv6Address."""
    bad = f"{text!r} is not an IPv6 address (e.g. \"fd00::5\" or \"[fd00::5]:47808\")"
    t = text.strip()
    try:
        if t.startswith("["):
            host, _, rest = t[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
            elif rest:
                raise ValueError(bad)
        else:
            host = t
        host, _, scope = host.partition("%")
        return IPv6Address(host, port=port, interface=scope or None)
    except (ValueError, OSError):
        raise ValueError(bad) from None


def station_address(text: str, ipv6: bool) -> Address:
    """A device address as bacpypes3 needs it: on an IPv6 network a local station is its VMAC."""
    if ipv6 and _VMAC.match(text):
        return VirtualAddress(text)
    return Address(text)


class IPv6Link(BIPNormal):
    """A normal (not foreign, not BBMD) BACnet/IPv6 link bound to one local address."""

    def __init__(self, local: IPv6Address, vmac: VirtualAddress) -> None:
        BIPNormal.__init__(self, virtual_address=vmac)
        self.codec = BVLLCodec()
        self.server = IPv6DatagramServer(local)
        bind(self, self.codec, self.server)
        self.bse = BVLLServiceElement()
        bind(self.bse, self)

    def learn(self, vmac: str, address: str) -> None:
        """Seed the VMAC table: ``vmac`` lives at ``address`` (``[host]:port``)."""
        self.vmac_addr_table[parse_vmac(vmac)] = parse_ipv6(address)

    def close(self) -> None:
        self.server.close()
