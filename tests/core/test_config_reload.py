"""Reload that fails for any reason refuses, says why (file:line) and changes nothing;
plugins load on the registry's thread only; check-config checks what start needs.

Issue 11 items 8, 12, 16 and issue 12 item 20 (the big broken file).
"""

import grp
import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import pytest
import trio

from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import DaemonProcess, rpc, run_gateway, site_toml, wait_until

SITE = """
[drivers.a]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.a.devices.da]
[drivers.a.devices.da.points.n]

[drivers.b]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.b.devices.db]
[drivers.b.devices.db.points.n]
"""

def _lineno(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


async def test_config_reload_rpc_answers_file_line_and_changes_nothing(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        await wait_until(gw, lambda: gw.points.points["da/n"].status == "ok" and gw.points.points["db/n"].status == "ok")
        a0, b0 = gw.drivers["a"].instance, gw.drivers["b"].instance
        path = gw.config.path
        with open(path) as fh:
            good = fh.read()
        iv = _lineno(good, 'interval = "20ms"')  # drivers.a.interval
        for new, msg in (('interval = "20ms"\ninterval = "30ms"',
                          f"{path}:{iv + 1}:1: key 'drivers.a.interval' is defined twice (first defined at line {iv})"),
                         ('interval = "20ms"\nenabled = "yes"',
                          f"{path}:{iv + 1}:1: drivers.a.enabled must be true or false, not a string")):
            with open(path, "w") as fh:
                fh.write(good.replace('interval = "20ms"', new, 1))
            res = await rpc(gw, "config.reload")
            assert res == {"ok": False, "changed": [], "errors": [msg]}
            assert gw.drivers["a"].instance is a0 and gw.drivers["b"].instance is b0
            assert (await rpc(gw, "gateway.status"))["last_reload_error"] == res["errors"]
        # a reload that touches the config and then meets a store error refuses before stopping anything
        from gatewayd.store.db import StoreError

        def broken():
            raise StoreError("state.db: disk I/O error", "state.db")

        with open(path, "w") as fh:
            fh.write(good.replace('[drivers.b.devices.db.points.n]', '[drivers.b.devices.db.points.n]\nstep = 3', 1))
        real = gw.state.load_priority_arrays
        gw.state.load_priority_arrays = broken
        try:
            res = await rpc(gw, "config.reload")
        finally:
            gw.state.load_priority_arrays = real
        assert res["ok"] is False and "StoreError: state.db: disk I/O error" in res["errors"][0]
        assert res["errors"][0].startswith(f"{path}:1:1: ")
        assert gw.drivers["b"].instance is b0 and gw.drivers["b"].state == "running"
        # and the same file applies once the store answers again
        res = await rpc(gw, "config.reload")
        assert res["ok"] is True and res["changed"] == ["driver b restarted"]
        assert gw.drivers["a"].instance is a0


def test_sighup_with_a_broken_file_refuses_and_the_daemon_keeps_running(tmp_path):
    path = tmp_path / "gatewayd.toml"
    good = site_toml(tmp_path, SITE.replace('plugin = "ext_plugins.counter"\n', ""
                                            ).replace('type = "counter"', 'type = "sim"'
                                                      ).replace('interval = "20ms"', 'interval = "50ms"'
                                                                ).replace("[drivers.a.devices.da]",
                                                                          "[drivers.a.devices.da]\nmodel = \"meter\""
                                                                          ).replace("[drivers.a.devices.da.points.n]\n", ""
                                                                                    ).replace("[drivers.b.devices.db]",
                                                                                              "[drivers.b.devices.db]\nmodel = \"ahu\""
                                                                                              ).replace("[drivers.b.devices.db.points.n]\n", ""))
    path.write_text(good)
    with DaemonProcess(str(path)) as d:
        d.wait_ready()
        for old, new, expect in (
                ('interval = "50ms"', 'interval = "50ms"\ninterval = "60ms"', "key 'drivers.a.interval' is defined twice"),
                ('interval = "50ms"', 'interval = "50ms"\nenabled = "yes"', "drivers.a.enabled must be true or false"),
                ("[drivers.a]", '[drivers.a.devices.typo.points.x]\nsignal = "sine"\n[drivers.a]',
                 "is under device 'typo', which is not defined")):
            path.write_text(good.replace(old, new, 1))
            d.messages.clear()
            d.signal(signal.SIGHUP)
            d.wait_for("RELOADING=1")
            d.wait_for("READY=1")
            assert d.proc.poll() is None, d.log()
            log = d.log()
            assert f"reload (SIGHUP) refused, the running configuration is unchanged:\n{path}:" in log
            assert expect in log and "Traceback" not in log
        path.write_text(good.replace('interval = "50ms"', 'interval = "100ms"', 1))
        d.messages.clear()
        d.signal(signal.SIGHUP)
        d.wait_for("RELOADING=1")
        d.wait_for("READY=1")
        assert "reload (SIGHUP) applied: driver a restarted" in d.log()
        assert d.stop() == 0


# --------------------------------------------------------------------------- plugins on one thread (11.12)

PLUGIN = '''
import threading
from gatewayd.plugin import Driver, hookimpl

SEEN = []

class ThreadProbe(Driver):
    async def run(self, *, task_status):
        task_status.started()
        import trio
        await trio.sleep_forever()

@hookimpl(specname="gatewayd_register")
def register_types(registry):          # not named like the hook: only pluggy finds it
    SEEN.append(threading.get_ident())
    registry.add_driver("threadprobe", ThreadProbe)
'''


async def test_reload_loads_plugins_on_the_registry_thread_through_pluggy(tmp_path, monkeypatch):
    mod = "threadprobe_plugin_" + os.urandom(3).hex()
    (tmp_path / f"{mod}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    async with run_gateway(tmp_path, SITE) as gw:
        with open(gw.config.path, "a") as fh:
            fh.write(f'\n[drivers.t]\ntype = "threadprobe"\nplugin = "{mod}"\n')
        res = await rpc(gw, "config.reload")
        assert res["ok"] is True and "driver t added" in res["changed"], res
        probe = sys.modules[mod]
        assert probe.SEEN == [threading.get_ident()]  # the trio thread, not a worker thread
        await wait_until(gw, lambda: gw.drivers["t"].state == "running")
        # the registry refuses to be changed from another thread
        err = await trio.to_thread.run_sync(gw.registry.load_module, "ext_plugins.collector")
        assert err and "cannot be loaded from this thread" in err
        assert "ext_plugins.collector" not in gw.registry.loaded


# --------------------------------------------------------------------------- what start needs (11.16)

def _check_config(path):
    return subprocess.run([sys.executable, "-m", "gatewayd", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=str(path.parent))


def test_check_config_and_reload_refuse_what_start_would_die_on(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(f'''\
        [gateway]
        state_dir = "{tmp_path}/var"
        [control]
        socket = "{tmp_path}/var/gatewayd.sock"
        socket_group = "gatewayd-no-such-group"
        operator = ["user:gatewayd-no-such-user", "group:gatewayd-no-such-group"]
        viewer = ["everyone"]
        '''))
    r = _check_config(bad)
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "bad.toml:5:1: control.socket_group: no such group 'gatewayd-no-such-group' on this system (create it, "
        "or remove socket_group to keep the daemon's own group)",
        "bad.toml:6:1: control.operator: no such user 'gatewayd-no-such-user' on this system (entry "
        "'user:gatewayd-no-such-user')",
        "bad.toml:6:1: control.operator: no such group 'gatewayd-no-such-group' on this system (entry "
        "'group:gatewayd-no-such-group')",
        "bad.toml:7:1: control.viewer: 'everyone' must be uid:N, user:NAME, gid:N, group:NAME or *",
    ]
    # what check-config accepts, start accepts: existing group and user entries
    good = tmp_path / "good.toml"
    group = grp.getgrgid(os.getgid()).gr_name
    user = pwd.getpwuid(os.getuid()).pw_name
    good.write_text(bad.read_text().replace('"gatewayd-no-such-group"', json.dumps(group), 1)
                    .replace('["user:gatewayd-no-such-user", "group:gatewayd-no-such-group"]',
                             json.dumps([f"user:{user}", f"group:{group}", "uid:0"]))
                    .replace('["everyone"]', '["*"]'))
    assert _check_config(good).returncode == 0
    with DaemonProcess(str(good)) as d:
        d.wait_ready()
        # a reload with an entry start could not resolve is refused, the daemon keeps its socket
        good.write_text(good.read_text().replace('["*"]', '["user:gatewayd-no-such-user"]'))
        d.messages.clear()
        d.signal(signal.SIGHUP)
        d.wait_for("RELOADING=1")
        d.wait_for("READY=1")
        assert "good.toml:7:1: control.viewer: no such user 'gatewayd-no-such-user'" in d.log()
        assert d.stop() == 0


# --------------------------------------------------------------------------- big broken file (12.20)

def _big(n_devices: int) -> str:
    parts = ['[drivers.sim]\ntype = "sim"\n']
    for i in range(n_devices):
        parts.append(f'[drivers.sim.devices.d{i}]\nmodel = "meter"\n')
        for j in range(10):
            parts.append(f'[drivers.sim.devices.d{i}.points.p{j}]\nsignal = "sine"\ndescription = "p {j} of {i}"\n')
    return "".join(parts)


async def test_a_syntax_error_at_the_end_of_a_big_file_is_not_parsed_twice_and_frees_memory(tmp_path, monkeypatch):
    import tomlkit

    async with run_gateway(tmp_path, "") as gw:
        text = site_toml(tmp_path, _big(800)) + '[drivers.sim.devices.last]\nmodel = "meter\n'
        with open(gw.config.path, "w") as fh:
            fh.write(text)
        calls = []
        monkeypatch.setattr(tomlkit, "parse", lambda *a, **k: calls.append(1) or pytest.fail("second parse"))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            res = await rpc(gw, "config.reload")
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert calls == []
        n = len(text.splitlines())
        assert res["errors"] == [f"{gw.config.path}:{n}:9: unterminated string: the quote opened here is not "
                                 'closed on this line (a "..." string must end on its line; use """...""" for '
                                 "text over several lines)"]
        assert held < len(text) / 4, held  # nothing of the refused file stays referenced


def test_a_store_from_a_newer_version_stops_start_with_one_line(tmp_path):
    import apsw

    (tmp_path / "var").mkdir()
    db = apsw.Connection(str(tmp_path / "var" / "state.db"))
    db.execute("PRAGMA user_version=999")
    db.close()
    path = tmp_path / "gatewayd.toml"
    path.write_text(site_toml(tmp_path, ""))
    r = subprocess.run([sys.executable, "-m", "gatewayd", "run", "-c", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "not starting: " in errors[0] and "schema version 999 is newer" in errors[0]
