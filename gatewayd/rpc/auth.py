"""Peer credentials (SO_PEERCRED) -> role, from the ``[control]`` lists."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from .registry import Role

__all__ = ["PeerCred", "peer_credentials", "RoleMap", "actor_name"]


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """pid/uid/gid of the process at the other end of a connected AF_UNIX socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCred(pid, uid, gid)


def actor_name(uid: int) -> str:
    """``"uid:1000(alice)"`` (name omitted when the uid has none)."""
    try:
        return f"uid:{uid}({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid:{uid}"


def _groups_of(uid: int, gid: int) -> set[int]:
    try:
        name = pwd.getpwuid(uid).pw_name
        return set(os.getgrouplist(name, gid))
    except (KeyError, OSError):
        return {gid}


class RoleMap:
    """Entries ``"uid:1000"``, ``"user:alice"``, ``"gid:27"``, ``"group:gatewayd"`` or ``"*"``.

    The highest matching role wins; root and the daemon's own uid are always admin;
    no match means no access.
    """

    def __init__(self, admin=(), operator=(), viewer=()) -> None:
        self.rules: list[tuple[Role, str, int | None]] = []
        for role, entries in ((Role.ADMIN, admin), (Role.OPERATOR, operator), (Role.VIEWER, viewer)):
            for e in entries:
                self.rules.append((role, *self._parse(e)))

    @classmethod
    def from_config(cls, *, admin=(), operator=(), viewer=()) -> "RoleMap":
        return cls(admin, operator, viewer)

    @staticmethod
    def _parse(entry: str) -> tuple[str, int | None]:
        if entry == "*":
            return "*", None
        kind, _, val = entry.partition(":")
        try:
            if kind == "uid":
                return "uid", int(val)
            if kind == "gid":
                return "gid", int(val)
            if kind == "user":
                return "uid", pwd.getpwnam(val).pw_uid
            if kind == "group":
                return "gid", grp.getgrnam(val).gr_gid
        except KeyError:
            raise ValueError(f"[control]: no such {kind} {val!r} (entry {entry!r})") from None
        except ValueError:
            raise ValueError(f"[control]: {entry!r}: {kind} needs a number") from None
        raise ValueError(f"[control]: {entry!r} must be uid:N, user:NAME, gid:N, group:NAME or *")

    def role_for(self, uid: int, gid: int) -> Role | None:
        if uid == 0 or uid == os.getuid():
            return Role.ADMIN
        groups = None
        best: Role | None = None
        for role, kind, val in self.rules:
            if best is not None and role <= best:
                continue
            if kind == "*" or (kind == "uid" and val == uid):
                best = role
            elif kind == "gid":
                if groups is None:
                    groups = _groups_of(uid, gid)
                if val in groups:
                    best = role
        return best
