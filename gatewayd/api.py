"""The core's JSON-RPC methods (plugins add theirs through ``gatewayd_rpc_methods``).

Roles: viewer reads; operator writes points, runs scans and accepts/ignores
discoveries; admin reloads and validates the configuration. Every mutating
call is audited with the caller's identity (SO_PEERCRED).
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import functools
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

import trio

from . import __version__
from .config import ConfigError, load_config
from .events import EVENT_TYPES, ValueChanged, event_to_dict
from .points import PointError

if TYPE_CHECKING:  # pragma: no cover
    from .plugin import GatewayAPI

log = logging.getLogger("gatewayd.api")


def _parse_time(v: Any, name: str) -> float | None:
    """Epoch seconds, RFC 3339, or relative ``-15m``/``-2h``/``-7d``/``now``."""
    from .config import parse_duration
    from .rpc import INVALID_PARAMS, RpcError

    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if s == "now":
            return time.time()
        if s.startswith("-"):
            try:
                return time.time() - parse_duration(s[1:])
            except ValueError:
                pass
        try:
            return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise RpcError(INVALID_PARAMS, f"{name}: {v!r} is not a time (epoch seconds, RFC 3339, or relative like \"-1h\")")


AUDIT_PAGE_MAX = 1000


def _parse_cursor(cursor: Any) -> tuple[float, int] | None:
    """``"<ts>/<id>"`` (an audit entry's ``cursor``) -> (ts, id)."""
    from .rpc import INVALID_PARAMS, RpcError

    if cursor is None:
        return None
    try:
        ts, _, i = str(cursor).partition("/")
        return float(ts), int(i)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"cursor {cursor!r} is not an audit cursor (the \"cursor\" of the last "
                                       "entry of the previous page)") from None


class _Shared:
    """Per-gateway state of the methods that outlives a rebuilt method table (reloads)."""

    def __init__(self) -> None:
        self.audit_queries = trio.Lock()
        self.watchers: dict[int, int] = {}

    def watching(self) -> int:
        return sum(self.watchers.values())


_SHARED: "weakref.WeakKeyDictionary[Any, _Shared]" = weakref.WeakKeyDictionary()


def _shared(gw: Any) -> _Shared:
    st = _SHARED.get(gw)
    if st is None:
        st = _SHARED[gw] = _Shared()
    return st


def _secret_values(path: str) -> list[str]:
    """Every value a ``{ env = ... }`` / ``{ file = ... }`` in ``path`` (and its includes) resolves to,
    resolved as the loader does; unreadable files and unparsable TOML contribute nothing."""
    import glob
    import os
    import tomllib

    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            if len(v) == 1 and next(iter(v)) in ("env", "file") and isinstance(next(iter(v.values())), str):
                (kind, ref), = v.items()
                if kind == "env":
                    val = os.environ.get(ref)
                else:
                    try:
                        with open(ref, encoding="utf-8", errors="replace") as fh:
                            val = fh.read(1 << 16).rstrip("\r\n")
                    except OSError:
                        val = None
                if val:
                    found.append(val)
                return
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    def read(p: str) -> dict:
        try:
            with open(p, "rb") as fh:
                return tomllib.load(fh)
        except (OSError, ValueError):
            return {}

    main = read(path)
    walk(main)
    includes = main.get("include", [])
    if isinstance(includes, list):
        base = os.path.dirname(os.path.abspath(path))
        for pattern in includes:
            if isinstance(pattern, str):
                for inc in sorted(glob.glob(os.path.join(base, pattern)))[:1000]:
                    walk(read(inc))
    return found


_TOKEN = None


def _redact(text: str, secrets: list[str]) -> str:
    """``text`` without any secret value: whole values, and any word of 4+ characters that is part of one
    (a validator may quote a piece of a value), become ``***``."""
    global _TOKEN
    import re

    if not secrets:
        return text
    for sv in sorted(secrets, key=len, reverse=True):
        text = text.replace(sv, "***")
    if _TOKEN is None:
        _TOKEN = re.compile(r"[^\s'\"{}()\[\],:;=]{4,}")
    return _TOKEN.sub(lambda m: "***" if any(m.group(0) in sv for sv in secrets) else m.group(0), text)


def _unwatch(shared: _Shared, call: Any) -> None:
    from .rpc import Role

    if call.role >= Role.ADMIN:
        return
    n = shared.watchers.get(call.uid, 0) - 1
    if n > 0:
        shared.watchers[call.uid] = n
    else:
        shared.watchers.pop(call.uid, None)


def build_registry(gw: "GatewayAPI"):
    """A fresh method table: core methods + every loaded plugin's."""
    from .plugin import DISCOVERY, WriteError, supports
    from .rpc import (AUDIT, CONFLICT, INVALID_PARAMS, LIMIT_EXCEEDED, NOT_FOUND, UNAVAILABLE, MethodRegistry, Role,
                      RpcError)

    async def audit_hook(actor, method, params, ok, error):
        if method in ("points.write", "points.relinquish"):
            return  # write_point audits these itself, with the effective value
        await gw.audit(actor, method, str(params.get("point") or params.get("driver") or ""),
                       {"params": params, **({"error": error} if error else {})}, ok=ok)

    reg = MethodRegistry(audit=audit_hook)
    audit_queries = _shared(gw).audit_queries

    def point_errors(fn):
        async def wrapper(call, *args, **kw):
            try:
                return await fn(call, *args, **kw)
            except PointError as e:
                code = NOT_FOUND if str(e).startswith("unknown point") else INVALID_PARAMS
                raise RpcError(code, str(e)) from None
            except WriteError as e:
                raise RpcError(CONFLICT if "not running" not in str(e) else UNAVAILABLE, str(e)) from None
        return functools.wraps(fn)(wrapper)

    # ---------------------------------------------------------------- gateway
    async def gateway_status(call):
        """Uptime, counts, points by status, bus and recorder figures."""
        return gw.status()

    async def gateway_version(call):
        """Version of gatewayd and of the loaded plugins."""
        import importlib.metadata as md
        import sys

        plugins = {}
        for name, mod in gw.registry.loaded.items():
            plugins[name] = getattr(mod, "__version__", None)
        libs = {}
        for lib in ("trio", "pluggy", "tomlkit", "apsw", "cffi", "pymodbus", "bacpypes3", "asyncua", "paho-mqtt"):
            try:
                libs[lib] = md.version(lib)
            except md.PackageNotFoundError:
                pass
        return {"gatewayd": __version__, "python": sys.version.split()[0], "plugins": plugins, "libraries": libs}

    reg.add("gateway.status", gateway_status, role=Role.VIEWER)
    reg.add("gateway.version", gateway_version, role=Role.VIEWER)

    # ---------------------------------------------------------------- drivers / devices / connectors
    async def drivers_list(call):
        """Every driver instance with its state, crashes and driver figures."""
        return [r.info() for r in gw.drivers.values()]

    async def devices_list(call, driver: str | None = None, status: str | None = None):
        """Devices with conn_status/conn_state, failures, backoff and driver details."""
        out = []
        for d in gw.points.devices.values():
            if driver and d.driver != driver:
                continue
            if status and d.conn_status != status:
                continue
            info = d.as_dict()
            info["points"] = len(gw.points.by_device.get(d.device, ()))
            out.append(info)
        return out

    async def connectors_status(call, connector: str | None = None):
        """Backlog, oldest age, delivered, dropped, last error, connection state per connector."""
        out = []
        for r in gw.connectors.values():
            if connector and r.id != connector:
                continue
            info = r.info()
            info["outbox"] = None
            if gw.outbox is not None and r.id in gw.outbox.cursor_names():
                try:
                    info["outbox"] = gw.outbox.cursor(r.id).status()
                except Exception as e:  # a status read must never break the listing
                    info["outbox"] = {"error": str(e)}
            out.append(info)
        if connector and not out:
            raise RpcError(NOT_FOUND, f"no connector {connector!r}")
        return out

    reg.add("drivers.list", drivers_list, role=Role.VIEWER)
    reg.add("devices.list", devices_list, role=Role.VIEWER)
    reg.add("connectors.status", connectors_status, role=Role.VIEWER)
    reg.add("connectors.list", connectors_status, role=Role.VIEWER)

    # ---------------------------------------------------------------- points
    async def points_list(call, driver: str | None = None, device: str | None = None, glob: str | None = None,
                          tag: str | None = None, status: str | None = None, limit: int | None = None):
        """Points with value, unit, status; filter by driver, device, glob on the id, tag, status."""
        pts = gw.points.select(driver=driver, device=device, glob=glob, tag=tag)
        out = [p.snapshot() for p in pts if status is None or p.status == status]
        return out[:limit] if limit else out

    async def points_read(call, points: list | str):
        """Current value/status of one point id or a list of them."""
        ids = [points] if isinstance(points, str) else points
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise RpcError(INVALID_PARAMS, "points must be a point id or a list of point ids")
        out = []
        for pid in ids:
            out.append(gw.points.get(pid).snapshot())
        return out if isinstance(points, list) else out[0]

    async def points_write(call, point: str, value: Any, priority: int = 16):
        """Command ``value`` at ``priority`` (1 highest .. 16 default); null relinquishes."""
        return await gw.write_point(point, value, priority=priority, actor=call.actor)

    async def points_relinquish(call, point: str, priority: int = 16):
        """Release the command at ``priority``; the next level (or relinquish default) takes over."""
        return await gw.write_point(point, None, priority=priority, actor=call.actor)

    async def points_priority_array(call, point: str):
        """The 16 slots, relinquish default, effective value and active level."""
        p = gw.points.get(point)
        return {"point": point, **p.pa.as_dict()}

    async def points_watch(call, glob: str | None = None, driver: str | None = None, device: str | None = None,
                           tag: str | None = None, kinds: list | None = None):
        """Stream ``points.changed`` notifications (batches of events) until the client leaves."""
        kinds = kinds or ["value", "status"]
        bad = [k for k in kinds if k not in EVENT_TYPES]
        if bad:
            raise RpcError(INVALID_PARAMS, f"unknown event kinds {bad}; known: {sorted(EVENT_TYPES)}")
        classes = tuple(EVENT_TYPES[k] for k in kinds)
        shared = _shared(gw)
        cap = getattr(gw.config.control, "max_watchers", 32)
        per_uid = max(1, cap // 4)
        if call.role < Role.ADMIN:  # admins are not counted against others' streams
            if shared.watching() >= cap:
                raise RpcError(LIMIT_EXCEEDED, f"too many points.watch streams ({cap} open; [control] "
                                               "max_watchers): try again later")
            if shared.watchers.get(call.uid, 0) >= per_uid:
                raise RpcError(LIMIT_EXCEEDED, f"too many points.watch streams of {call.actor} ({per_uid} open; "
                                               "a quarter of [control] max_watchers): end some first")
            shared.watchers[call.uid] = shared.watchers.get(call.uid, 0) + 1

        def accept(ev):
            if not isinstance(ev, classes):
                return False
            pid = getattr(ev, "point", None)
            if glob and (pid is None or not fnmatch.fnmatchcase(pid, glob)):
                return False
            if driver and getattr(ev, "driver", None) != driver:
                return False
            if device and getattr(ev, "device", None) != device:
                return False
            if tag and (not isinstance(ev, ValueChanged) or tag not in ev.tags):
                return False
            return True

        try:
            sub = gw.bus.subscribe(f"watch:{call.actor}", accept=accept)
        except BaseException:
            _unwatch(shared, call)
            raise
        try:
            async with trio.open_nursery() as n:
                async def closer():
                    await call.closed.wait()
                    n.cancel_scope.cancel()
                n.start_soon(closer)
                async for batch in sub:
                    try:
                        await call.notify("points.changed", {"events": [event_to_dict(e) for e in batch],
                                                             "dropped": sub.dropped})
                    except trio.ClosedResourceError:
                        break  # the client left
        finally:
            sub.close()
            _unwatch(shared, call)
        return {"dropped": sub.dropped}

    reg.add("points.list", points_list, role=Role.VIEWER)
    reg.add("points.read", point_errors(points_read), role=Role.VIEWER)
    reg.add("points.write", point_errors(points_write), role=Role.OPERATOR, mutating=True)
    reg.add("points.relinquish", point_errors(points_relinquish), role=Role.OPERATOR, mutating=True)
    reg.add("points.priority_array", point_errors(points_priority_array), role=Role.VIEWER)
    reg.add("points.watch", points_watch, role=Role.VIEWER)

    # ---------------------------------------------------------------- history / audit
    async def history_query(call, point: str, start: Any = None, end: Any = None, limit: int = 1000,
                            downsample: Any = None, order: str = "asc"):
        """Samples of one point in [start, end]; ``downsample`` (seconds or "5m") buckets them."""
        from .config import parse_duration

        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
            raise RpcError(INVALID_PARAMS, "limit must be an integer 1..100000")
        if order not in ("asc", "desc"):
            raise RpcError(INVALID_PARAMS, "order must be \"asc\" or \"desc\"")
        ds = None
        if downsample is not None:
            try:
                ds = parse_duration(downsample)
            except ValueError as e:
                raise RpcError(INVALID_PARAMS, f"downsample: {e}") from None
            if ds <= 0:
                raise RpcError(INVALID_PARAMS, "downsample must be > 0")
        rows = await gw.history.query_async(point, start=_parse_time(start, "start"), end=_parse_time(end, "end"),
                                            limit=limit, downsample=ds, order=order)
        return {"point": point, "samples": rows}

    async def audit_list(call, since: Any = None, until: Any = None, actor: str | None = None,
                         action: str | None = None, target: str | None = None, limit: int = 100,
                         cursor: str | None = None):
        """Audit entries, newest first, at most 1000 a page; filter by time, actor, action, target glob.

        Each entry has a ``cursor``: pass the last one's to get the next (older) page.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= AUDIT_PAGE_MAX:
            raise RpcError(INVALID_PARAMS, f"limit must be an integer 1..{AUDIT_PAGE_MAX} "
                                           "(page with cursor=<the last entry's cursor>)")
        before = _parse_cursor(cursor)
        since_ts, until_ts = _parse_time(since, "since"), _parse_time(until, "until")
        if before is not None:
            until_ts = before[0] if until_ts is None else min(until_ts, before[0])

        def query() -> list[dict]:
            # newest first by (ts, id): entries at the cursor's ts with an id >= the cursor's were seen already
            want = limit
            while True:
                rows = gw.state.list_audit(since=since_ts, until=until_ts, actor=actor, action=action,
                                           target_glob=target, limit=want)
                out = [r for r in rows if before is None or (r["ts"], r["id"]) < before]
                if len(out) >= limit or len(rows) < want or want >= 8 * AUDIT_PAGE_MAX:
                    return out[:limit]
                want *= 4

        async with audit_queries:  # one big query at a time; the trio thread never runs it
            rows = await trio.to_thread.run_sync(query)
        for r in rows:
            r["cursor"] = f"{r['ts']!r}/{r['id']}"
        return rows

    reg.add("history.query", history_query, role=Role.VIEWER)
    reg.add("audit.list", audit_list, role=Role.VIEWER, grant=AUDIT)

    # ---------------------------------------------------------------- config
    async def config_validate(call, path: str | None = None):
        """Validate a configuration file (default: the running one) without applying it.

        Admin only. Plugins the file names are loaded into a scratch registry thrown away afterwards
        (the running daemon's is never touched), and no value read from ``{ env = ... }`` /
        ``{ file = ... }`` appears in the answer.
        """
        from .plugins import PluginRegistry

        target = path or gw.config.path

        def validate() -> dict:
            secrets = _secret_values(target)
            try:
                cfg = load_config(target, registry=PluginRegistry())
            except ConfigError as e:
                return {"ok": False, "errors": [_redact(str(p), secrets) for p in e.problems]}
            return {"ok": True, "errors": [], "summary": _redact(cfg.summary(), secrets)}

        return await trio.to_thread.run_sync(validate)

    async def config_reload(call):
        """Apply the configuration file again; a bad file changes nothing."""
        return await gw.reload(source=f"RPC by {call.actor}")

    reg.add("config.validate", config_validate, role=Role.ADMIN)
    reg.add("config.reload", config_reload, role=Role.ADMIN, mutating=True)

    # ---------------------------------------------------------------- discovery
    async def discovery_scan(call, driver: str, **params):
        """Run a user-initiated scan of ``driver``; extra params go to the driver (e.g. range)."""
        inst = gw.driver_instance(None, driver)
        if not supports(inst, DISCOVERY):
            raise RpcError(UNAVAILABLE, f"driver {driver!r} has no discovery")
        try:
            return await inst.discover(**params)
        except TypeError as e:
            raise RpcError(INVALID_PARAMS, f"discovery.scan for {driver}: {e}") from None
        except WriteError as e:
            raise RpcError(UNAVAILABLE, str(e)) from None

    async def discovery_list(call, driver: str | None = None, status: str | None = None):
        """Discovered devices with their status (discovered/accepted/ignored/stale)."""
        return gw.state.discovery_list(driver=driver, status=status)

    def _find(driver: str, key: str) -> dict:
        for row in gw.state.discovery_list(driver=driver):
            if row["key"] == key:
                return row
        raise RpcError(NOT_FOUND, f"nothing discovered as {key!r} by driver {driver!r} (see discovery.list)")

    async def discovery_accept(call, driver: str, key: str, device_id: str | None = None):
        """Add a discovered device (and its profile points) to the TOML and start polling it."""
        from .config_edit import accept_message, add_device

        row = _find(driver, key)
        inst = gw.driver_instance(None, driver)
        try:
            dev_id, table = inst.accept_discovered(key, row["data"])
        except WriteError as e:
            raise RpcError(UNAVAILABLE, str(e)) from None
        dev_id = device_id or dev_id
        if dev_id in gw.points.devices:
            raise RpcError(CONFLICT, f"a device {dev_id!r} already exists: pass device_id=... to name it differently")
        try:
            written = await trio.to_thread.run_sync(add_device, gw.config, driver, dev_id, table)
        except (ValueError, OSError) as e:
            raise RpcError(CONFLICT, f"could not add {dev_id!r} to the configuration: {e}") from None
        result = await gw.reload(source=f"discovery.accept by {call.actor}")
        if not result["ok"]:
            raise RpcError(CONFLICT, "the device was written to " + written + " but the new configuration is "
                           "invalid: " + "; ".join(result["errors"]))
        await gw.state.discovery_set_status(driver, key, "accepted")
        hint = accept_message(gw.config, driver, dev_id, written)
        return {"device": dev_id, "file": written, "reload": result, **({"message": hint} if hint else {})}

    async def discovery_ignore(call, driver: str, key: str):
        """Mark a discovered device as ignored (a re-scan keeps the decision)."""
        _find(driver, key)
        await gw.state.discovery_set_status(driver, key, "ignored")
        return {"driver": driver, "key": key, "status": "ignored"}

    reg.add("discovery.scan", discovery_scan, role=Role.OPERATOR, mutating=True)
    reg.add("discovery.list", discovery_list, role=Role.VIEWER)
    reg.add("discovery.accept", discovery_accept, role=Role.ADMIN, mutating=True)
    reg.add("discovery.ignore", discovery_ignore, role=Role.OPERATOR, mutating=True)

    # ---------------------------------------------------------------- backups
    from .backup import register_backup_methods

    register_backup_methods(reg, gw)

    # ---------------------------------------------------------------- plugins
    gw.registry.add_rpc_methods(reg, gw)  # through pluggy, each plugin isolated
    return reg
