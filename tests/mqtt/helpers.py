"""Site TOML and checks shared by the MQTT connector tests and bench/mqtt.py."""

from __future__ import annotations

import json
import re


def site(port: int, *, points: int = 5, devices: int = 1, connector: str = "", driver: str = "",
         connector_id: str = "up", history: bool = False, flush: str = "50ms", outbox: str = "") -> str:
    devs = "\n".join(f"[drivers.fast.devices.d{i}]\ncount = {points}\n" for i in range(devices))
    return f"""
[history]
enabled = {str(history).lower()}
flush_interval = "{flush}"

[outbox]
{outbox}

[drivers.fast]
type = "fastdrv"
plugin = "fastdrv"
autostart = false
{driver}

{devs}

[connectors.{connector_id}]
type = "mqtt"
host = "127.0.0.1"
port = {port}
reconnect_min = "100ms"
reconnect_max = "500ms"
ack_interval = "50ms"
{connector}
"""


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def values_of(msgs, suffix: str = "/value") -> list[tuple[str, dict]]:
    return [(t, json.loads(p)) for t, p, _r, _q in msgs if t.endswith(suffix)]


def counters(msgs) -> list[tuple[str, int]]:
    """(device/point, k) for per-point value messages and batch messages, in arrival order."""
    out = []
    for t, p, _r, _q in msgs:
        if t.endswith("/value"):
            dev, point = t.split("/")[-3:-1]
            out.append((f"{dev}/{point}", json.loads(p)["value"]))
        elif t.endswith("/values"):
            dev = t.split("/")[-2]
            for v in json.loads(p)["values"]:
                out.append((f"{dev}/{v['point']}", v["value"]))
    return out


def check_complete_in_order(pairs, n: int, start: int = 1) -> int:
    """Every k in start..n arrived; per point, first arrivals are increasing. Returns the duplicate count."""
    seen: set[int] = set()
    last: dict[str, int] = {}
    dups = 0
    for point, k in pairs:
        if not isinstance(k, int) or k < start:
            continue
        if k in seen:
            dups += 1
            continue
        seen.add(k)
        assert k > last.get(point, 0), f"{point}: {k} after {last.get(point)}"
        last[point] = k
    missing = set(range(start, n + 1)) - seen
    assert not missing, f"{len(missing)} values missing, e.g. {sorted(missing)[:10]}"
    return dups
