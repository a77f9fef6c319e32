"""discovery.accept edits the TOML: where the new device goes, what is kept, what the reply says (issue 12 item 7)."""

import os
import tomllib

from gatewayd.testing import rpc, run_gateway, wait_until

SITE = """\
# site header comment
[drivers.c]
type = "counter"   # counts
plugin = "ext_plugins.counter"
interval = "20ms"

[drivers.c.devices.d1]
[drivers.c.devices.d1.points.n]
step = 2.0        # keep this comment
# trailing note about d1/n: it stays with d1/n

# ---- the second driver: this comment describes [drivers.z]
[drivers.z]
type = "counter"
plugin = "ext_plugins.counter"
[drivers.z.devices.zz]
[drivers.z.devices.zz.points.n]
"""

BARE_PLUGIN = '''
from ext_plugins.counter import CounterDriver
from gatewayd.plugin import hookimpl

class BareDriver(CounterDriver):
    def accept_discovered(self, key, data):
        return f"bare-{data['unit']}", {}     # no profile matched: no points

@hookimpl
def gatewayd_register(registry):
    registry.add_driver("bare", BareDriver)
'''


async def test_accepted_device_goes_after_the_drivers_tables_and_trailing_comments(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        path = gw.config.path
        with open(path) as fh:
            before = fh.read()
        await rpc(gw, "discovery.scan", {"driver": "c", "count": 1})
        r = await rpc(gw, "discovery.accept", {"driver": "c", "key": "unit-0"})
        assert r["device"] == "found-0" and "message" not in r  # it has points
        await wait_until(gw, lambda: gw.points.points.get("found-0/n") is not None
                         and gw.points.points["found-0/n"].status == "ok")
        with open(path) as fh:
            after = fh.read()
        block = ('[drivers.c.devices.found-0]\n\n[drivers.c.devices.found-0.points.n]\nstep = 5.0\n'
                 'tags = ["found"]\n')
        note = "# trailing note about d1/n: it stays with d1/n\n"
        described = "# ---- the second driver: this comment describes [drivers.z]\n[drivers.z]\n"
        # after d1's table and its trailing comment, one blank line, the device, one blank line, then the
        # comment that describes [drivers.z] still on top of it; every other byte kept
        assert after == before.replace(note + "\n" + described, note + "\n" + block + "\n" + described)
        assert tomllib.loads(after)["drivers"]["z"]["devices"]["zz"] == {"points": {"n": {}}}


async def test_accepting_a_device_without_points_says_how_to_add_them(tmp_path, monkeypatch):
    mod = "bare_plugin_" + os.urandom(3).hex()
    (tmp_path / f"{mod}.py").write_text(BARE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    async with run_gateway(tmp_path, f'# bare site\n[drivers.b]\ntype = "bare"\nplugin = "{mod}"\n'
                                     '[drivers.b.devices.one]\n[drivers.b.devices.one.points.x]\n') as gw:
        await rpc(gw, "discovery.scan", {"driver": "b", "count": 1})
        r = await rpc(gw, "discovery.accept", {"driver": "b", "key": "unit-0"})
        assert r["device"] == "bare-0" and r["reload"]["ok"] is True
        assert r["message"] == (
            f"device 'bare-0' was added with 0 points (no profile matched it): add point tables "
            f"[drivers.b.devices.bare-0.points.<name>] in {r['file']}, or set profile = \"<name>\" in "
            "[drivers.b.devices.bare-0] if a profile fits (see profiles/ and the driver's README), then reload")
        with open(gw.config.path) as fh:
            assert fh.read().endswith("[drivers.b.devices.one.points.x]\n\n[drivers.b.devices.bare-0]\n")
