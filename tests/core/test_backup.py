"""Backups: consistent while writing, listed, retention, offline restore with its refusals."""

import json
import os
import subprocess
import sys

import apsw
import pytest

from gatewayd.backup import BackupError, list_backups, restore_backup
from gatewayd.testing import rpc, run_gateway, wait_until

SITE = """
[history]
flush_interval = "50ms"
[backup]
retention = 2
[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "5ms"
[drivers.c.devices.d]
[drivers.c.devices.d.points.n]
[drivers.c.devices.d.points.m]
step = 3
[connectors.col]
type = "collector"
plugin = "ext_plugins.collector"
"""


def count(path, table="sample"):
    c = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert c.execute("pragma integrity_check").fetchone()[0] == "ok"
        return c.execute(f"select count(*) from {table}").fetchone()[0]
    finally:
        c.close()


async def test_backup_while_writing_is_consistent_and_retention_keeps_n(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 200)
        made = []
        for _ in range(3):
            m = await rpc(gw, "backup.run")  # the counter keeps writing all along
            made.append(m["path"])
            assert set(m["files"]) == {"state", "history", "outbox"}
            assert count(os.path.join(m["path"], "history.db")) > 0
            await wait_until(gw, lambda n=gw.recorder.samples_written: gw.recorder.samples_written > n + 20)
        listed = await rpc(gw, "backup.list")
        assert [b["path"] for b in listed] == made[::-1][:2]  # retention = 2, newest first
        assert not os.path.exists(made[0])
        audit = await rpc(gw, "audit.list", {"action": "backup.run"})
        assert len(audit) == 3


async def test_restore_refuses_while_running_then_restores_and_keeps_previous_files(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 100)
        m = await rpc(gw, "backup.run")
        with pytest.raises(BackupError, match="gatewayd is running"):
            restore_backup(m["path"], gw.config.gateway.state_dir, socket_path=gw.config.control.socket)
        sock = gw.config.control.socket
        state_dir = gw.config.gateway.state_dir
        await wait_until(gw, lambda: gw.recorder.samples_written > 400)
    in_backup = count(os.path.join(m["path"], "history.db"))
    now = count(os.path.join(state_dir, "history.db"))
    assert now > in_backup
    res = restore_backup(m["path"], state_dir, socket_path=sock)
    assert sorted(res["restored"]) == ["history.db", "outbox.db", "state.db"]
    assert count(os.path.join(state_dir, "history.db")) == in_backup
    assert count(os.path.join(res["previous_files"], "history.db")) == now  # the previous files are kept


def make_backup(tmp_path, version=1):
    b = tmp_path / "bk"
    b.mkdir()
    c = apsw.Connection(str(b / "state.db"))
    c.execute(f"create table x(a); pragma user_version={version}")
    c.close()
    import hashlib
    digest = hashlib.sha256((b / "state.db").read_bytes()).hexdigest()
    (b / "manifest.json").write_text(json.dumps({"files": {"state": {"file": "state.db", "sha256": digest,
                                                                     "schema_version": version}}}))
    return b


def test_restore_refuses_a_newer_schema_and_damage(tmp_path):
    b = make_backup(tmp_path, version=99)
    with pytest.raises(BackupError, match="schema version 99, newer than this gatewayd"):
        restore_backup(str(b), str(tmp_path / "state"))
    assert not (tmp_path / "state" / "state.db").exists()
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["state"]["sha256"] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BackupError, match="does not match its checksum"):
        restore_backup(str(b), str(tmp_path / "state"))
    with pytest.raises(BackupError, match="not a gatewayd backup"):
        restore_backup(str(tmp_path), str(tmp_path / "state"))
    assert list_backups(str(tmp_path / "nowhere")) == []


def test_gatewayctl_backup_restore_cli(tmp_path):
    b = make_backup(tmp_path)
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}/st"\n[control]\nsocket = "{tmp_path}/st/s.sock"\n')
    os.makedirs(tmp_path / "st")
    (tmp_path / "st" / "state.db").write_bytes(b"old")
    r = subprocess.run([sys.executable, "-m", "gatewayd.cli", "backup", "restore", str(b), "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "restored state.db into" in r.stdout and "previous files kept in" in r.stdout


def test_restore_twice_keeps_both_previous_sets_and_gives_files_the_state_dirs_owner(tmp_path):
    b = make_backup(tmp_path)
    st = tmp_path / "st"
    st.mkdir()
    (st / "state.db").write_bytes(b"original")
    if os.geteuid() == 0:
        os.chown(st, 65534, 65534)  # like /var/lib/gatewayd, owned by the service user
    first = restore_backup(str(b), str(st))
    second = restore_backup(str(b), str(st))  # same second: must not overwrite the first set aside
    assert first["previous_files"] != second["previous_files"]
    assert (tmp_path / "st" / os.path.basename(first["previous_files"]) / "state.db").read_bytes() == b"original"
    if os.geteuid() == 0:
        assert os.stat(st / "state.db").st_uid == 65534  # the service can open what root restored


def test_restore_refuses_when_it_cannot_tell_whether_the_daemon_runs(tmp_path, monkeypatch):
    import socket as socket_mod

    b = make_backup(tmp_path)
    sock = tmp_path / "control.sock"
    sock.write_bytes(b"")

    def denied(self, addr):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket_mod.socket, "connect", denied)
    with pytest.raises(BackupError, match="cannot tell whether gatewayd is running"):
        restore_backup(str(b), str(tmp_path / "st"), socket_path=str(sock))
    assert not (tmp_path / "st").exists()


async def test_scheduled_backups_every_interval_keep_retention(tmp_path, autojump_clock, monkeypatch):
    """backup_loop on a mock clock: the first backup soon after start, then one per interval, the
    oldest beyond retention removed, the schedule kept across restarts, a reload applied."""
    import datetime
    import types

    import trio

    import gatewayd.backup as mod
    from gatewayd.backup import backup_loop

    cfg = types.SimpleNamespace(
        gateway=types.SimpleNamespace(id="gw", state_dir=str(tmp_path)),
        backup=types.SimpleNamespace(dir=str(tmp_path / "bk"), interval=3600.0, retention=3),
        outbox=types.SimpleNamespace(memory=False))
    gw = types.SimpleNamespace(config=cfg)
    made = []

    async def fake_run_backup(g, dest_dir=None):  # no threads: the mock clock jumps freely
        path = tmp_path / "bk" / f"b{len(made):03d}"
        path.mkdir(parents=True)
        created = datetime.datetime.now(datetime.timezone.utc).isoformat()
        (path / "manifest.json").write_text(json.dumps({"created": created, "files": {}}))
        made.append((trio.current_time(), str(path)))
        mod._apply_retention(str(tmp_path / "bk"), g.config.backup.retention)

    monkeypatch.setattr(mod, "run_backup", fake_run_backup)
    t0 = trio.current_time()
    with trio.move_on_after(4 * 3600 + 120):
        await backup_loop(gw)
    assert [round(t - t0) for t, _ in made] == [60, 3660, 7260, 10860, 14460]
    assert [b["path"] for b in list_backups(str(tmp_path / "bk"))] == [p for _, p in made][::-1][:3]
    # restarted: the schedule continues from the newest backup on disk, not from the start
    made.clear()
    with trio.move_on_after(3000):
        await backup_loop(gw)
    assert made == []
    with trio.move_on_after(3600):
        await backup_loop(gw)
    assert len(made) == 1
    # a reload that unsets the interval stops scheduled backups
    cfg.backup.interval = None
    made.clear()
    with trio.move_on_after(5 * 3600):
        await backup_loop(gw)
    assert made == []
