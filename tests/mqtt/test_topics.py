"""Topic templates, sanitization, payload encoding and config validation (no broker)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from gatewayd.config import ConfigError, load_config
from gatewayd_mqtt.topics import Filters, Template, check_template, rfc3339, sanitize, value_body


@pytest.mark.parametrize("raw,clean", [
    ("ahu-1", "ahu-1"), ("a/b", "a_b"), ("a+b#c", "a_b_c"), ("x\x00y", "x_y"), ("t\tab\n", "t_ab_"),
    ("$SYS", "_SYS"), ("", "_"), (None, "_"), ("°C é", "°C é"), ("del\x7f", "del_"),
])
def test_sanitize(raw, clean):
    assert sanitize(raw) == clean


@given(st.text())
def test_sanitized_value_is_one_safe_level(s):
    out = sanitize(s)
    assert out and not set(out) & set("+#/\x00") and not out.startswith("$")
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in out)


def test_template_render_and_match():
    t = Template("gatewayd/{gateway}/{device}/{point}/set", gateway="plant/7")
    assert t.render(device="ahu+1", point="sp") == "gatewayd/plant_7/ahu_1/sp/set"
    assert t.subscription(("device", "point")) == "gatewayd/plant_7/+/+/set"
    assert t.match("gatewayd/plant_7/ahu-1/sp/set", ("device", "point")) == {"device": "ahu-1", "point": "sp"}
    assert t.match("gatewayd/plant_7/ahu-1/sp/set/result", ("device", "point")) is None
    assert t.match("gatewayd/other/ahu-1/sp/set", ("device", "point")) is None


@pytest.mark.parametrize("text,err", [
    ("a/{nope}", "unknown placeholder"), ("a/+/b", "wildcards"), ("a/#", "wildcards"),
    ("a/{device!r}", "no format spec"), ("a/{device:>3}", "no format spec"), ("a/{", "bad topic template"),
])
def test_bad_templates(text, err):
    assert err in check_template(text)


def test_command_topic_levels_must_be_whole():
    assert "whole topic level" in check_template("x/dev-{device}/{point}", whole_level=("device", "point"))
    assert check_template("x/{device}/{point}/set", whole_level=("device", "point")) is None


def test_value_body_and_time():
    d = {"kind": "value", "seq": 9, "ts": 1712345678.9016, "point": "d/p", "value": float("nan"), "status": "ok",
         "unit": "°C", "flags": ["fault"]}
    b = value_body(d, True)
    assert b == {"value": None, "unit": "°C", "status": "ok", "ts": 1712345678902, "time": "2024-04-05T19:34:38.902Z",
                 "flags": ["fault"], "seq": 9}
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_filters():
    f = Filters(["value", "device_*"], ["ahu-*"], ["*/supply_*", "*/fan"], ["*/supply_sp"], ["hvac"])
    ok = {"kind": "value", "point": "ahu-1/supply_temp", "device": "ahu-1", "tags": ["hvac"]}
    assert f.accepts(ok)
    assert not f.accepts({**ok, "kind": "status"})
    assert not f.accepts({**ok, "point": "ahu-2/supply_sp", "device": "ahu-2"})
    assert not f.accepts({**ok, "point": "meter/supply_temp", "device": "meter"})
    assert not f.accepts({**ok, "point": "ahu-3/supply_x", "tags": []})
    assert f.accepts({"kind": "device_down", "device": "ahu-9"})
    assert not f.accepts({"kind": "device_down", "device": "meter"})


def _load(tmp_path, body: str):
    p = tmp_path / "g.toml"
    p.write_text(f'[gateway]\nid = "t"\nstate_dir = "{tmp_path}"\n\n[connectors.up]\ntype = "mqtt"\n{body}\n')
    return load_config(str(p))


def test_config_defaults_and_errors(tmp_path, monkeypatch):
    cfg = _load(tmp_path, 'host = "broker"')
    s = cfg.connectors["up"].settings
    assert s["topics"]["value"] == "gatewayd/{gateway}/{device}/{point}/value"
    assert s["commands"]["enabled"] is False and s["bemcom"]["enabled"] is False
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, 'qos = 3\nprotocl = "5"\ncommands = { enabled = true }\n'
                        'topics = { value = "x/{nope}" }\npassword = { env = "NOT_SET_ANYWHERE" }\n'
                        'tls = { ca = "/nonexistent/ca.pem" }')
    text = str(ei.value)
    for needle in ("qos must be <= 2", "did you mean 'protocol'", "allow-list", "unknown placeholder {nope}",
                   "NOT_SET_ANYWHERE", "cannot read tls.ca"):
        assert needle in text, (needle, text)
    monkeypatch.setenv("PW", "hunter2")
    cfg = _load(tmp_path, 'username = "u"\npassword = { env = "PW" }')
    assert cfg.connectors["up"].settings["password"] == "hunter2"
    assert "hunter2" not in repr(cfg.connectors["up"].settings["password"])
