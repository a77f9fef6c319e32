"""Who is on the other end of the control socket, and which role that gives.

The kernel tells the uid/gid/pid of the peer (``SO_PEERCRED``: the credentials
it had when it connected; nobody can forge them). :class:`RoleMap` maps them to
a :class:`~gatewayd.rpc.registry.Role` from the ``[control]`` lists::

    [control]
    admin = ["group:gatewayd-admin"]
    operator = ["user:alice", "gid:27"]
    viewer = ["*"]
    audit = ["role:operator", "group:auditors"]

Group entries match the peer's primary gid and the supplementary groups of its
user (``os.getgrouplist``, i.e. ``/etc/group`` and NSS, as at login).

Besides its role, a peer may hold **grants**: permissions outside the
viewer < operator < admin ladder. ``audit`` (reading the audit log, OpenCrate's
ViewAudit) is the one there is: given by the ``[control] audit`` list, whose
entries are those above plus ``role:viewer|operator|admin`` (everyone with at
least that role). The default is ``["role:operator"]``; admins always hold it.
A grant gives no access by itself: the peer still needs a role to connect.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from .registry import AUDIT, GRANTS, Role, default_grants

__all__ = ["PeerCred", "peer_credentials", "RoleMap", "actor_name", "groups_of", "resolve_role", "resolve_grants",
           "GRANTS", "AUDIT", "DEFAULT_AUDIT"]

#: the default ``[control] audit`` list: operators and admins read the audit log
DEFAULT_AUDIT = ("role:operator",)


@dataclass(frozen=True)
class PeerCred:
    """Credentials of the peer process: ``pid``, effective ``uid`` and ``gid``."""

    pid: int
    uid: int
    gid: int


_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }


def peer_credentials(sock: socket.socket) -> PeerCred:
    """pid/uid/gid of the process at the other end of a connected AF_UNIX socket.

    Works on any object with ``getsockopt`` (a stdlib or a trio socket).
    """
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def actor_name(uid: int) -> str:
    """``"uid:1000(alice)"``; ``"uid:1234"`` when the uid has no user name."""
    try:
        return f"uid:{uid}({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid:{uid}"


def groups_of(uid: int, gid: int) -> frozenset[int]:
    """``gid`` plus the supplementary groups of ``uid``'s user (just ``gid`` without a user)."""
    try:
        name = pwd.getpwuid(uid).pw_name
        return frozenset(os.getgrouplist(name, gid)) | {gid}
    except (KeyError, OSError):
        return frozenset((gid,))


class RoleMap:
    """The ``[control]`` lists: entries ``"uid:1000"``, ``"user:alice"``, ``"gid:27"``,
    ``"group:gatewayd"`` or ``"*"`` (anyone who can open the socket).

    The highest matching role wins; root (uid 0) and the daemon's own uid are
    always admin; no match means no access (None). Names are resolved once,
    here: an unknown user or group, or a malformed entry, is a ``ValueError``
    naming the entry.
    """

    def __init__(self, admin: Iterable[str] = (), operator: Iterable[str] = (), viewer: Iterable[str] = (),
                 audit: Iterable[str] = DEFAULT_AUDIT) -> None:
        self.rules: list[tuple[Role, str, int | None]] = []
        for role, entries in ((Role.ADMIN, admin), (Role.OPERATOR, operator), (Role.VIEWER, viewer)):
            if isinstance(entries, str):
                raise ValueError(f"[control] {role.label}: expected a list of entries, got the string {entries!r}")
            for e in entries:
                self.rules.append((role, *self._parse(role.label, e)))
        if isinstance(audit, str):
            raise ValueError(f"[control] audit: expected a list of entries, got the string {audit!r}")
        self.audit_rules: list[tuple[str, int | None]] = [self._parse("audit", e, roles=True) for e in audit]

    @classmethod
    def from_config(cls, *, admin: Iterable[str] = (), operator: Iterable[str] = (),
                    viewer: Iterable[str] = (), audit: Iterable[str] = DEFAULT_AUDIT) -> "RoleMap":
        """The map for the ``admin``/``operator``/``viewer``/``audit`` lists of ``[control]``."""
        return cls(admin, operator, viewer, audit)

    @staticmethod
    def _parse(key: str, entry: str, *, roles: bool = False) -> tuple[str, int | None]:
        where = f"[control] {key}"
        if not isinstance(entry, str):
            raise ValueError(f"{where}: entry {entry!r} must be a string")
        if entry.strip() == "*":
            return "*", None
        kind, sep, val = entry.partition(":")
        kind, val = kind.strip(), val.strip()
        if roles and kind == "role" and sep:
            try:
                return "role", int(Role.parse(val))
            except ValueError:
                raise ValueError(f"{where}: {entry!r}: role must be viewer, operator or admin") from None
        if not sep or kind not in ("uid", "gid", "user", "group") or not val:
            raise ValueError(f"{where}: {entry!r} must be uid:N, user:NAME, gid:N, group:NAME"
                             + (", role:NAME" if roles else "") + " or *")
        if kind in ("uid", "gid"):
            if not val.isdigit():
                raise ValueError(f"{where}: {entry!r}: {kind} needs a non-negative number")
            return kind, int(val)
        try:
            if kind == "user":
                return "uid", pwd.getpwnam(val).pw_uid
            return "gid", grp.getgrnam(val).gr_gid
        except KeyError:
            raise ValueError(f"{where}: no such {kind} {val!r} (entry {entry!r})") from None

    def role_for(self, uid: int, gid: int) -> Role | None:
        """The role of a peer with these credentials, or None for no access."""
        if uid == 0 or uid == os.geteuid():
            return Role.ADMIN
        groups: frozenset[int] | None = None
        best: Role | None = None
        for role, kind, val in self.rules:
            if best is not None and role <= best:
                continue
            if kind == "*" or (kind == "uid" and val == uid):
                best = role
            elif kind == "gid":
                if groups is None:
                    groups = groups_of(uid, gid)
                if val in groups:
                    best = role
        return best

    def grants_for(self, uid: int, gid: int, role: Role | None) -> frozenset[str]:
        """The grants (``{"audit"}`` or none) of a peer with these credentials and ``role``."""
        if role is None:
            return frozenset()
        if role >= Role.ADMIN:
            return GRANTS
        groups: frozenset[int] | None = None
        for kind, val in self.audit_rules:
            if kind == "*" or (kind == "uid" and val == uid) or (kind == "role" and role >= val):
                return frozenset((AUDIT,))
            if kind == "gid":
                if groups is None:
                    groups = groups_of(uid, gid)
                if val in groups:
                    return frozenset((AUDIT,))
        return frozenset()

    def __call__(self, cred: PeerCred) -> Role | None:
        return self.role_for(cred.uid, cred.gid)

    def __repr__(self) -> str:
        return f"RoleMap({self.rules!r}, audit={self.audit_rules!r})"


RoleResolver = Callable[[PeerCred], "Role | None"]


def resolve_role(role_map: object, cred: PeerCred) -> Role | None:
    """Apply what ``serve_unix`` was given as ``role_map``.

    Anything with ``role_for(uid, gid)`` (a :class:`RoleMap` or a subclass), or
    a plain callable ``(PeerCred) -> Role | None`` (a hook for tests and for
    other policies).
    """
    role_for = getattr(role_map, "role_for", None)
    if role_for is not None:
        role = role_for(cred.uid, cred.gid)
    elif callable(role_map):
        role = role_map(cred)
    else:
        raise TypeError(f"role_map must be a RoleMap or a callable, not {type(role_map).__name__}")
    return None if role is None else Role(role)


def resolve_grants(role_map: object, cred: PeerCred, role: Role | None) -> frozenset[str]:
    """The grants of a peer: ``role_map.grants_for(uid, gid, role)`` when it has one, else the
    defaults (admin: all; operator: ``audit``; viewer: none), as ``[control] audit`` defaults to."""
    if role is None:
        return frozenset()
    grants_for = getattr(role_map, "grants_for", None)
    if grants_for is not None:
        return frozenset(grants_for(cred.uid, cred.gid, role))
    return default_grants(role)
