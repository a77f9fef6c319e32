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
