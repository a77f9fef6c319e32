"""Calibration is applied after unit conversion, in the point's unit (Haxall curCalibration after curConvert)."""

import pytest

from gatewayd.testing import rpc, run_gateway, wait_until

SITE = """
[drivers.c]
type = "counter"
plugin = "ext_plugins.counter"
interval = "20ms"
[drivers.c.devices.room]
[drivers.c.devices.room.points.temp]
start = 20.0
step = 0.0
unit = "°C"
convert = "°C => °F"
calibration = 0.5
writable = true
[drivers.c.devices.room.points.scaled]
start = 200.0
step = 0.0
scale = 0.1
offset = 1.0
calibration = -0.25
"""


async def test_calibration_is_added_after_conversion_in_the_points_unit(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        await wait_until(gw, lambda: gw.points.points["room/temp"].value is not None
                         and gw.points.points["room/scaled"].value is not None, what="first values")
        row, = await rpc(gw, "points.read", {"points": ["room/temp"]})
        # 20 °C is 68 °F; +0.5 in the point's unit (°F) -> 68.5 (before: (20 + 0.5) °C -> 68.9 °F)
        assert row["unit"] == "°F" and row["value"] == pytest.approx(68.5)
        # no conversion: raw*scale + offset, then calibration
        assert gw.points.points["room/scaled"].value == pytest.approx(200 * 0.1 + 1.0 - 0.25)
        # writes take the inverse path: remove the calibration in °F, then convert back to °C
        await rpc(gw, "points.write", {"point": "room/temp", "value": 86.5, "priority": 8})
        (pid, raw), = [w for w in gw.drivers["c"].instance.written if w[0] == "room/temp"][-1:]
        assert raw == pytest.approx(30.0)
