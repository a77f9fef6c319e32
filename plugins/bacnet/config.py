"""Configuration of the ``bacnet`` driver: the settings, device and point schemas,
the network modes, the driver-wide defaults of the per-device settings and the
cross-key checks run after schema validation."""

from __future__ import annotations

import difflib
import re

from gatewayd.plugin import Bool, Duration, Enum, Float, Int, Key, Map, Schema, Str

DEFAULT_PORT = 47808


MODES = ("ip", "ipv6", "foreign")


PLANNED_MODES = {"mstp": "BACnet MS/TP"}


def _check_mode(value: str) -> str | None:
    """Schema check of a network's ``mode``: a planned mode is a clear refusal, not an unknown word."""
    if value in MODES:
        return None
    if value in PLANNED_MODES:
        return (f"mode \"{value}\" ({PLANNED_MODES[value]}) is planned, not supported yet: use an MS/TP-to-IP "
                "router and mode = \"ip\" (see plugins/bacnet/README.md, \"MS/TP\")")
    close = difflib.get_close_matches(value, MODES, n=1)
    return f"must be one of {', '.join(MODES)}, got {value!r}" + (f" (did you mean {close[0]!r}?)"
                                                                         if close else "")


NETWORK_SCHEMA = Schema({
    "mode": Key(Str(check=_check_mode), "ip", "ip: BACnet/IP on a local subnet; ipv6: BACnet/IPv6 "
                                                    "(Annex U); foreign: register with a BBMD"),
    "address": Key(Str(), None, "local address with prefix for the broadcast domain, e.g. \"192.168.1.10/24\"; "
                                "ipv6: e.g. \"fd00::10\" or \"[fe80::10%eth0]:47808\""),
    "vmac": Key(Str(), None, "ipv6: our virtual MAC address, 3 octets (default: server_device_instance, "
                             "e.g. \"0x0004d2\")"),
    "routes": Key(Map(item=Str()), None, "static paths to remote networks, DNET = router address, e.g. "
                                         "{ \"2\" = \"192.168.1.20:47808\" } (otherwise learned from traffic)"),
    "peers": Key(Map(item=Str()), None, "ipv6: known stations, VMAC = \"[address]:port\", for networks where "
                                   "multicast address resolution does not reach"),
    "port": Key(Int(min=0, max=65535), DEFAULT_PORT, "local UDP port (0: any, foreign devices only)"),
    "interface": Key(Str(), None, "take the address of this interface when 'address' is not set"),
    "bbmd_addr": Key(Str(), None, "foreign mode: the BBMD, \"host\" or \"host:port\""),
    "ttl": Key(Int(min=10, max=65535), 300, "foreign mode: registration time-to-live in seconds"),
    "reregister_at": Key(Float(min=0.1, max=0.95), 0.75, "foreign mode: re-register at this fraction of ttl"),
})


_DEVICE_COMMON = {
    "poll_interval": Key(Duration(min=0.05), None, "default 5s"),
    "cov": Key(Enum("off", "object", "property"), None, "COV subscriptions: SubscribeCOV (object) or "
                                                         "SubscribeCOVProperty (property); default off"),
    "cov_lifetime": Key(Duration(min=10, max=86400), None, "default 300s, renewed at 0.75 of it"),
    "cov_confirmed": Key(Bool(), None, "ask for confirmed notifications (default false)"),
    "write_priority": Key(Int(min=1, max=16), None, "priority of writes that name none (default 16, never 1 "
                                                    "unless you say so)"),
    "read_mode": Key(Enum("auto", "rpm", "rp"), None, "auto: RPM, falling back to ReadProperty when refused"),
    "rpm_max_objects": Key(Int(min=1, max=1000), None, "objects per ReadPropertyMultiple at most (default 100)"),
    "rpm_segments": Key(Int(min=1, max=64), None, "segments an answer may take when the device can segment "
                                                  "(default 1: more, unsegmented requests)"),
}


DRIVER_DEFAULTS = {"poll_interval": 5.0, "cov": "off", "cov_lifetime": 300.0, "cov_confirmed": False,
                   "write_priority": 16, "read_mode": "auto", "rpm_max_objects": 100, "rpm_segments": 1}


_OBJ_RE = re.compile(r"^[a-z][a-z0-9-]*[,:]\d+$")


def _objid(s: str) -> str | None:
    if not _OBJ_RE.match(s):
        return "an object id looks like \"analog-input,3\""
    inst = int(re.split("[,:]", s)[1])
    if inst > 4194303:
        return "object instance must be <= 4194303"
    return None


def norm_objid(s: str) -> str:
    t, i = re.split("[,:]", s)
    return f"{t},{int(i)}"


SETTINGS_SCHEMA = Schema({
    "networks": Key(Map(NETWORK_SCHEMA), dict, "named networks, [drivers.<id>.networks.<name>]"),
    "server_device_instance": Key(Int(min=0, max=4194302), None, "our own device object's instance "
                                                                  "(required)"),
    "server_device_name": Key(Str(), "gatewayd", "our own device object's name"),
    "apdu_timeout": Key(Duration(min=0.05, max=60), 3.0, "per try of a confirmed request"),
    "apdu_retries": Key(Int(min=0, max=10), 2),
    "who_is_timeout": Key(Duration(min=0.05, max=60), 3.0, "how long to collect I-Ams"),
    "monitor_interval": Key(Duration(min=0), 300.0, "Who-Is to every known device this often (0: off)"),
    "monitor_missed": Key(Int(min=1, max=100), 2, "missed monitor cycles before DeviceDown"),
    "object_check_cycles": Key(Int(min=0, max=10000), 6, "compare object-list length every N monitor "
                                                          "cycles (0: never)"),
    "time_sync": Key(Bool(), False, "send a time synchronization to every device periodically"),
    "time_sync_interval": Key(Duration(min=1), 4 * 3600.0, "how often (the first one at start)"),
    "time_sync_utc": Key(Bool(), True, "UTCTimeSynchronization (true) or local-time TimeSynchronization "
                                       "(false, for devices that only take that)"),
    "cov_renew": Key(Float(min=0.1, max=0.95), 0.75, "renew COV subscriptions at this fraction of the "
                                                     "lifetime"),
    "cov_silence": Key(Duration(min=0.05), 10.0, "no notification this long after (re)subscribing: poll"),
    "cov_process_id": Key(Int(min=1, max=4000000), 1000, "first subscriber process id (+ device index)"),
    **_DEVICE_COMMON,
})

DEVICE_SCHEMA = Schema({
    "device_instance": Key(Int(min=0, max=4194302), None, "the device's instance number (required)"),
    "network": Key(Str(), None, "network name (default: the only network)"),
    "address": Key(Str(), None, "\"host\", \"host:port\"; omitted: found with a ranged Who-Is"),
    "max_apdu": Key(Int(min=50, max=1476), None, "override what the device's I-Am says"),
    "segmentation": Key(Enum("both", "transmit", "receive", "none"), None, "override the I-Am"),
    "monitor": Key(Bool(), True, "include in the Who-Is monitor"),
    **_DEVICE_COMMON,
})

POINT_SCHEMA = Schema({
    "object": Key(Str(check=_objid), None, "object id, e.g. \"analog-input,3\" (required)"),
    "property": Key(Str(pattern=r"[a-z][a-z0-9-]*"), "present-value"),
    "index": Key(Int(min=0), None, "array index of the property"),
    "priority": Key(Int(min=1, max=16), None, "write priority of this point when the write names none"),
    "cov": Key(Enum("off", "object", "property"), None, "override the device's cov"),
    "cov_increment": Key(Float(min=0), None, "SubscribeCOVProperty increment"),
})


def validate(config):
    """Cross-key checks of a driver's configuration after schema validation: yields
    ``(key_path, message)`` for each problem (networks, device instances, point objects)."""
    s = config.settings
    nets = s.get("networks") or {}
    if not nets:
        yield (("networks",), f"driver {config.id}: at least one network is needed, e.g. "
                              f"[drivers.{config.id}.networks.main] with address = \"192.168.1.10/24\"")
    if s.get("server_device_instance") is None:
        yield (("server_device_instance",), f"driver {config.id}: missing required key "
                                            "'server_device_instance' (our own BACnet device instance)")
    for name, n in nets.items():
        # a key that failed its own check is absent here (its error is already reported)
        mode = n.get("mode")
        if mode is None:
            continue
        if mode == "ipv6":
            if not n.get("address"):
                yield (("networks", name, "address"), f"network {name}: mode = \"ipv6\" needs address "
                                                      "(e.g. \"fd00::10\")")
            from .ipv6 import parse_ipv6, parse_vmac

            for key, check in ([("address", parse_ipv6)] if n.get("address") else []) + \
                    ([("vmac", parse_vmac)] if n.get("vmac") else []):
                try:
                    v = n[key]
                    check(v.split("/")[0] if key == "address" and not v.startswith("[") else v)
                except ValueError as e:
                    yield (("networks", name, key), f"network {name}: {e}")
            for vm, addr in (n.get("peers") or {}).items():
                try:
                    parse_vmac(vm)
                    parse_ipv6(addr)
                except ValueError as e:
                    yield (("networks", name, "peers", vm), f"network {name}: peers: {e}")
        for dnet in (n.get("routes") or {}):
            if not (dnet.isdigit() and 1 <= int(dnet) <= 65534):
                yield (("networks", name, "routes", dnet), f"network {name}: routes: {dnet!r} is not a "
                                                           "network number (1..65534)")
        if mode != "ipv6" and (n.get("vmac") or n.get("peers")):
            yield (("networks", name), f"network {name}: vmac and peers are only for mode = \"ipv6\"")
        if mode == "foreign" and not n.get("bbmd_addr"):
            yield (("networks", name, "bbmd_addr"), f"network {name}: mode = \"foreign\" needs bbmd_addr")
        if mode != "foreign" and n.get("bbmd_addr"):
            yield (("networks", name, "bbmd_addr"), f"network {name}: bbmd_addr is only for mode = \"foreign\"")
        if not n.get("address") and not n.get("interface"):
            yield (("networks", name), f"network {name}: set address (e.g. \"192.168.1.10/24\") or interface")
    seen_inst: dict[tuple, str] = {}
    for dev in config.devices.values():
        ds = dev.settings
        path = ("devices", dev.id)
        if ds.get("device_instance") is None:
            yield (path, f"device {dev.id}: missing required key 'device_instance'")
        net = ds.get("network")
        if net is None and len(nets) > 1:
            yield (path, f"device {dev.id}: several networks ({', '.join(nets)}): say which with network = ...")
        elif net is not None and net not in nets:
            yield (path + ("network",), f"device {dev.id}: no network {net!r} (known: {', '.join(nets) or 'none'})")
        key = (net or next(iter(nets), None), ds.get("device_instance"))
        if key[1] is not None and key in seen_inst:
            yield (path + ("device_instance",), f"device {dev.id}: instance {key[1]} on network {key[0]} is "
                                                f"already device {seen_inst[key]}")
        seen_inst[key] = dev.id
        for p in dev.points.values():
            if p.binding.get("object") is None:
                yield (path + ("points", p.name), f"point {p.id}: missing required key 'object'")
