"""Peer credentials and the role map, with real and with made-up credentials."""

from __future__ import annotations

import grp
import os
import pwd
import socket

import pytest

from gatewayd.rpc import PeerCred, Role, RoleMap, actor_name, peer_credentials, resolve_role
from gatewayd.rpc import auth

NOBODY_UID = 4_000_000  # no such user here


def test_peer_credentials_are_the_kernels():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_credentials(a) == PeerCred(os.getpid(), os.geteuid(), os.getegid())


def test_actor_name():
    assert actor_name(0) == f"uid:0({pwd.getpwuid(0).pw_name})"
    assert actor_name(NOBODY_UID) == f"uid:{NOBODY_UID}"


def test_root_and_our_own_uid_are_always_admin():
    rm = RoleMap.from_config()  # nobody listed
    assert rm.role_for(0, 0) is Role.ADMIN
    assert rm.role_for(os.geteuid(), 12345) is Role.ADMIN
    assert rm.role_for(NOBODY_UID, NOBODY_UID) is None


def test_entries_and_the_highest_role_wins(monkeypatch):
    root_user, root_group = pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name
    rm = RoleMap.from_config(admin=["uid:4242"], operator=["gid:27", f"group:{root_group}"],
                             viewer=["*", f"user:{root_user}"])
    assert rm.role_for(4242, 1) is Role.ADMIN          # uid entry
    assert rm.role_for(NOBODY_UID, 27) is Role.OPERATOR  # primary gid
    assert rm.role_for(NOBODY_UID, 0) is Role.OPERATOR  # group name
    assert rm.role_for(NOBODY_UID, 99) is Role.VIEWER   # "*"
    assert RoleMap.from_config(operator=["uid:4242"], viewer=["uid:4242"]).role_for(4242, 1) is Role.OPERATOR


def test_supplementary_groups_count(monkeypatch):
    # a user whose primary group is 100 and who is also in group 27
    class Pw:
        pw_name = "alice"

    real = pwd.getpwuid
    monkeypatch.setattr(auth.pwd, "getpwuid", lambda uid: Pw() if uid == 1000 else real(uid))
    monkeypatch.setattr(auth.os, "getgrouplist", lambda name, gid: [gid, 27] if name == "alice" else [gid])
    rm = RoleMap.from_config(operator=["gid:27"])
    assert auth.groups_of(1000, 100) == {100, 27}
    assert rm.role_for(1000, 100) is Role.OPERATOR
    assert rm.role_for(1001, 100) is None  # no user name: only its primary gid counts


@pytest.mark.parametrize("kwargs,message", [
    ({"viewer": ["group:surely-not-a-group"]}, "[control] viewer: no such group 'surely-not-a-group' "
                                               "(entry 'group:surely-not-a-group')"),
    ({"admin": ["user:surely-not-a-user"]}, "[control] admin: no such user 'surely-not-a-user' "
                                            "(entry 'user:surely-not-a-user')"),
    ({"operator": ["uid:abc"]}, "[control] operator: 'uid:abc': uid needs a non-negative number"),
    ({"operator": ["gid:-1"]}, "[control] operator: 'gid:-1': gid needs a non-negative number"),
    ({"viewer": ["alice"]}, "[control] viewer: 'alice' must be uid:N, user:NAME, gid:N, group:NAME or *"),
    ({"viewer": ["host:x"]}, "[control] viewer: 'host:x' must be uid:N, user:NAME, gid:N, group:NAME or *"),
    ({"viewer": [1000]}, "[control] viewer: entry 1000 must be a string"),
    ({"viewer": "*"}, "[control] viewer: expected a list of entries, got the string '*'"),
])
def test_bad_entries_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as e:
        RoleMap.from_config(**kwargs)
    assert str(e.value) == message


def test_resolve_role_takes_a_map_or_a_hook():
    cred = PeerCred(1, NOBODY_UID, NOBODY_UID)
    assert resolve_role(RoleMap.from_config(viewer=["*"]), cred) is Role.VIEWER
    assert resolve_role(RoleMap.from_config(), cred) is None
    assert resolve_role(lambda c: 2 if c.uid == NOBODY_UID else None, cred) is Role.OPERATOR
    with pytest.raises(TypeError, match="role_map must be a RoleMap or a callable"):
        resolve_role(42, cred)
