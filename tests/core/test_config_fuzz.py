"""Fuzzing the config path with hypothesis: whatever the file holds, the answer is a
:class:`~gatewayd.config.Config` or a :class:`~gatewayd.config.ConfigError` whose problems
all carry ``file:line:col`` — never another exception (issue 11 item 15).

The core schemas and every registered plugin's schemas are driven generically from
their ``Schema`` objects (known keys with values of any TOML type, plus unknown keys),
so a plugin added later is fuzzed without changing this file.
"""

import os
import tempfile

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd import config as C
from gatewayd.config import Config, ConfigError, load_config
from gatewayd.plugins import PluginRegistry

FUZZ = settings(max_examples=int(os.environ.get("GATEWAYD_FUZZ_EXAMPLES", "120")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalar = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), _text,
                    st.sampled_from(["5s", "250ms", "0660", "°C => °F", "uid:0", "user:root", "group:nogroup",
                                     "*", "sine", "holding", "float32", "tcp", "rtu", "mstp", "cov", "", "-1"]))
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(_text.filter(bool), inner, max_size=3)),
                      max_leaves=6)


def _table(schema: "C.Schema | None", extra_keys=("bogus", "enabled")):
    keys = sorted(set(schema.keys) if schema is not None else set()) + list(extra_keys)
    return st.dictionaries(st.sampled_from(keys), _value, max_size=6)


def _registry() -> PluginRegistry:
    reg = PluginRegistry()
    for name in ("sim", "modbus", "bacnet", "mqtt"):
        reg.load_entry_point(name)
    reg.load_module("ext_plugins.counter")
    return reg


REGISTRY = _registry()
DRIVER_TYPES = sorted(REGISTRY.types.drivers)
CONNECTOR_TYPES = sorted(REGISTRY.types.connectors)


def _plugin_for(kind, name):
    return "ext_plugins.counter" if name == "counter" else None


@st.composite
def driver_tables(draw):
    tname = draw(st.sampled_from(DRIVER_TYPES))
    cls = REGISTRY.get("driver", tname)
    d = draw(_table(C.DRIVER_BASE.extend(getattr(cls, "settings_schema", None)), ("bogus",)))
    d["type"] = tname
    if _plugin_for("driver", tname):
        d["plugin"] = _plugin_for("driver", tname)
    devices = {}
    for i in range(draw(st.integers(0, 2))):
        dev = draw(_table(C.DEVICE_BASE.extend(getattr(cls, "device_schema", None))))
        pts = {}
        for j in range(draw(st.integers(0, 2))):
            pts[f"p{j}"] = draw(_table(C.POINT_SCHEMA.extend(getattr(cls, "point_schema", None))))
        if pts:
            dev["points"] = pts
        devices[f"{tname}-d{i}"] = dev
    if devices:
        d["devices"] = devices
    return tname, d


@st.composite
def connector_tables(draw):
    tname = draw(st.sampled_from(CONNECTOR_TYPES))
    cls = REGISTRY.get("connector", tname)
    c = draw(_table(C.CONNECTOR_BASE.extend(getattr(cls, "settings_schema", None)), ("bogus",)))
    c["type"] = tname
    return tname, c


def _check(doc: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.toml")
        text = tomlkit.dumps(doc)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        try:
            cfg = load_config(path, registry=REGISTRY)
        except ConfigError as e:
            assert e.problems
            for p in e.problems:
                assert p.file.endswith("fuzz.toml") and p.line >= 1 and p.col >= 1 and p.message, p
                assert "Traceback" not in p.message
        else:
            assert isinstance(cfg, Config)


@FUZZ
@given(gateway=_table(C.GATEWAY_SCHEMA), control=_table(C.CONTROL_SCHEMA), history=_table(C.HISTORY_SCHEMA),
       outbox=_table(C.OUTBOX_SCHEMA), backup=_table(C.BACKUP_SCHEMA),
       top=st.dictionaries(st.sampled_from(["plugins", "include", "gatway", "drivers", "connectors"]), _value,
                           max_size=2))
def test_core_schemas_never_raise_anything_but_config_error(gateway, control, history, outbox, backup, top):
    doc = {"gateway": gateway, "control": control, "history": history, "outbox": outbox, "backup": backup}
    doc.update(top)
    _check(doc)


@FUZZ
@given(drivers=st.lists(driver_tables(), max_size=2), connectors=st.lists(connector_tables(), max_size=2))
def test_plugin_schemas_never_raise_anything_but_config_error(drivers, connectors):
    doc = {"gateway": {"id": "fuzz"}}
    if drivers:
        doc["drivers"] = {f"drv{i}": t for i, (_n, t) in enumerate(drivers)}
    if connectors:
        doc["connectors"] = {f"con{i}": t for i, (_n, t) in enumerate(connectors)}
    _check(doc)


SITE = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "gatewayd.toml")


@FUZZ
@given(data=st.data())
def test_damaged_files_never_raise_anything_but_config_error(data):
    with open(SITE, "rb") as fh:
        raw = fh.read()
    at = data.draw(st.integers(0, len(raw)))
    cut = data.draw(st.integers(0, 40))
    junk = data.draw(st.binary(max_size=8) | st.sampled_from([b'"', b"'", b"[", b"]", b"=", b"\n", b'"""', b"\xef\xbb\xbf",
                                                             b"\xff", b"{", b".", b"#"]))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "gatewayd.toml")
        with open(path, "wb") as fh:
            fh.write(raw[:at] + junk + raw[at + cut:])
        try:
            load_config(path, registry=REGISTRY)
        except ConfigError as e:
            for p in e.problems:
                assert p.line >= 1 and p.col >= 1 and p.message, p
