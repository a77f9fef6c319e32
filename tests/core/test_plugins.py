"""Plugin loading: entry points, dotted paths, clear errors; the public face is pinned."""

import importlib.metadata

import pytest

import gatewayd.hookspecs as hookspecs
import gatewayd.plugin as face
from gatewayd.plugins import ENTRY_POINT_GROUP, PluginRegistry


def test_first_party_plugins_are_entry_points_of_the_same_group():
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert names.get("sim") == "gatewayd_sim"
    assert {"modbus", "bacnet", "mqtt"} <= set(names)


def test_only_what_is_asked_for_is_loaded():
    reg = PluginRegistry()
    assert reg.loaded == {}
    assert reg.load_entry_point("sim") is None
    assert set(reg.loaded) == {"gatewayd_sim"}
    assert reg.get("driver", "sim").__name__ == "SimDriver"


def test_dotted_path_plugin_registers_like_a_first_party_one():
    reg = PluginRegistry()
    assert reg.load_module("ext_plugins.counter") is None
    assert reg.get("driver", "counter").__module__ == "ext_plugins.counter"
    assert reg.load_module("ext_plugins.counter") is None  # idempotent


def test_missing_optional_dependency_names_the_extra(monkeypatch):
    reg = PluginRegistry()

    class EP:
        name = "modbus"
        value = "gatewayd_modbus"

        def load(self):
            raise ModuleNotFoundError("No module named 'pymodbus'", name="pymodbus")

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [EP()])
    msg = reg.load_entry_point("modbus")
    assert msg == ("plugin 'modbus' needs the Python package 'pymodbus', which is not installed: "
                   "pip install 'gatewayd[modbus]'")


def test_registering_a_type_twice_is_an_error(tmp_path, monkeypatch):
    mod = tmp_path / "dup_plugin.py"
    mod.write_text("from gatewayd.plugin import hookimpl\nfrom gatewayd_sim import SimDriver\n"
                   "@hookimpl\ndef gatewayd_register(registry):\n    registry.add_driver('sim', SimDriver.__mro__[0])\n"
                   "    registry.add_driver('sim', type('Other', (SimDriver,), {}))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = PluginRegistry().load_module("dup_plugin")
    assert err == "driver type 'sim' registered twice: by dup_plugin and by dup_plugin"


def test_a_non_driver_class_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad_plugin.py").write_text(
        "from gatewayd.plugin import hookimpl\n@hookimpl\ndef gatewayd_register(registry):\n"
        "    registry.add_driver('x', object)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert PluginRegistry().load_module("bad_plugin") == \
        "plugin bad_plugin: driver type 'x' must subclass gatewayd.plugin.Driver"


def test_every_hook_has_a_contract_docstring():
    hooks = [n for n in dir(hookspecs) if n.startswith("gatewayd_")]
    assert hooks == ["gatewayd_register", "gatewayd_rpc_methods"]
    for h in hooks:
        doc = getattr(hookspecs, h).__doc__ or ""
        assert len(doc.strip().splitlines()) >= 3, f"{h} needs a contract docstring"


def test_plugin_face_is_pinned():
    # What plugin authors import. Changing this list is an API change: update docs and plugins.
    assert sorted(face.__all__) == sorted([
        "hookimpl", "Driver", "Connector", "DriverContext", "ConnectorContext", "GatewayAPI", "RunnerInfo",
        "PRIORITY_ARRAY", "DISCOVERY", "DIAGNOSTICS", "CAPABILITIES", "supports",
        "WriteError", "PointSink", "DeviceHealth", "PointError",
        "Schema", "Key", "REQUIRED", "Str", "SecretStr", "Int", "Float", "Bool", "Duration", "Size", "Enum",
        "List", "Table", "Map", "AnyValue",
        "PointConfig", "DeviceConfig", "DriverConfig", "ConnectorConfig",
        "Event", "ValueChanged", "StatusChanged", "DeviceStatusChanged", "DeviceDown", "DeviceRecovered",
        "WriteCompleted", "DriverEvent",
        "RpcError", "Role", "MethodRegistry", "Call", "AUDIT", "INVALID_PARAMS", "NOT_FOUND", "CONFLICT",
        "UNAVAILABLE", "LIMIT_EXCEEDED", "PERMISSION_DENIED",
        "AsyncioBridge", "AsyncioChannel", "AsyncioCancelled", "BridgeClosed",
        "OutboxCursor", "Entry", "native",
    ])
    for name in face.__all__:
        assert getattr(face, name) is not None


async def test_hooks_are_called_through_pluggy_one_plugin_at_a_time(tmp_path, monkeypatch):
    """Implementations named otherwise (``specname=``) are found, a failing rpc hook spares the others."""
    from gatewayd.testing import rpc, run_gateway

    (tmp_path / "specname_plugin.py").write_text(
        "from gatewayd.plugin import hookimpl\nfrom gatewayd.rpc import Role\nfrom ext_plugins.counter import CounterDriver\n"
        "@hookimpl(specname='gatewayd_register')\ndef types(registry):\n"
        "    registry.add_driver('renamed', type('Renamed', (CounterDriver,), {}))\n"
        "@hookimpl(specname='gatewayd_rpc_methods')\ndef methods(registry, gateway):\n"
        "    async def hello(call):\n        return 'hello'\n"
        "    registry.add('renamed.hello', hello, role=Role.VIEWER)\n")
    (tmp_path / "broken_rpc_plugin.py").write_text(
        "from gatewayd.plugin import hookimpl\n"
        "@hookimpl\ndef gatewayd_rpc_methods(registry, gateway):\n    raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    async with run_gateway(tmp_path, f'plugins = ["broken_rpc_plugin"]\n[gateway]\nid = "t"\n'
                                     f'state_dir = "{tmp_path}/var"\n[control]\nsocket = "{tmp_path}/var/g.sock"\n'
                                     '[drivers.r]\ntype = "renamed"\nplugin = "specname_plugin"\n') as gw:
        assert gw.drivers["r"].cls.__name__ == "Renamed"
        assert await rpc(gw, "renamed.hello") == "hello"
