"""Who holds a UDP port: for a clear "cannot bind" message (Linux /proc; elsewhere nobody is named)."""

from __future__ import annotations

import ipaddress
import os
import socket


def _proc_sockets(port: int, host: str) -> set[str]:
    """Socket inodes bound to ``port`` on ``host`` or on the wildcard address (either covers the other)."""
    want = ipaddress.ip_address(host)
    inodes: set[str] = set()
    for table, width in (("/proc/net/udp", 4), ("/proc/net/udp6", 16)):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            addr_hex, _, port_hex = f[1].partition(":")
            if int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # /proc prints each 32-bit word in host order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if socket.htonl(1) != 1 else raw
            addr = ipaddress.ip_address(raw) if len(raw) == width else None
            if addr is None:
                continue
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            if addr.is_unspecified or want.is_unspecified or addr == want:
                inodes.add(f[9])
    return inodes


def udp_port_holders(host: str, port: int) -> list[tuple[int, str]]:
    """``(pid, command)`` of the processes whose UDP socket holds ``host:port`` (or the port on the
    wildcard address), as far as this process may look into ``/proc``; ``[]`` when unknown."""
    try:
        inodes = _proc_sockets(port, host)
    except ValueError:
        return []
    if not inodes:
        return []
    targets = {f"socket:[{i}]" for i in inodes}
    out: list[tuple[int, str]] = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if link in targets:
                try:
                    with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
                        comm = fh.read().strip()
                except OSError:
                    comm = "?"
                out.append((int(pid), comm))
                break
    return sorted(out)


def describe_holders(host: str, port: int) -> str:
    """``"held by pid 812 (bacserv)"`` or ``"held by another process"`` for a bind error message."""
    holders = udp_port_holders(host, port)
    if not holders:
        return "held by another process (not visible to this user)" if os.path.isdir("/proc") else \
            "held by another process"
    return "held by " + ", ".join(f"pid {pid} ({comm})" for pid, comm in holders)


def probe_bind(host: str, port: int) -> str | None:
    """Try to bind ``host:port`` (UDP) the way the stack will; a message naming the address and,
    for "in use", who holds it, or ``None`` when the bind works."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind((host, port))
    except OSError as e:
        import errno

        where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if e.errno == errno.EADDRINUSE:
            return f"cannot bind UDP {where}: address already in use, {describe_holders(host, port)}"
        if e.errno == errno.EADDRNOTAVAIL:
            return f"cannot bind UDP {where}: the address is not on this host"
        if e.errno == errno.EACCES:
            return f"cannot bind UDP {where}: permission denied (ports below 1024 need privileges)"
        return f"cannot bind UDP {where}: {e.strerror or e}"
    finally:
        s.close()
    return None
