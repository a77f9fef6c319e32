"""check-config messages of the bacnet driver's schema and cross-key checks."""

import pytest

from gatewayd.config import ConfigError, load_config
from gatewayd.testing import site_toml


def _problems(tmp_path, body: str) -> str:
    p = tmp_path / "gatewayd.toml"
    p.write_text(site_toml(tmp_path, body))
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    return str(e.value)


def test_required_and_cross_key_checks(tmp_path):
    msg = _problems(tmp_path, """
[drivers.bac]
type = "bacnet"
[drivers.bac.networks.a]
mode = "foreign"
address = "10.0.0.1"
[drivers.bac.networks.b]
mode = "ipv6"
address = "fd00::1"
vmac = "0x12"
peers = { "0x000005" = "[fd00::5]:47808", "0x000006" = "fd00::6]" }
[drivers.bac.networks.e]
mode = "ip"
address = "10.0.0.2"
vmac = "0x000001"
routes = { "70000" = "10.0.0.9:47808" }
[drivers.bac.devices.d1]
device_instance = 5
[drivers.bac.devices.d1.points.p]
object = "analog input 1"
[drivers.bac.devices.d2]
network = "c"
device_instance = 6
[drivers.bac.devices.d2.points.p]
property = "present-value"
""")
    assert "server_device_instance" in msg
    assert "needs bbmd_addr" in msg
    assert "network b: '0x12' is not a virtual MAC address (3 octets" in msg
    assert "network b: peers: " in msg and "fd00::6]" in msg
    assert "network e: vmac and peers are only for mode = \"ipv6\"" in msg
    assert "network e: routes: '70000' is not a network number (1..65534)" in msg
    assert "several networks" in msg
    assert "no network 'c'" in msg
    assert 'an object id looks like "analog-input,3"' in msg
    assert "point d2/p: missing required key 'object'" in msg


def test_a_valid_site_loads(tmp_path):
    p = tmp_path / "gatewayd.toml"
    p.write_text(site_toml(tmp_path, """
[drivers.bac]
type = "bacnet"
server_device_instance = 77
write_priority = 10
[drivers.bac.networks.main]
address = "127.0.0.1/8"
[drivers.bac.devices.d1]
device_instance = 5
cov = "object"
[drivers.bac.devices.d1.points.p]
object = "analog-output:1"
priority = 9
writable = true
"""))
    cfg = load_config(str(p))
    pt = cfg.drivers["bac"].devices["d1"].points["p"]
    assert pt.binding["object"] == "analog-output:1" and pt.binding["property"] == "present-value"
    assert cfg.drivers["bac"].settings["networks"]["main"]["port"] == 47808


def test_mstp_mode_is_a_planned_config_error(tmp_path):
    body = """
[drivers.bac]
type = "bacnet"
server_device_instance = 77
[drivers.bac.networks.field]
mode = "mstp"
address = "127.0.0.1/8"
[drivers.bac.networks.other]
mode = "ethernet"
address = "127.0.0.1/8"
[drivers.bac.devices.d1]
network = "field"
device_instance = 5
[drivers.bac.devices.d1.points.p]
object = "analog-input,1"
"""
    msg = _problems(tmp_path, body)
    lines = site_toml(tmp_path, body).splitlines()
    mstp_line = next(i for i, line in enumerate(lines, 1) if line == 'mode = "mstp"')
    # file:line of the key, and what the operator needs to know
    assert f"gatewayd.toml:{mstp_line}:" in msg
    assert 'mode "mstp" (BACnet MS/TP) is planned, not supported yet' in msg
    assert "'ethernet'" in msg and "ip, ipv6, foreign" in msg
    assert "Traceback" not in msg and "KeyError" not in msg


# ---------------------------------------------------------------- fuzzing the schema and validate_config
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = st.one_of(
    st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
    st.sampled_from(["ip", "ipv6", "foreign", "mstp", "", "127.0.0.1/8", "fd00::1", "[fe80::1%lo]:47808",
                     "0x000001", "analog-input,1", "10s", "1", "off", "object", "property", "auto", "rp"]))
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3),
                    st.dictionaries(st.text(min_size=1, max_size=6), _SCALARS, max_size=3))


def _fuzz_keys(schema_keys, extra):
    return st.dictionaries(st.sampled_from(sorted(schema_keys) + extra), _VALUES, max_size=6)


def _tables():
    from gatewayd_bacnet import NETWORK_SCHEMA, BacnetDriver

    drv = _fuzz_keys([k for k in BacnetDriver.settings_schema.keys if k != "networks"], ["bogus"])
    net = _fuzz_keys(NETWORK_SCHEMA.keys, ["bogus"])
    dev = _fuzz_keys(BacnetDriver.device_schema.keys, ["bogus"])
    pt = _fuzz_keys(list(BacnetDriver.point_schema.keys) + ["kind", "writable"], ["bogus"])
    return st.tuples(drv, st.dictionaries(st.sampled_from(["a", "b"]), net, max_size=2),
                     st.dictionaries(st.sampled_from(["d1", "d2"]), dev, max_size=2), pt)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_fuzzed_bacnet_tables_only_ever_give_config_errors(tables):
    import tempfile

    import tomlkit

    drv, nets, devs, pt = tables
    doc = {"drivers": {"bac": {"type": "bacnet", **drv, "networks": nets,
                               "devices": {d: {**t, "points": {"p": pt}} for d, t in devs.items()}}}}
    with tempfile.TemporaryDirectory() as tmp:
        p = f"{tmp}/gatewayd.toml"
        with open(p, "w", encoding="utf-8") as fh:
            fh.write(site_toml(tmp, tomlkit.dumps(doc)))
        try:
            load_config(p)
        except ConfigError as e:
            assert str(e).strip()


def test_the_bacnet_driver_declares_its_capabilities():
    """The core asks ``supports()``; the BACnet driver declares what it does instead of being probed."""
    from gatewayd.plugin import DIAGNOSTICS, DISCOVERY, PRIORITY_ARRAY, supports
    from gatewayd_bacnet import BacnetDriver

    assert BacnetDriver.capabilities == {PRIORITY_ARRAY, DISCOVERY, DIAGNOSTICS}
    assert all(supports(BacnetDriver, c) for c in (PRIORITY_ARRAY, DISCOVERY, DIAGNOSTICS))
