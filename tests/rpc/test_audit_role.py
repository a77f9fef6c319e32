"""Reading the audit log needs the audit grant ([control] audit, default operator), checked for a real
other user (nobody) on the real control socket; audit.list pages are capped and paged by cursor."""

from __future__ import annotations

import shutil

import pytest
import trio

from gatewayd.rpc import RoleMap, Role
from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway
from rpc_support import NOBODY, as_nobody, public_dir

SITE = """
[control]
socket = "{sock}"
socket_mode = "0666"
{extra}

[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "50ms"
[drivers.c.devices.d1]
[drivers.c.devices.d1.points.n]
writable = true
"""


@pytest.fixture
def sockdir():
    d = public_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def nobody(sock, calls):
    return await trio.to_thread.run_sync(as_nobody, sock, calls)


async def test_a_viewer_cannot_read_the_audit_log_by_default(tmp_path, sockdir):
    sock = f"{sockdir}/ctl.sock"
    async with run_gateway(tmp_path, SITE.format(sock=sock, extra="")) as gw:
        await rpc(gw, "points.write", {"point": "d1/n", "value": 5})
        viewer = await nobody(sock, [("audit.list", {}), ("gateway.methods", {}),
                                     ("points.read", {"points": "d1/n"})])
        assert viewer[0]["code"] == -32001
        assert viewer[0]["error"] == ("permission denied: audit.list needs the audit role ([control] audit); "
                                      f"uid:{NOBODY}(nobody) (viewer) does not have it")
        assert "audit.list" not in {m["name"] for m in viewer[1]["result"]}
        assert viewer[2]["result"]["id"] == "d1/n"  # still a viewer
        # root (admin) reads it
        assert (await rpc(gw, "audit.list", {}))[0]["action"] == "points.write"


async def test_operators_read_the_audit_log_by_default(tmp_path, sockdir):
    sock = f"{sockdir}/ctl.sock"
    async with run_gateway(tmp_path, SITE.format(sock=sock, extra='operator = ["user:nobody"]')) as gw:
        await rpc(gw, "points.write", {"point": "d1/n", "value": 5})
        op = await nobody(sock, [("audit.list", {"limit": 5})])
        assert op[0]["result"][0]["action"] == "points.write"


async def test_the_audit_grant_is_configurable(tmp_path, sockdir):
    sock = f"{sockdir}/ctl.sock"
    async with run_gateway(tmp_path, SITE.format(sock=sock, extra='audit = ["role:viewer"]')) as gw:
        await rpc(gw, "points.write", {"point": "d1/n", "value": 5})
        assert (await nobody(sock, [("audit.list", {})]))[0]["result"][0]["action"] == "points.write"
    extra = 'operator = ["user:nobody"]\naudit = ["role:admin"]'
    async with run_gateway(tmp_path, SITE.format(sock=sock, extra=extra)):
        assert (await nobody(sock, [("audit.list", {})]))[0]["code"] == -32001


def test_role_map_audit_entries():
    rm = RoleMap.from_config(operator=["uid:4242"], viewer=["*"], audit=["uid:777", "role:operator"])
    assert rm.grants_for(0, 0, Role.ADMIN) == {"audit"}
    assert rm.grants_for(4242, 1, Role.OPERATOR) == {"audit"}
    assert rm.grants_for(777, 1, Role.VIEWER) == {"audit"}
    assert rm.grants_for(778, 1, Role.VIEWER) == frozenset()
    assert rm.grants_for(777, 1, None) == frozenset()  # a grant is no role: no access without one
    assert RoleMap.from_config().grants_for(5, 5, Role.OPERATOR) == {"audit"}  # default: operators
    with pytest.raises(ValueError, match=r"\[control\] audit: 'role:boss': role must be viewer, operator or admin"):
        RoleMap.from_config(audit=["role:boss"])
    with pytest.raises(ValueError, match=r"\[control\] admin: 'role:admin' must be uid:N"):
        RoleMap.from_config(admin=["role:admin"])


async def test_audit_list_is_capped_and_paged_by_cursor(tmp_path):
    async with run_gateway(tmp_path, SITE.format(sock=f"{tmp_path}/ctl.sock", extra="")) as gw:
        def fill(conn):
            # 2,500 entries, some sharing a timestamp (a page boundary may fall among them)
            conn.executemany("INSERT INTO audit(ts, actor, action, target, detail, ok) "
                             "VALUES (?, 'a', 'x', ?, '{}', 1)", [(1000.0 + i // 3, f"t{i}") for i in range(2500)])
        gw.state.db.write_sync(fill)
        with pytest.raises(RpcRemoteError, match=r"limit must be an integer 1\.\.1000 \(page with cursor="):
            await rpc(gw, "audit.list", {"limit": 10**9})
        seen, cursor = [], None
        while True:
            page = await rpc(gw, "audit.list", {"limit": 1000, **({"cursor": cursor} if cursor else {})})
            if not page:
                break
            assert len(page) <= 1000
            seen += [e["target"] for e in page]
            cursor = page[-1]["cursor"]
        assert len(seen) == 2500 and len(set(seen)) == 2500
        assert seen[0] == "t2499" and seen[-1] == "t0"
        with pytest.raises(RpcRemoteError, match="is not an audit cursor"):
            await rpc(gw, "audit.list", {"cursor": "yesterday"})
