"""Issue 11.11 on the real control socket: config.validate is admin-only, validates in a scratch plugin
registry and never echoes a secret; backup methods only take the configured backup directory."""

from __future__ import annotations

import logging
import shutil

import pytest
import trio

from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway
from rpc_support import NOBODY, as_nobody, public_dir

SITE = """
[control]
socket = "{sock}"
socket_mode = "0666"
operator = ["user:nobody"]

[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "50ms"
[drivers.c.devices.d1]
[drivers.c.devices.d1.points.n]
"""

SECRET = "{hunter2-Zq8}"  # a value a validator would quote a piece of (an unknown {placeholder})


@pytest.fixture
def sockdir():
    d = public_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_config_validate_is_admin_only(tmp_path, sockdir):
    sock = f"{sockdir}/ctl.sock"
    async with run_gateway(tmp_path, SITE.format(sock=sock)):
        (r,) = await trio.to_thread.run_sync(as_nobody, sock, [("config.validate", {"path": "/etc/passwd"})])
        assert r["code"] == -32001
        assert r["error"] == (f"permission denied: config.validate needs role admin, uid:{NOBODY}(nobody) "
                              "has operator")


async def test_config_validate_uses_a_scratch_registry_and_hides_secrets(tmp_path, monkeypatch, caplog):
    secret_file = tmp_path / "client-id"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("CTL_TEST_SECRET", "env-Secret-7731")
    other = tmp_path / "other.toml"
    other.write_text(f"""
[connectors.m]
type = "collector"
plugin = "ext_plugins.collector"

[connectors.q]
type = "mqtt"
client_id = {{ file = "{secret_file}" }}
username = {{ env = "CTL_TEST_SECRET" }}
password = {{ env = "CTL_TEST_SECRET" }}
host = {{ env = "CTL_TEST_SECRET" }}
port = 99999
""")
    caplog.set_level(logging.DEBUG)
    async with run_gateway(tmp_path, SITE.format(sock=f"{tmp_path}/ctl.sock")) as gw:
        before = dict(gw.registry.loaded)
        r = await rpc(gw, "config.validate", {"path": str(other)})
        assert r["ok"] is False and r["errors"], r
        text = str(r)
        assert "hunter2" not in text and "Zq8" not in text and "env-Secret-7731" not in text, text
        assert any("client_id" in e and "***" in e for e in r["errors"]), r["errors"]
        assert "hunter2" not in caplog.text and "env-Secret-7731" not in caplog.text
        # the plugins the file names were loaded into a registry thrown away: the daemon's is as it was
        assert dict(gw.registry.loaded) == before and "ext_plugins.collector" not in gw.registry.loaded
        assert gw.registry.get("connector", "collector") is None


async def test_backup_methods_take_only_the_configured_directory(tmp_path):
    async with run_gateway(tmp_path, SITE.format(sock=f"{tmp_path}/ctl.sock")) as gw:
        elsewhere = tmp_path / "elsewhere"
        for method in ("backup.run", "backup.list"):
            with pytest.raises(RpcRemoteError, match=rf"{method}: dir must be the configured backup directory "
                                                      r".*\(\[backup\] dir\), not '.*elsewhere'"):
                await rpc(gw, method, {"dir": str(elsewhere)})
        assert not elsewhere.exists()
        configured = f"{tmp_path}/var/backups"
        made = await rpc(gw, "backup.run", {"dir": configured})  # naming the configured one is fine
        assert made["path"].startswith(configured)
        assert [b["path"] for b in await rpc(gw, "backup.list", {})] == [made["path"]]
