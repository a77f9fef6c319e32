"""Core RPC methods end to end: watch, history, config.validate, discovery accept into the TOML, outbox."""

import json
import os

import pytest
import trio

from gatewayd.rpc.client import RpcClient, RpcRemoteError
from gatewayd.testing import rpc, run_gateway, wait_until

SITE = """
# the counting site (this comment must survive discovery.accept)
[history]
flush_interval = "50ms"

[drivers.c]
type = "counter"   # counts
plugin = "ext_plugins.counter"
interval = "20ms"

[drivers.c.devices.d1]
[drivers.c.devices.d1.points.n]
tags = ["t1"]

[drivers.c.devices.d1.points.m]
history = "interval"
"""


async def test_points_watch_streams_changes_until_the_client_leaves(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        def watch():
            c = RpcClient(gw.config.control.socket)
            it = c.stream("points.watch", {"glob": "d1/n"})
            evs = []
            while len(evs) < 5:
                evs.extend(next(it)["params"]["events"])
            c.close()
            return evs
        evs = await trio.to_thread.run_sync(watch)
        assert {e["point"] for e in evs} == {"d1/n"} and all(e["kind"] == "value" for e in evs)
        vals = [e["value"] for e in evs]
        assert vals == sorted(vals)
        await wait_until(gw, lambda: not any(s["name"].startswith("watch:") for s in gw.bus.stats()),
                         what="watch subscription closed")
        with pytest.raises(RpcRemoteError, match="unknown event kinds"):
            await rpc(gw, "points.watch", {"kinds": ["nope"]})


async def test_history_query_range_limit_and_downsample(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 40)
        r = await rpc(gw, "history.query", {"point": "d1/n", "start": "-1h", "limit": 10})
        assert len(r["samples"]) == 10
        ts = [s["ts"] for s in r["samples"]]
        assert ts == sorted(ts)
        vals = [s["value"] for s in r["samples"]]
        assert vals == sorted(vals) and vals[0] >= 1
        d = await rpc(gw, "history.query", {"point": "d1/n", "downsample": "1h"})
        assert len(d["samples"]) == 1 and d["samples"][0]["count"] >= 10
        # d1/m is an interval-mode point: nothing until the first interval
        assert (await rpc(gw, "history.query", {"point": "d1/m"}))["samples"] == []
        with pytest.raises(RpcRemoteError, match="is not a time"):
            await rpc(gw, "history.query", {"point": "d1/n", "start": "yesterday-ish"})
        with pytest.raises(RpcRemoteError, match="limit must be an integer"):
            await rpc(gw, "history.query", {"point": "d1/n", "limit": 0})


async def test_config_validate_reports_problems_without_applying(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        bad = tmp_path / "other.toml"
        bad.write_text("[drivers.x]\ntype = \"counter\"\nplugin = \"ext_plugins.counter\"\ninterval = \"fast\"\n")
        r = await rpc(gw, "config.validate", {"path": str(bad)})
        assert r["ok"] is False and r["errors"][0].endswith(
            "4:1: drivers.x.interval: 'fast' is not a duration (examples: \"500ms\", \"5s\", \"2m\", \"1h\", \"30d\")")
        r = await rpc(gw, "config.validate")
        assert r["ok"] is True and "1 driver(s), 1 device(s), 2 point(s)" in r["summary"]


async def test_discovery_scan_accept_writes_toml_keeping_comments_and_starts_polling(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        assert (await rpc(gw, "discovery.scan", {"driver": "c", "count": 2})) == {"found": 2}
        rows = await rpc(gw, "discovery.list", {"driver": "c"})
        assert [(r["key"], r["status"]) for r in rows] == [("unit-0", "discovered"), ("unit-1", "discovered")]
        await rpc(gw, "discovery.ignore", {"driver": "c", "key": "unit-1"})
        r = await rpc(gw, "discovery.accept", {"driver": "c", "key": "unit-0"})
        assert r["device"] == "found-0" and r["reload"]["changed"] == ["driver c restarted"]
        await wait_until(gw, lambda: "found-0/n" in gw.points.points
                         and gw.points.points["found-0/n"].status == "ok")
        with open(gw.config.path) as fh:
            text = fh.read()
        assert "# the counting site (this comment must survive discovery.accept)" in text
        assert 'type = "counter"   # counts' in text
        assert "[drivers.c.devices.found-0.points.n]" in text
        # a re-scan keeps the decisions
        await rpc(gw, "discovery.scan", {"driver": "c", "count": 2})
        rows = {r["key"]: r["status"] for r in await rpc(gw, "discovery.list", {"driver": "c"})}
        assert rows == {"unit-0": "accepted", "unit-1": "ignored"}
        with pytest.raises(RpcRemoteError, match="already exists"):
            await rpc(gw, "discovery.accept", {"driver": "c", "key": "unit-0"})


async def test_connector_reads_its_outbox_cursor_and_status_shows_backlog(tmp_path):
    from ext_plugins import collector

    collector.DELIVERED.clear()
    async with run_gateway(tmp_path, SITE + """
[connectors.good]
type = "collector"
plugin = "ext_plugins.collector"

[connectors.stuck]
type = "collector"
plugin = "ext_plugins.collector"
fail = true
""") as gw:
        await wait_until(gw, lambda: len([e for e in collector.DELIVERED.get("good", []) if e["kind"] == "value"]) > 20)
        ev = next(e for e in collector.DELIVERED["good"] if e["kind"] == "value" and e["point"] == "d1/n")
        assert (ev["device"], ev["driver"], ev["status"], ev["tags"]) == ("d1", "c", "ok", ["t1"])
        st = {c["id"]: c for c in await rpc(gw, "connectors.status")}
        assert st["stuck"]["outbox"]["backlog"] > 0 and st["stuck"]["connection"] == "down"
        assert st["good"]["outbox"]["delivered"] > 20


async def test_no_outbox_writes_without_connectors(tmp_path):
    async with run_gateway(tmp_path, SITE) as gw:
        await wait_until(gw, lambda: gw.recorder.samples_written > 10)
        assert gw.recorder.entries_written == 0 and gw.outbox.head == 0


async def test_interval_history_samples_every_interval_regardless_of_changes(tmp_path):
    async with run_gateway(tmp_path, """
        [history]
        mode = "interval"
        interval = "1s"
        [drivers.c]
        type = "counter"
        plugin = "ext_plugins.counter"
        interval = "10ms"
        [drivers.c.devices.d1]
        [drivers.c.devices.d1.points.n]
        [drivers.c.devices.d1.points.cov]
        history = "cov"
        """) as gw:
        await wait_until(gw, lambda: len(gw.history.query("d1/n")) >= 2, timeout=10)
        n = gw.history.query("d1/n")
        cov = gw.history.query("d1/cov")
        # the cov point records every change; the interval point one sample per interval, skipping the
        # changes in between (the spacing of the samples is a figure: bench/core.py prints it)
        assert len(cov) > len(n)
        cov_values = [s["value"] for s in cov]
        assert cov_values == sorted(cov_values) and len(set(cov_values)) == len(cov_values)
        assert n[1]["ts"] > n[0]["ts"] and n[1]["value"] - n[0]["value"] > 1
