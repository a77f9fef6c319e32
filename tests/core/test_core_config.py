"""Configuration: every broken file gives exact file:line:col messages; good files load typed."""

import os
import subprocess
import sys
import textwrap

import pytest

from gatewayd.config import ConfigError, Secret, key_positions, load_config, parse_duration, parse_size


def write(tmp_path, text, name="gw.toml"):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return p


def problems(tmp_path, text, **kw):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(str(p), **kw)
    return [str(x).split(": ", 1)[0].rsplit("/", 1)[-1] + ": " + str(x).split(": ", 1)[1] for x in ei.value.problems]


BROKEN = [
    # (id, toml, expected problem lines)
    ("syntax", """
        [gateway
        id = "x"
        """, ["gw.toml:1:9: TOML syntax error: Expected ']' at the end of a table declaration"]),
    ("unknown-top", """
        [gatway]
        id = "x"
        """, ["gw.toml:1:1: unknown key 'gatway' at the top level (did you mean 'gateway'?)"]),
    ("unknown-key-hint", """
        [gateway]
        stale_tme = "5s"
        """, ["gw.toml:2:1: unknown key 'stale_tme' in [gateway] (did you mean 'stale_time'?)"]),
    ("bad-duration", """
        [history]
        retention = "forever"
        """, ['gw.toml:2:1: history.retention: \'forever\' is not a duration (examples: "500ms", "5s", "2m", "1h", "30d")']),
    ("bad-enum", """
        [history]
        mode = "covv"
        """, ["gw.toml:2:1: history.mode must be one of 'cov', 'interval', got 'covv' (did you mean 'cov'?)"]),
    ("wrong-type", """
        [history]
        batch_size = "many"
        """, ["gw.toml:2:1: history.batch_size must be an integer, not a string"]),
    ("missing-type", """
        [drivers.d1]
        interval = "1s"
        """, ["gw.toml:1:1: missing required key 'type' in [drivers.d1] (the driver type, e.g. \"sim\", \"modbus\")"]),
    ("unknown-driver-type", """
        [drivers.d1]
        type = "nosuch"
        """, ["gw.toml:2:1: unknown driver type 'nosuch' (installed plugins: {installed}; a plugin outside gatewayd needs plugin = \"module.path\")"]),
    ("driver-specific-key", """
        [drivers.sim]
        type = "sim"
        intervall = "1s"
        """, ["gw.toml:3:1: unknown key 'intervall' in [drivers.sim] (did you mean 'interval'?)"]),
    ("bad-convert", """
        [drivers.sim]
        type = "sim"
        [drivers.sim.devices.d]
        [drivers.sim.devices.d.points.t]
        convert = "°C => kPa"
        """, ["gw.toml:5:1: drivers.sim.devices.d.points.t.convert: cannot convert temperature (°C) to pressure (kPa)"]),
    ("unknown-unit", """
        [drivers.sim]
        type = "sim"
        [drivers.sim.devices.d]
        [drivers.sim.devices.d.points.t]
        convert = "°C => furlongs"
        """, ["gw.toml:5:1: drivers.sim.devices.d.points.t.convert: unknown unit 'furlongs' in convert '°C => furlongs' (see the unit table in the README)"]),
    ("duplicate-device", """
        [drivers.a]
        type = "sim"
        [drivers.a.devices.d1]
        [drivers.b]
        type = "sim"
        [drivers.b.devices.d1]
        """, ["gw.toml:6:1: device id 'd1' is already used by driver 'a' (device ids are unique per gateway)"]),
    ("secret-env-missing", """
        [drivers.x]
        type = "counter"
        plugin = "ext_plugins.counter"
        [drivers.x.devices.d]
        [drivers.x.devices.d.points.p]
        description = { env = "GATEWAYD_TEST_SURELY_UNSET" }
        """, ["gw.toml:6:1: drivers.x.devices.d.points.p.description: environment variable 'GATEWAYD_TEST_SURELY_UNSET' is not set"]),
    ("bad-id", """
        [drivers."bad id"]
        type = "sim"
        """, ["gw.toml:1:1: driver id 'bad id' must start with a letter or digit and contain only letters, digits and _ . : -"]),
    ("plugin-module-missing", """
        [drivers.x]
        type = "counter"
        plugin = "ext_plugins.not_there"
        """, ["gw.toml:2:1: plugin module 'ext_plugins.not_there' not found (is it installed or on PYTHONPATH?)"]),
    ("plugin-dependency-missing", """
        plugins = ["ext_plugins.needs_missing"]
        """, ["gw.toml:1:1: plugin 'ext_plugins.needs_missing' (module ext_plugins.needs_missing) needs the Python package 'gatewayd_no_such_dependency', which is not installed"]),
    ("inline-table-key", """
        [drivers.sim]
        type = "sim"
        [drivers.sim.devices.d]
        points = { t = { signal = "sinus" } }
        """, ["gw.toml:4:12: drivers.sim.devices.d.points.t.signal must be one of 'sine', 'random', 'ramp', 'counter', 'toggle', 'state', 'setpoint', 'follow', got 'sinus' (did you mean 'sine'?)"]),
    ("negative-range", """
        [drivers.sim.devices.d]
        [drivers.sim.devices.d.points.t]
        cov_deadband = -1
        [drivers.sim]
        type = "sim"
        """, ["gw.toml:3:1: drivers.sim.devices.d.points.t.cov_deadband must be >= 0, got -1"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_files_give_exact_messages(tmp_path, case):
    from gatewayd.plugins import PluginRegistry

    _, text, expected = case
    installed = ", ".join(PluginRegistry().available("driver"))
    expected = [e.replace("{installed}", installed) for e in expected]
    got = problems(tmp_path, text)
    assert got == expected


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    got = problems(tmp_path, """
        [gateway]
        stale_time = "x"
        log_level = "loud"
        [history]
        mode = "sometimes"
        """)
    assert [g.split(":")[1] for g in got] == ["2", "3", "5"]


def test_include_merges_and_reports_clashes_in_the_included_file(tmp_path):
    write(tmp_path, """
        [drivers.b]
        type = "sim"
        [drivers.b.devices.d2]
        model = "meter"
        """, "conf.d/10-b.toml")
    write(tmp_path, """
        [drivers.a]
        type = "sim"
        """, "conf.d/20-clash.toml")
    main = write(tmp_path, """
        include = ["conf.d/*.toml"]
        [drivers.a]
        type = "sim"
        [drivers.a.devices.d1]
        model = "ahu"
        """)
    with pytest.raises(ConfigError) as ei:
        load_config(str(main))
    msgs = [str(p) for p in ei.value.problems]
    assert len(msgs) == 1
    assert msgs[0].endswith("conf.d/20-clash.toml:1:1: drivers.a is already defined at " + msgs[0].split(" at ")[1])
    assert msgs[0].split(" at ")[1].endswith("gw.toml:2:1")
    os.remove(tmp_path / "conf.d/20-clash.toml")
    cfg = load_config(str(main))
    assert set(cfg.drivers) == {"a", "b"}
    assert "d2/power" in {p.id for p in cfg.iter_points()}
    assert len(cfg.files) == 2


def test_good_file_loads_typed_values(tmp_path, monkeypatch):
    monkeypatch.setenv("GW_TEST_DESC", "from the environment")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    p = write(tmp_path, f"""
        [gateway]
        id = "site-1"
        stale_time = "2m"
        [history]
        retention = "30d"
        flush_interval = "250ms"
        [outbox]
        max_bytes = "64MiB"
        [drivers.sim]
        type = "sim"
        interval = "500ms"
        [drivers.sim.devices.ahu-1]
        model = "ahu"
        [drivers.sim.devices.ahu-1.points.extra]
        signal = "random"
        unit = "°C"
        convert = "°C => °F"
        scale = 0.1
        tags = ["hvac"]
        description = {{ env = "GW_TEST_DESC" }}
        [drivers.sim.devices.ahu-1.points.other]
        description = {{ file = "{secret}" }}
        """)
    cfg = load_config(str(p))
    assert cfg.gateway.stale_time == 120.0
    assert cfg.history.retention == 30 * 86400
    assert cfg.history.flush_interval == 0.25
    assert cfg.outbox.max_bytes == 64 * 1024 * 1024
    assert cfg.drivers["sim"].settings["interval"] == 0.5
    pt = cfg.drivers["sim"].devices["ahu-1"].points["extra"]
    assert (pt.id, pt.unit, pt.convert, pt.scale, pt.tags, pt.stale_time) == \
        ("ahu-1/extra", "°C", "°C => °F", 0.1, ("hvac",), 120.0)
    assert pt.binding["signal"] == "random"
    assert pt.description == "from the environment" and isinstance(pt.description, Secret)
    assert cfg.drivers["sim"].devices["ahu-1"].points["other"].description == "s3cret"
    assert "ahu-1/supply_temp_sp" in {p.id for p in cfg.iter_points()}  # from the model


def test_external_plugin_by_dotted_path_validates_its_keys(tmp_path):
    got = problems(tmp_path, """
        [drivers.x]
        type = "counter"
        plugin = "ext_plugins.counter"
        [drivers.x.devices.d]
        [drivers.x.devices.d.points.p]
        stepp = 2
        """)
    assert got == ["gw.toml:6:1: unknown key 'stepp' in [drivers.x.devices.d.points.p] (did you mean 'step'?)"]


def test_key_positions_handle_quoted_and_dotted_keys():
    text = '[a."b c".d]\nx.y = 1\n"q" = { r = 2, s = 3 }\n[[arr]]\nk = 1\n[[arr]]\nk = 2\n'
    pos = key_positions(text)
    assert pos[("a", "b c", "d")] == (1, 1)
    assert pos[("a", "b c", "d", "x", "y")] == (2, 1)
    assert pos[("a", "b c", "d", "q", "s")][0] == 3
    assert pos[("arr", "1", "k")] == (7, 1)


def test_durations_and_sizes():
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2h") == 7200
    assert parse_duration(5) == 5.0
    assert parse_size("64KiB") == 65536
    assert parse_size("2GB") == 2_000_000_000
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_check_config_cli_exit_codes_and_output(tmp_path):
    good = write(tmp_path, """
        [drivers.sim]
        type = "sim"
        [drivers.sim.devices.m]
        model = "meter"
        """, "good.toml")
    bad = write(tmp_path, """
        [history]
        mode = 3
        """, "bad.toml")
    r = subprocess.run([sys.executable, "-m", "gatewayd", "check-config", str(good)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "good.toml: ok — 1 driver(s), 1 device(s), 6 point(s), 0 connector(s)"
    r = subprocess.run([sys.executable, "-m", "gatewayd", "check-config", str(bad)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert r.stdout.strip() == "bad.toml:2:1: history.mode must be one of 'cov', 'interval', got 3"
    assert "1 problem(s) found" in r.stderr


def test_default_site_is_valid():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(root, "etc", "gatewayd.toml"))
    assert {"ahu-1", "meter-1", "flaky-1"} <= {d for drv in cfg.drivers.values() for d in drv.devices}


def test_the_audit_grant_may_name_roles_and_is_checked(tmp_path):
    """``[control] audit`` takes role:viewer|operator|admin besides the usual entries (its default is
    role:operator); a role entry in a role list, or an unknown role, is a config error at its line."""
    load_config(str(write(tmp_path, '[control]\naudit = ["role:admin", "uid:0"]\n')))  # no ConfigError
    got = problems(tmp_path, '[control]\naudit = ["role:boss"]\noperator = ["role:admin"]\n')
    assert any(p.startswith("gw.toml:2:") and "role must be viewer, operator or admin" in p for p in got), got
    assert any(p.startswith("gw.toml:3:") and "must be uid:N, user:NAME, gid:N, group:NAME or *" in p
               for p in got), got
