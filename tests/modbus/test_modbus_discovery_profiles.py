"""Discovery (TCP unit probe, configured-device scan, accept into the TOML) and profiles."""

import glob
import os

import pytest
import tomlkit

from gatewayd.config import load_config
from gatewayd.testing import rpc, run_gateway, wait_until
from gatewayd_modbus.driver import ModbusDriver
from gatewayd_modbus.profiles import list_profiles, load_profile, match_profile, profiles_dir

PM = {"holding": {str(a): 0 for a in range(2690, 2710)} | {str(a): 0 for a in range(2990, 3120)},
      "identity": {"vendor": "Schneider Electric", "product_code": "METSEPM5330", "revision": "2.1",
                   "model": "PM5330"}}
PM["holding"].update({"3109": 0x4248, "3110": 0})  # frequency 50.0 Hz (float32 ABCD)
PLAIN = {"holding": {"0": 1, "1": 2}}              # answers FC43 with "illegal function"? pymodbus answers it


async def test_tcp_unit_probe_and_accept_round_trip_keeps_comments(tmp_path, tcp_server_factory):
    srv = tcp_server_factory({"1": {"holding": {"0": 5}}, "3": PM, "7": PLAIN}, ignore_missing=True)
    body = f"""
# the plant's meters -- keep this comment
[drivers.mb]
type = "modbus"   # inline comment survives too
host = "127.0.0.1"
port = {srv.port}
poll_interval = "100ms"

[drivers.mb.devices.known]
unit = 1
[drivers.mb.devices.known.points.x]
address = 0
"""
    async with run_gateway(tmp_path, body) as gw:
        await wait_until(gw, lambda: gw.points.points["known/x"].status == "ok", timeout=15)
        r = await rpc(gw, "discovery.scan", {"driver": "mb", "mode": "tcp", "host": "127.0.0.1",
                                             "port": srv.port, "units": "1-8", "parallel": 4})
        assert r["probed"] == 8
        found = {f["unit"]: f for f in r["found"]}
        assert sorted(found) == [1, 3, 7]
        assert found[1]["configured_as"] == "known"
        assert found[3]["vendor"] == "Schneider Electric" and found[3]["revision"] == "2.1"
        assert found[3]["profile"] == "schneider-pm5300" and found[3]["profile_score"] >= 0.9
        key3 = f"tcp:127.0.0.1:{srv.port}:3"
        key7 = f"tcp:127.0.0.1:{srv.port}:7"
        await rpc(gw, "discovery.ignore", {"driver": "mb", "key": key7})
        # a re-scan keeps earlier decisions
        await rpc(gw, "discovery.scan", {"driver": "mb", "mode": "tcp", "host": "127.0.0.1", "port": srv.port,
                                         "units": [3, 7]})
        rows = {x["key"]: x["status"] for x in await rpc(gw, "discovery.list", {"driver": "mb"})}
        assert rows[key7] == "ignored" and rows[key3] == "discovered"
        # accepting writes the device with its profile into the TOML and starts polling without a restart
        res = await rpc(gw, "discovery.accept", {"driver": "mb", "key": key3})
        dev = res["device"]
        assert dev == "schneider-pm5300-3"
        await wait_until(gw, lambda: f"{dev}/frequency" in gw.points.points
                         and gw.points.points[f"{dev}/frequency"].status == "ok", timeout=15)
        assert gw.points.points[f"{dev}/frequency"].value == 50.0
        assert len([p for p in gw.points.points if p.startswith(dev + "/")]) == len(load_profile(
            "schneider-pm5300")["points"])
        with open(gw.config.path) as fh:
            text = fh.read()
        assert "# the plant's meters -- keep this comment" in text and "# inline comment survives too" in text
        doc = tomlkit.parse(text)
        assert doc["drivers"]["mb"]["devices"][dev].unwrap() == {"unit": 3, "profile": "schneider-pm5300"}
        rows = {x["key"]: x["status"] for x in await rpc(gw, "discovery.list", {"driver": "mb"})}
        assert rows[key3] == "accepted"
        assert gw.points.points["known/x"].status == "ok"


async def test_configured_device_scan_reports_presence_and_identity(tmp_path, tcp_server_factory):
    srv = tcp_server_factory({"3": PM}, ignore_missing=True)
    body = f"""
[drivers.mb]
type = "modbus"
host = "127.0.0.1"
port = {srv.port}
response_timeout_ms = 300
[drivers.mb.devices.pm]
unit = 3
profile = "schneider-pm5300"
[drivers.mb.devices.ghost]
unit = 9
[drivers.mb.devices.ghost.points.x]
address = 0
"""
    async with run_gateway(tmp_path, body) as gw:
        r = await rpc(gw, "discovery.scan", {"driver": "mb"})
        by = {f["device"]: f for f in r["found"]}
        assert by["pm"]["present"] is True and by["pm"]["product_code"] == "METSEPM5330"
        assert by["ghost"]["present"] is False
        dev = next(x for x in await rpc(gw, "devices.list") if x["device"] == "pm")
        assert dev["identity"]["vendor"] == "Schneider Electric"


def test_every_profile_file_is_valid(tmp_path):
    files = sorted(glob.glob(os.path.join(profiles_dir(), "*.toml")) + glob.glob(os.path.join(profiles_dir(),
                                                                                            "*.json")))
    names = {os.path.splitext(os.path.basename(f))[0] for f in files}
    assert {"generic-power-meter", "schneider-pm5300", "abb-acs580"} <= names
    for f in files:
        name = os.path.splitext(os.path.basename(f))[0]
        prof = load_profile(name)
        assert prof["profile"]["name"] == name and prof["profile"].get("source"), f
        # the points validate as real point tables through the config loader
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'[drivers.mb]\ntype = "modbus"\nhost = "192.0.2.1"\n[drivers.mb.devices.d]\n'
                       f'profile = "{name}"\n')
        c = load_config(str(cfg))
        pts = c.drivers["mb"].devices["d"].points
        assert len(pts) == len(prof["points"]), name
        # no two points claim overlapping registers of the same table
        seen = {}
        for p in pts.values():
            b = p.binding
            w = 1 if b["table"] in ("coil", "discrete") else (b["length"] or 1) if b["type"] == "string" else \
                {"int32": 2, "uint32": 2, "float32": 2, "int64": 4, "uint64": 4, "float64": 4}.get(b["type"], 1)
            for a in range(b["address"], b["address"] + w):
                if b["bit_offset"] is None and b["bit_mask"] is None:
                    assert (b["table"], a) not in seen, f"{name}: {p.name} overlaps {seen[(b['table'], a)]}"
                    seen[(b["table"], a)] = p.name


def test_explicit_points_override_profile_points(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[drivers.mb]\ntype = "modbus"\nhost = "192.0.2.1"\n[drivers.mb.devices.d]\n'
                   'profile = "generic-power-meter"\n[drivers.mb.devices.d.points.frequency]\naddress = 100\n'
                   'type = "uint16"\nscale = 0.01\n')
    pts = load_config(str(cfg)).drivers["mb"].devices["d"].points
    assert pts["frequency"].binding["address"] == 100 and pts["frequency"].scale == 0.01
    assert "voltage_l1" in pts


def test_unknown_profile_is_a_config_error(tmp_path):
    from gatewayd.config import ConfigError

    cfg = tmp_path / "g.toml"
    cfg.write_text('[drivers.mb]\ntype = "modbus"\nhost = "192.0.2.1"\n[drivers.mb.devices.d]\nprofile = "nope"\n')
    with pytest.raises(ConfigError, match="unknown modbus profile 'nope'"):
        load_config(str(cfg))


def test_profiles_dir_env_override_and_json(tmp_path, monkeypatch):
    d = tmp_path / "profiles" / "modbus"
    d.mkdir(parents=True)
    (d / "tiny.json").write_text('{"profile": {"name": "tiny", "vendor": "Acme", "models": ["T-1"], "source": "x"},'
                                 ' "points": {"a": {"address": 0}}}')
    monkeypatch.setenv("GATEWAYD_PROFILES", str(tmp_path / "profiles"))
    assert [p["name"] for p in list_profiles()] == ["tiny"]
    assert ModbusDriver.expand_points("mb", "d", {"profile": "tiny"}) == {"a": {"address": 0}}
    assert match_profile("ACME Corp", "T-1") == ("tiny", 1.0)


@pytest.mark.parametrize("vendor,model,expect,lo,hi", [
    ("Schneider Electric", "PM5330", "schneider-pm5300", 1.0, 1.0),
    ("Schneider Electric", "PowerLogic PM5330 meter", "schneider-pm5300", 0.8, 0.9),
    ("Schneider Electric", "PM5350", "schneider-pm5300", 0.7, 0.7),   # same series prefix only
    ("ABB", "ACS580-01-12A7-4", "abb-acs580", 0.8, 0.9),
    ("Eastron", "SDM630", "eastron-sdm630", 1.0, 1.0),
    (None, "PM5330", "schneider-pm5300", 0.6, 0.6),
    ("Nobody", "Nothing", None, 0.2, 0.2),   # only the generic profile scores, below the 0.5 bar: none proposed
])
def test_match_profile_scores(vendor, model, expect, lo, hi):
    name, score = match_profile(vendor, model)
    assert name == expect and lo <= score <= hi and 0.0 <= score <= 1.0
