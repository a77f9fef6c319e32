"""Point table: conversions, COV filter, status model, stale (mock clock), priority arrays, health."""

import time

import pytest
import trio
import trio.testing

from gatewayd.bus import Bus
from gatewayd.config import DeviceConfig, DriverConfig, PointConfig
from gatewayd.events import DeviceDown, DeviceRecovered, StatusChanged, ValueChanged
from gatewayd.points import DeviceHealth, PointError, PointSink, PointTable, PriorityArray, coerce_value
from gatewayd.units import parse_convert


def make_table(points: list[PointConfig], *, mono=None):
    bus = Bus()
    sub = bus.subscribe("test", maxlen=100_000)
    t = PointTable(bus, mono=mono or time.monotonic)
    devs = {}
    for p in points:
        devs.setdefault(p.device, {})[p.name] = p
    t.apply_driver(DriverConfig("drv", "x", None, True, {},
                                {d: DeviceConfig(d, "drv", True, {}, pts) for d, pts in devs.items()}))
    return t, sub, PointSink(t, "drv")


def pc(name, device="dev", **kw):
    return PointConfig(id=f"{device}/{name}", name=name, device=device, driver="drv", **kw)


def events(sub, cls=None):
    evs = sub.get_nowait(100_000) if sub.pending() else []
    return [e for e in evs if cls is None or isinstance(e, cls)]


# ------------------------------------------------------------------ conversions


def test_scale_offset_calibration_and_unit_conversion():
    t, sub, sink = make_table([pc("t", scale=0.1, offset=-40.0, calibration=0.5, unit="°C", convert="°C => °F")])
    sink.update("dev/t", 650)  # 65.0 - 40 = 25 °C = 77 °F, + 0.5 °F calibration (in the point's unit) = 77.5 °F
    p = t.get("dev/t")
    assert p.value == pytest.approx(77.5)
    assert p.unit == "°F"
    ev, = events(sub, ValueChanged)
    assert (ev.point, ev.value, ev.unit, ev.status) == ("dev/t", pytest.approx(77.5), "°F", "ok")
    assert p.convert_out(77.5) == pytest.approx(650)  # the inverse used for writes


@pytest.mark.parametrize("spec,x,y", [
    ("°C => °F", 100, 212), ("°F => °C", 32, 0), ("K => °C", 273.15, 0), ("kPa => psi", 6.894757293168, 1),
    ("kW => BTU/h", 1, 3412.14163), ("m³/h => L/s", 3.6, 1), ("cfm => m³/h", 1, 1.699010796),
    ("inH2O => Pa", 1, 249.08891), ("kWh => MJ", 1, 3.6), ("% => ratio", 50, 0.5), ("ton => kW", 1, 3.5168528),
])
def test_unit_conversions(spec, x, y):
    c = parse_convert(spec)
    assert c(x) == pytest.approx(y, rel=1e-6, abs=1e-9)
    assert c.back(c(x)) == pytest.approx(x, rel=1e-9, abs=1e-9)


def test_conversion_errors():
    with pytest.raises(ValueError, match="cannot convert temperature"):
        parse_convert("°C => kW")
    with pytest.raises(ValueError, match="must look like"):
        parse_convert("°C")


def test_kinds_coerce_reported_values():
    t, sub, sink = make_table([pc("b", kind="binary"), pc("m", kind="multistate"), pc("s", kind="string")])
    sink.update("dev/b", 1)
    sink.update("dev/m", 3.0)
    sink.update("dev/s", 42)
    assert (t.get("dev/b").value, t.get("dev/m").value, t.get("dev/s").value) == (True, 3, "42")


def test_non_numeric_analog_is_a_point_fault_not_a_crash():
    t, sub, sink = make_table([pc("a")])
    sink.update("dev/a", "garbage")
    p = t.get("dev/a")
    assert p.status == "fault" and "non-numeric" in p.reason


# ------------------------------------------------------------------ COV


def test_cov_deadband_reports_only_moves_beyond_it():
    t, sub, sink = make_table([pc("a", cov_deadband=0.5)])
    for v in (10.0, 10.2, 10.4, 10.6, 10.7, 10.0):
        sink.update("dev/a", v)
    assert [e.value for e in events(sub, ValueChanged)] == [10.0, 10.6, 10.0]
    assert t.get("dev/a").value == 10.0  # the table always holds the latest reading


def test_without_deadband_every_change_but_no_repeats():
    t, sub, sink = make_table([pc("a"), pc("b", kind="binary")])
    for v in (1, 1, 2, 2, 1):
        sink.update("dev/a", v)
    for v in (True, True, False):
        sink.update("dev/b", v)
    vals = [(e.point, e.value) for e in events(sub, ValueChanged)]
    assert vals == [("dev/a", 1), ("dev/a", 2), ("dev/a", 1), ("dev/b", True), ("dev/b", False)]


def test_unknown_point_from_driver_is_an_error():
    t, sub, sink = make_table([pc("a")])
    with pytest.raises(PointError, match="unknown point 'dev/zz'"):
        sink.update("dev/zz", 1)


# ------------------------------------------------------------------ status


async def test_stale_after_stale_time_driven_by_mock_clock():
    clock = trio.testing.MockClock()
    t, sub, sink = make_table([pc("a", stale_time=30.0), pc("b", stale_time=300.0)], mono=lambda: clock.current_time())
    sink.update("dev/a", 1.0)
    sink.update("dev/b", 1.0)
    events(sub)
    clock.jump(29.0)
    assert t.check_stale() == 0
    clock.jump(2.0)
    assert t.check_stale() == 1
    assert (t.get("dev/a").status, t.get("dev/b").status) == ("stale", "ok")
    ev, = events(sub, StatusChanged)
    assert (ev.point, ev.old, ev.new, ev.reason) == ("dev/a", "ok", "stale", "no value for 30s")
    sink.update("dev/a", 1.0)  # same value, but the status changed back: reported
    vc, = events(sub, ValueChanged)
    assert (vc.value, vc.status) == (1.0, "ok")
    assert t.get("dev/a").status == "ok"


def test_points_inherit_device_status_and_recover():
    t, sub, sink = make_table([pc("a"), pc("b"), pc("c", device="other")])
    for pid in ("dev/a", "dev/b", "other/c"):
        sink.update(pid, 1)
    events(sub)
    sink.device_status("dev", "down", reason="timeout")
    assert [t.get(p).status for p in ("dev/a", "dev/b", "other/c")] == ["down", "down", "ok"]
    assert t.get("dev/a").reason == "timeout"
    sink.device_status("dev", "ok")
    # back to ok only with a fresh value
    assert t.get("dev/a").status == "ok"


def test_unknown_until_first_value_and_disabled_points_ignore_updates():
    t, sub, sink = make_table([pc("a"), pc("d", enabled=False)])
    assert t.get("dev/a").status == "unknown"
    assert t.get("dev/d").status == "disabled"
    sink.update("dev/d", 5)
    assert t.get("dev/d").value is None


def test_device_health_backoff_down_after_five_and_recovery():
    t, sub, sink = make_table([pc("a")])
    h = sink.health("dev")
    delays = [h.failure("timeout") for _ in range(10)]
    assert delays[0] == pytest.approx(2.0, rel=0.11)
    assert delays[1] == pytest.approx(4.0, rel=0.11)
    assert delays[4] == pytest.approx(32.0, rel=0.11)
    assert max(delays) <= 300 * 1.1 and delays[-1] == pytest.approx(300, rel=0.11)
    downs = events(sub, DeviceDown)
    assert len(downs) == 1 and downs[0].failures == 5
    assert t.devices["dev"].conn_status == "down" and t.get("dev/a").status == "down"
    h.success()
    rec = events(sub, DeviceRecovered)
    assert len(rec) == 1
    assert t.devices["dev"].conn_status == "ok" and h.failures == 0


def test_four_failures_do_not_make_a_device_down():
    t, sub, sink = make_table([pc("a")])
    h = sink.health("dev")
    for _ in range(4):
        h.failure("timeout")
    h.success()
    assert not events(sub, DeviceDown) and not events(sub, DeviceRecovered)


# ------------------------------------------------------------------ priority array

PA_CASES = [
    # (relinquish default, operations [(level, value)], expected (effective, level))
    (None, [], (None, None)),
    (20.0, [], (20.0, None)),
    (20.0, [(16, 21.0)], (21.0, 16)),
    (20.0, [(16, 21.0), (8, 18.0)], (18.0, 8)),
    (20.0, [(16, 21.0), (8, 18.0), (8, None)], (21.0, 16)),
    (20.0, [(16, 21.0), (8, 18.0), (16, None), (8, None)], (20.0, None)),
    (20.0, [(1, 5.0), (16, 21.0)], (5.0, 1)),
    (20.0, [(10, 1.0), (9, 2.0), (11, 3.0)], (2.0, 9)),
    (20.0, [(16, None)], (20.0, None)),  # relinquishing an empty slot is harmless
    (False, [(5, True), (5, False)], (False, 5)),  # a False command is a command, not a relinquish
]


@pytest.mark.parametrize("default,ops,expected", PA_CASES)
def test_priority_array_semantics(default, ops, expected):
    pa = PriorityArray(default)
    for lvl, v in ops:
        pa.set(lvl, v)
    assert pa.effective() == expected


@pytest.mark.parametrize("bad", [0, 17, -1, "8", 8.0, True])
def test_priority_array_rejects_bad_levels(bad):
    with pytest.raises(PointError, match="priority must be an integer 1..16"):
        PriorityArray().set(bad, 1)


@pytest.mark.parametrize("kind,value,expected", [
    ("analog", 3, 3), ("binary", 1, True), ("binary", "off", False), ("multistate", 2, 2),
    ("multistate", "cooling", 3), ("string", "x", "x"), ("analog", None, None),
])
def test_coerce_written_values(kind, value, expected):
    assert coerce_value(kind, value, ("off", "heating", "cooling")) == expected


@pytest.mark.parametrize("kind,value", [("analog", "hot"), ("analog", float("nan")), ("binary", 2),
                                        ("multistate", 0), ("multistate", 4), ("string", 1), ("analog", True)])
def test_coerce_rejects_bad_values(kind, value):
    with pytest.raises(PointError):
        coerce_value(kind, value, ("off", "heating", "cooling"))


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "s"]),
                          st.one_of(st.floats(-1e6, 1e6), st.integers(-1000, 1000), st.booleans(), st.just("x"))),
                max_size=40),
       st.lists(st.sampled_from(["ok", "down"]), max_size=40))
# a device down then up again: the first value after it must be reported with status ok by both paths
@example(seq=[("a", 0.0)] * 10 + [("a", 1.0)], dev_status=["ok", "ok", "ok", "down"] + ["ok"] * 7)
def test_ingest_many_fast_path_equals_ingest(seq, dev_status):
    cfgs = [pc("a"), pc("b", cov_deadband=0.5, scale=0.1, unit="°C", convert="°C => °F"), pc("c", kind="binary"),
            pc("s", kind="string")]
    t1, s1, k1 = make_table([pc(c.name, **{f: getattr(c, f) for f in ("kind", "cov_deadband", "scale", "unit",
                                                                      "convert")}) for c in cfgs])
    t2, s2, k2 = make_table(cfgs)
    batch = []  # ingest_many gets every run of readings between two device-status changes at once
    for i, (name, raw) in enumerate(seq):
        if i < len(dev_status) and i % 7 == 3:
            t2.ingest_many(batch, 5.0)
            batch = []
            k1.device_status("dev", dev_status[i])
            k2.device_status("dev", dev_status[i])
        t1.ingest(f"dev/{name}", raw, 5.0)
        batch.append((f"dev/{name}", raw))
    t2.ingest_many(batch, 5.0)
    assert t1.ingested == t2.ingested
    import dataclasses
    e1, e2 = s1.get_nowait(10_000) if s1.pending() else [], s2.get_nowait(10_000) if s2.pending() else []
    # status events carry the wall clock of the moment; compare what they say
    assert [dataclasses.replace(e, ts=0) for e in e1] == [dataclasses.replace(e, ts=0) for e in e2]
    for pid in t1.points:
        a, b = t1.get(pid), t2.get(pid)
        assert (a.value, a.status, a.reported_status, a.reason) == (b.value, b.status, b.reported_status, b.reason)


def test_a_flags_only_change_is_reported():
    t, sub, sink = make_table([pc("a")])
    sink.update("dev/a", 1.0)
    sink.update("dev/a", 1.0, flags=("in_alarm",))
    sink.update("dev/a", 1.0, flags=("in_alarm",))
    sink.update("dev/a", 1.0)
    assert [e.flags for e in events(sub, ValueChanged)] == [(), ("in_alarm",), ()]


def test_mark_down_publishes_once_and_success_recovers():
    t, sub, sink = make_table([pc("a")])
    h = sink.health("dev")
    h.mark_down("missed 2 monitor cycles")
    h.mark_down("missed 3 monitor cycles")
    assert len(events(sub, DeviceDown)) == 1 and t.devices["dev"].conn_status == "down"
    h.success()
    assert len(events(sub, DeviceRecovered)) == 1 and t.devices["dev"].conn_status == "ok"


@pytest.mark.parametrize("batched", [False, True])
def test_a_value_read_while_down_is_reported_again_as_ok_when_the_device_returns(batched):
    """Found by the property test above: the short path of ``ingest_many`` skipped the
    re-report of an unchanged value whose last report carried the device's ``down`` status."""
    t, sub, sink = make_table([pc("b", scale=0.1, unit="°C", convert="°C => °F")])
    sink.device_status("dev", "down")
    t.ingest("dev/b", 0.0, 5.0)
    sink.device_status("dev", "ok")
    events(sub)
    if batched:
        t.ingest_many([("dev/b", 0.0)], 6.0)
    else:
        t.ingest("dev/b", 0.0, 6.0)
    [ev] = events(sub, ValueChanged)
    assert (ev.value, ev.status) == (32.0, "ok")
    assert t.get("dev/b").reported_status == "ok"
