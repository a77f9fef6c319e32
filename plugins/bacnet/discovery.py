"""User-initiated discovery (``discovery.scan``) and turning a find into a device table.

Never runs at startup. A scan sends Who-Is (global broadcast, ranged, or to
given addresses) on one network or on all of them in parallel, collects I-Ams
for ``timeout`` seconds, then enriches each device: the device object's
identity properties, the object-list (whole array, index by index when the
device cannot send it in one piece), and per object its name, description,
units, state texts and whether it has a priority array (writable). Each device
is recorded with ``ctx.report_discovery("<network>:<instance>", data)``.
``who_has = {object = "..."} | {name = "..."}`` runs a Who-Has instead.
"""

from __future__ import annotations

import re
import time
from typing import Any

import trio

from .reading import kind_of
from .stack import BacnetError

__all__ = ["discover", "device_table", "UNITS"]

DEVICE_PROPS = ["object-name", "vendor-name", "vendor-identifier", "model-name", "firmware-revision",
                "application-software-version", "location", "description", "max-apdu-length-accepted",
                "segmentation-supported", "protocol-version", "protocol-revision"]

# BACnet engineering units -> the unit strings gatewayd uses (gatewayd.units); others keep the BACnet name
UNITS = {
    "degrees-celsius": "°C", "degrees-fahrenheit": "°F", "degrees-kelvin": "K", "percent": "%",
    "percent-relative-humidity": "%RH", "kilowatts": "kW", "watts": "W", "megawatts": "MW",
    "kilowatt-hours": "kWh", "watt-hours": "Wh", "megawatt-hours": "MWh", "volts": "V", "millivolts": "mV",
    "kilovolts": "kV", "amperes": "A", "milliamperes": "mA", "hertz": "Hz", "pascals": "Pa",
    "kilopascals": "kPa", "bars": "bar", "pounds-force-per-square-inch": "psi", "liters-per-second": "l/s",
    "liters-per-minute": "l/min", "liters-per-hour": "l/h", "cubic-meters-per-hour": "m³/h",
    "cubic-meters-per-second": "m³/s", "cubic-feet-per-minute": "cfm", "meters-per-second": "m/s",
    "seconds": "s", "minutes": "min", "hours": "h", "parts-per-million": "ppm", "liters": "l",
    "cubic-meters": "m³", "kilograms": "kg", "revolutions-per-minute": "rpm", "lux": "lx",
    "volt-amperes": "VA", "kilovolt-amperes": "kVA", "volt-amperes-reactive": "var",
    "kilovolt-amperes-reactive": "kvar", "power-factor": None, "no-units": None,
}

OBJECT_TYPES = ("analog-input", "analog-output", "analog-value", "binary-input", "binary-output", "binary-value",
                "multi-state-input", "multi-state-output", "multi-state-value")
_SHRINK = ("segmentation-not-supported", "apdu-too-long", "buffer-overflow")


def _kind(oid: str) -> str | None:
    return kind_of(oid.split(",")[0])


class _Reader:
    """Reads for one device during a scan: RPM packed and shrunk, ReadProperty when refused."""

    def __init__(self, drv, stack, address: str, max_apdu: int, seg: str) -> None:
        self.drv, self.stack, self.address = drv, stack, address
        self.max_apdu, self.seg = max_apdu or 480, seg
        self.rpm = True
        self.requests = 0

    async def rp(self, oid: str, prop: str, index: int | None = None):
        self.requests += 1
        self.drv.stats["requests"] += 1
        return await self.drv.aio.run(self.stack.read, self.address, oid, prop, index)

    async def props(self, specs: list[tuple[str, list]]) -> dict:
        """``{(oid, prop): value}``; properties the device has not are left out."""
        out: dict = {}
        if self.rpm:
            try:
                self.requests += 1
                self.drv.stats["requests"] += 1
                for oid, prop, idx, v, err in await self.drv.aio.run(self.stack.read_multiple, self.address, specs):
                    if err is None:
                        out[(oid, prop if idx is None else f"{prop}[{idx}]")] = v
                return out
            except BacnetError as e:
                if e.kind in ("timeout", "transport"):
                    raise
                if e.kind == "abort" and e.reason in _SHRINK and (len(specs) > 1 or len(specs[0][1]) > 1):
                    if len(specs) > 1:
                        half = len(specs) // 2
                        out.update(await self.props(specs[:half]))
                        out.update(await self.props(specs[half:]))
                    else:
                        oid, props = specs[0]
                        for p in props:
                            out.update(await self.props([(oid, [p])]))
                    return out
                if e.kind == "reject" or e.reason in ("unrecognized-service", "service-request-denied"):
                    self.rpm = False
                elif len(specs) > 1:  # a whole-request error (one bad object): one object at a time
                    for spec in specs:
                        out.update(await self.props([spec]))
                    return out
                else:
                    pass  # fall through to ReadProperty of each
        for oid, props in specs:
            for p in props:
                prop, idx = p if isinstance(p, (tuple, list)) else (p, None)
                try:
                    out[(oid, prop if idx is None else f"{prop}[{idx}]")] = await self.rp(oid, prop, idx)
                except BacnetError as e:
                    if e.kind in ("timeout", "transport"):
                        raise
        return out

    async def object_list(self, inst: int) -> list[str]:
        dev = f"device,{inst}"
        try:
            lst = await self.rp(dev, "object-list")
            if isinstance(lst, list):
                return lst
        except BacnetError as e:
            if e.kind in ("timeout", "transport") and not (e.kind == "timeout" and self.seg == "none"):
                raise
        # the device cannot send the whole array (no segmentation): index by index
        n = await self.rp(dev, "object-list", 0)
        out = []
        for i in range(1, int(n) + 1):
            out.append(await self.rp(dev, "object-list", i))
        return out


async def _enrich(drv, net: str, info: dict, objects: bool) -> dict:
    stack = drv.stacks[net]
    inst = info["device_instance"]
    r = _Reader(drv, stack, info["address"], info.get("max_apdu"), info.get("segmentation") or "none")
    dev = f"device,{inst}"
    got = await r.props([(dev, DEVICE_PROPS)])
    data = dict(info)
    for p in DEVICE_PROPS:
        if (dev, p) in got:
            data[p.replace("-", "_")] = got[(dev, p)]
    data["name"] = data.pop("object_name", None) or f"device-{inst}"
    data["rpm"] = r.rpm
    oids = await r.object_list(inst)
    data["object_count"] = len(oids)
    data["objects"] = []
    if objects:
        wanted = [o for o in oids if o.split(",")[0] in OBJECT_TYPES]
        per = max(1, min(20, ((r.max_apdu * (8 if r.seg in ("both", "transmit") else 1)) - 4) // 220))
        for i in range(0, len(wanted), per):
            chunk = wanted[i:i + per]
            specs = []
            for oid in chunk:
                props: list = ["object-name", "description"]
                k = _kind(oid)
                if k == "analog":
                    props.append("units")
                elif k == "binary":
                    props += ["active-text", "inactive-text"]
                elif k == "multistate":
                    props.append("state-text")
                props.append(("priority-array", 0))
                specs.append((oid, props))
            vals = await r.props(specs)
            for oid in chunk:
                k = _kind(oid)
                o = {"object": oid, "kind": k, "name": vals.get((oid, "object-name")),
                     "description": vals.get((oid, "description")),
                     "writable": (oid, "priority-array[0]") in vals}
                if k == "analog":
                    o["units"] = vals.get((oid, "units"))
                elif k == "binary":
                    o["states"] = [vals.get((oid, "inactive-text")), vals.get((oid, "active-text"))]
                elif k == "multistate":
                    o["states"] = vals.get((oid, "state-text")) or []
                data["objects"].append(o)
    data["requests"] = r.requests
    return data


async def discover(drv, network: str | None = None, low: int | None = None, high: int | None = None,
                   address: Any = None, timeout: float | None = None, who_has: dict | None = None,
                   objects: bool = True, enrich: bool = True) -> dict:
    """Who-Is (or Who-Has) on one network or all in parallel; enrich and record what answered."""
    if network is not None and network not in drv.stacks:
        raise TypeError(f"no network {network!r} (known: {', '.join(drv.stacks) or 'none'})")
    if (low is None) != (high is None):
        raise TypeError("give both low and high for a ranged Who-Is")
    if low is not None and not (0 <= low <= high <= 4194303):
        raise TypeError("need 0 <= low <= high <= 4194303")
    addresses = [address] if isinstance(address, str) else list(address or [])
    nets = [network] if network else list(drv.stacks)
    timeout = float(timeout if timeout is not None else drv.config.settings["who_is_timeout"])
    t_start = time.time()
    found: dict[tuple, dict] = {}
    i_haves: list[dict] = []

    def listener(item):
        if item[0] == "i-am" and item[1] in nets:
            _k, net, inst, addr, max_apdu, seg, vendor = item
            if low is not None and not (low <= inst <= high):
                return
            found[(net, inst)] = {"network": net, "device_instance": inst, "address": addr, "max_apdu": max_apdu,
                                  "segmentation": seg, "vendor_id": vendor}
        elif item[0] == "i-have" and item[1] in nets:
            _k, net, inst, addr, oid, name = item
            i_haves.append({"network": net, "device_instance": inst, "address": addr, "object": oid, "name": name})

    drv.listeners.append(listener)
    try:
        async with trio.open_nursery() as n:
            for net in nets:
                stack = drv.stacks[net]
                for a in (addresses or [None]):
                    if who_has:
                        if not isinstance(who_has, dict) or not (who_has.get("object") or who_has.get("name")):
                            raise TypeError("who_has needs {\"object\": \"analog-input,1\"} or {\"name\": ...}")
                        n.start_soon(drv.aio.run, stack.who_has, low, high, who_has.get("object"),
                                     who_has.get("name"), a)
                    else:
                        n.start_soon(drv.aio.run, stack.who_is, low, high, a)
        await trio.sleep(timeout)  # the collection window: I-Ams may come from any device until then
    finally:
        drv.listeners.remove(listener)
    if who_has:
        return {"networks": nets, "i_have": i_haves}
    keys, errors = [], {}
    limiter = trio.CapacityLimiter(4)

    async def one(net, inst, info):
        key = f"{net}:{inst}"
        async with limiter:
            try:
                data = await _enrich(drv, net, info, objects) if enrich else dict(info)
            except BacnetError as e:
                errors[key] = str(e)
                data = {**info, "enrich_error": str(e)}
        await drv.ctx.report_discovery(key, data)
        keys.append(key)

    async with trio.open_nursery() as n:
        for (net, inst), info in sorted(found.items()):
            n.start_soon(one, net, inst, info)
    return {"networks": nets, "count": len(keys), "devices": sorted(keys), "errors": errors,
            "duration": round(time.time() - t_start, 3)}


_SLUG_BAD = re.compile(r"[^A-Za-z0-9_.:-]+")


def _slug(s: str | None, fallback: str) -> str:
    s = _SLUG_BAD.sub("_", (s or "").strip()).strip("_.:-")
    if not s or not s[0].isalnum():
        return fallback
    return s[:64]


def device_table(key: str, data: dict) -> tuple[str, dict]:
    """``(device_id, table)`` for ``[drivers.<id>.devices.<device_id>]`` with one point per object."""
    inst = int(data["device_instance"])
    dev_id = _slug(data.get("name"), f"bacnet-{inst}")
    table: dict = {"network": data["network"], "device_instance": inst}
    if data.get("address"):
        table["address"] = data["address"]
    points: dict = {}
    for o in data.get("objects") or []:
        if not o.get("kind"):
            continue
        base = _slug(o.get("name"), o["object"].replace(",", "-"))
        name, i = base, 2
        while name in points:
            name, i = f"{base}-{i}", i + 1
        p: dict = {"object": o["object"], "kind": o["kind"]}
        unit = UNITS.get(o.get("units"), o.get("units")) if o.get("units") else None
        if unit:
            p["unit"] = unit
        if o.get("states") and all(isinstance(s, str) for s in o["states"]):
            p["states"] = list(o["states"])
        if o.get("description"):
            p["description"] = o["description"]
        if o.get("writable"):
            p["writable"] = True
        points[name] = p
    if points:
        table["points"] = points
    return dev_id, table
