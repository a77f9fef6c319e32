"""The public face (gatewayd.plugin): the GatewayAPI protocol, declared driver capabilities, hook tracing."""

import logging
import textwrap

import pytest
import trio

from gatewayd import plugin as face
from gatewayd.rpc.client import RpcRemoteError
from gatewayd.testing import rpc, run_gateway, wait_until

CAPS_PLUGIN = textwrap.dedent('''
    import trio
    from gatewayd.plugin import DISCOVERY, PRIORITY_ARRAY, Driver, hookimpl

    class _Base(Driver):
        async def run(self, *, task_status=trio.TASK_STATUS_IGNORED):
            for dev in self.config.devices.values():
                for p in dev.points.values():
                    self.sink.update(p.id, 0.0)
            task_status.started()
            await trio.sleep_forever()

        async def write(self, point, value):
            self.ctx.gateway.plain_writes.append((point.id, value))
            return value

    class Declared(_Base):
        capabilities = frozenset({PRIORITY_ARRAY, DISCOVERY})

        async def write_priority(self, point, value, priority):
            self.ctx.gateway.level_writes.append((point.id, value, priority))
            return value

        async def discover(self, **params):
            return {"found": 0}

    class Legacy(_Base):  # written before capabilities: found by its methods, with a deprecation line
        async def write_priority(self, point, value, priority):
            self.ctx.gateway.level_writes.append((point.id, value, priority))
            return value

        async def discover(self, **params):
            return {"found": 1}

    class Plain(_Base):
        pass

    @hookimpl
    def gatewayd_register(registry):
        registry.add_driver("declared", Declared)
        registry.add_driver("legacy", Legacy)
        registry.add_driver("plain", Plain)

    @hookimpl
    def gatewayd_rpc_methods(registry, gateway):
        pass
''')


def _site(kind: str) -> str:
    return (f'[drivers.x]\ntype = "{kind}"\nplugin = "caps_plugin"\n[drivers.x.devices.d]\n'
            '[drivers.x.devices.d.points.sp]\nwritable = true\n')


@pytest.fixture
def caps_plugin(tmp_path, monkeypatch):
    (tmp_path / "caps_plugin.py").write_text(CAPS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_the_running_gateway_is_a_gateway_api_and_contexts_hold_it(tmp_path, caps_plugin):
    with trio.fail_after(30):
        async with run_gateway(tmp_path, _site("plain")) as gw:
            assert isinstance(gw, face.GatewayAPI)
            for runner in gw.drivers.values():
                assert isinstance(runner, face.RunnerInfo)
            inst = gw.driver_instance(driver_id="x")
            assert inst.ctx.gateway is gw
            lock = inst.ctx.write_lock("d", ("hr", 1))
            assert lock is gw.write_lock("d", ("hr", 1))


@pytest.mark.parametrize("kind,levelled", [("declared", True), ("legacy", True), ("plain", False)])
async def test_priority_array_writes_follow_the_declared_capability(tmp_path, caps_plugin, caplog, kind, levelled):
    caplog.set_level(logging.WARNING, logger="gatewayd.plugin")
    with trio.fail_after(30):
        async with run_gateway(tmp_path, _site(kind)) as gw:
            gw.plain_writes, gw.level_writes = [], []
            await wait_until(gw, lambda: gw.points.points["d/sp"].status == "ok")
            await rpc(gw, "points.write", {"point": "d/sp", "value": 7, "priority": 8})
            if levelled:
                assert gw.level_writes == [("d/sp", 7, 8)] and gw.plain_writes == []
            else:
                assert gw.plain_writes == [("d/sp", 7)] and gw.level_writes == []
    deprecations = [r.getMessage() for r in caplog.records if "declares no capabilities" in r.getMessage()]
    if kind == "legacy":
        assert len(deprecations) == 1 and "caps_plugin.Legacy" in deprecations[0]
        assert "capabilities = frozenset({'priority_array'})" in deprecations[0]
    else:
        assert deprecations == []


@pytest.mark.parametrize("kind,result", [("declared", {"found": 0}), ("legacy", {"found": 1}), ("plain", None)])
async def test_discovery_scan_follows_the_declared_capability(tmp_path, caps_plugin, kind, result):
    with trio.fail_after(30):
        async with run_gateway(tmp_path, _site(kind)) as gw:
            if result is None:
                with pytest.raises(RpcRemoteError, match="driver 'x' has no discovery"):
                    await rpc(gw, "discovery.scan", {"driver": "x"})
            else:
                assert await rpc(gw, "discovery.scan", {"driver": "x"}) == result


def test_supports_names_an_unknown_capability():
    with pytest.raises(ValueError, match="unknown driver capability 'teleport'.*discovery"):
        face.supports(face.Driver, "teleport")


def test_first_party_drivers_declare_their_capabilities():
    from gatewayd_modbus.driver import ModbusDriver

    assert face.supports(ModbusDriver, face.DISCOVERY)
    assert not face.supports(ModbusDriver, face.PRIORITY_ARRAY)


async def test_hook_trace_is_switched_on_by_the_environment(tmp_path, caps_plugin, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="gatewayd.hooks")
    with trio.fail_after(30):
        async with run_gateway(tmp_path, _site("plain")):
            pass
    assert not [r for r in caplog.records if r.name == "gatewayd.hooks"]
    caplog.clear()
    monkeypatch.setenv("GATEWAYD_HOOK_TRACE", "1")
    with trio.fail_after(30):
        async with run_gateway(tmp_path, _site("plain")):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "gatewayd.hooks"]
    assert any("gatewayd_register" in line for line in lines), lines
    assert any("gatewayd_rpc_methods" in line for line in lines), lines
