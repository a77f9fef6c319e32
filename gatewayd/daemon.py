"""The trio main: nursery tree, supervisor, reload, signals, shutdown (writes: gatewayd/writes.py).

Nursery tree (outermost first), in the shape of hypercorn's trio runner::

    stores (state.db, history.db, outbox.db)           opened first, closed last
      core nursery   recorder, stale checker, retention, watchdog, signals, asyncio bridge
        connector nursery   one supervised task per connector instance
          driver nursery    one supervised task per driver instance + the RPC server

Each driver/connector instance runs under :class:`Runner`, which restarts it with
backoff (1 s doubling to 60 s) when it raises and never disturbs the others.
``READY=1`` goes to systemd only after every instance reported started or failed
(or the startup timeout passed) and the control socket listens. An instance
that failed to start (or is crash-looping) is named in the READY ``STATUS=``
text (``degraded: driver X failed to start (...)``), in the ready log line
(error level) and in ``gateway.status`` (``degraded``); STATUS is refreshed when
it starts later.

Shutdown (SIGTERM/SIGINT/``gateway.stop``): drivers and the RPC server stop
first (nothing new is accepted); the recorder commits every event already
accepted, however long that takes (``shutdown_grace`` never discards accepted
values); then every connector's ``drain()`` runs concurrently for what remains
of ``[gateway] shutdown_grace`` (counted from the stop request), after which
connectors are cancelled; current values are saved and the stores close last.
Reload (SIGHUP/``config.reload``) parses and validates the new file
first — a bad file changes nothing — then restarts only changed instances.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any

import trio

from . import __version__
from .bus import Bus
from .config import Config, ConfigError, ConnectorConfig, DriverConfig, load_config
from .events import ConfigReloaded
from .plugins import PluginRegistry
from .points import PointTable
from .writes import WRITE_TIMEOUT, WriteProtocol  # noqa: F401 - WRITE_TIMEOUT kept for callers

log = logging.getLogger("gatewayd")

__all__ = ["Gateway", "Runner", "run_daemon"]

START_TIMEOUT = 30.0


def _leaf(e: BaseException) -> BaseException:
    """The single real error inside nested exception groups (or the group itself)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


class Runner:
    """Supervises one driver or connector instance: start, crash, backoff, restart."""

    def __init__(self, gw: "Gateway", kind: str, cfg: DriverConfig | ConnectorConfig, cls: type) -> None:
        self.gw = gw
        self.kind = kind
        self.cfg = cfg
        self.cls = cls
        self.id = cfg.id
        self.instance: Any = None
        self.state = "starting"
        self.crashes = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.scope = trio.CancelScope()
        self.ready = trio.Event()
        self.done = trio.Event()
        self.start_failed = False  # the last attempt raised before reporting started

    def info(self) -> dict:
        d = {"id": self.id, "type": self.cfg.type, "enabled": self.cfg.enabled, "state": self.state,
             "crashes": self.crashes, "last_error": self.last_error, "started_at": self.started_at}
        if self.kind == "driver":
            d["devices"] = len(self.cfg.devices)
            d["points"] = sum(len(dev.points) for dev in self.cfg.devices.values())
        if self.instance is not None:
            try:
                d.update(self.instance.status() or {})
            except Exception as e:  # a status() bug must not break drivers.list
                d["status_error"] = f"{type(e).__name__}: {e}"
        return d

    def _make(self):
        from .plugin import ConnectorContext, DriverContext

        ctx = (DriverContext if self.kind == "driver" else ConnectorContext)(self.gw, self.cfg)
        return self.cls(ctx)

    async def run(self) -> None:
        backoff = 1.0
        fields = {"DRIVER" if self.kind == "driver" else "CONNECTOR": self.id}
        try:
            with self.scope:
                if not self.cfg.enabled:
                    self.state = "disabled"
                    self.ready.set()
                    await trio.sleep_forever()
                while True:
                    t0 = trio.current_time()
                    started = False
                    try:
                        self.instance = self._make()
                        async with trio.open_nursery() as n:
                            started = False
                            await n.start(self.instance.run)
                            started = True
                            was_degraded = self.start_failed
                            self.start_failed = False
                            self.state = "running"
                            self.started_at = time.time()
                            self.ready.set()
                            if was_degraded:
                                log.warning("%s %s started after %d failed attempt(s)", self.kind, self.id,
                                            self.crashes, extra=fields)
                                self.gw._status_changed()
                        self.state = "stopped"
                        log.warning("%s %s returned; restarting", self.kind, self.id, extra=fields)
                    except Exception as e:
                        self.crashes += 1
                        leaf = _leaf(e)
                        self.last_error = f"{type(leaf).__name__}: {leaf}"
                        self.state = "backoff"
                        first_failure = not self.start_failed
                        self.start_failed = self.start_failed or not started
                        self.ready.set()  # a crashing plugin must not hold READY back; it is reported instead
                        log.error("%s %s %s (%s); restarting in %.0fs", self.kind, self.id,
                                  "crashed" if started else "failed to start", self.last_error, backoff,
                                  exc_info=True, extra=fields)
                        if first_failure or started:
                            self.gw._status_changed()
                    if trio.current_time() - t0 > 60:
                        backoff = 1.0
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 60.0)
        finally:
            self.state = "stopped"
            self.ready.set()
            self.done.set()

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


class Gateway:
    """One running gateway: config, plugins, point table, bus, stores, runners.

    It implements :class:`gatewayd.plugin.GatewayAPI`, the part plugins reach
    through ``ctx.gateway`` and the ``gatewayd_rpc_methods`` hook
    (``gateway.driver_instance("modbus")``, ``gateway.write_point(...)``,
    ``gateway.state``, ``gateway.points``); nothing outside the runtime imports
    this module.
    """

    def __init__(self, config: Config, registry: PluginRegistry | None = None, *, notifier: Any = None) -> None:
        from .systemd import Notifier

        self.config = config
        self.registry = registry or PluginRegistry()
        self.notifier = notifier or Notifier.from_env()
        self.bus = Bus()
        self.points = PointTable(self.bus)
        self.writer = WriteProtocol(self)
        self.drivers: dict[str, Runner] = {}
        self.connectors: dict[str, Runner] = {}
        self.state: Any = None
        self.history: Any = None
        self.outbox: Any = None
        self.recorder: Any = None
        self.rpc: Any = None
        self.started = time.time()
        self.ready = trio.Event()
        self.stopping = trio.Event()
        self._reload_lock = trio.Lock()
        self._aio = None
        self._aio_lock = trio.Lock()
        self._core_nursery: trio.Nursery | None = None
        self._drv_nursery: trio.Nursery | None = None
        self._conn_nursery: trio.Nursery | None = None
        self.reloads = 0
        self.last_reload_error: list[str] | None = None

    # ------------------------------------------------------------------ lookups for plugins
    def driver_instance(self, type_name: str | None = None, driver_id: str | None = None) -> Any:
        """The running instance of driver ``driver_id``, or the only driver of ``type_name``.

        Raises ``RpcError`` (not found / unavailable) with a message for the operator.
        """
        from .rpc import INVALID_PARAMS, NOT_FOUND, UNAVAILABLE, RpcError

        if driver_id is not None:
            r = self.drivers.get(driver_id)
            if r is None or (type_name and r.cfg.type != type_name):
                raise RpcError(NOT_FOUND, f"no {type_name or ''} driver {driver_id!r}".replace("  ", " "))
        else:
            cands = [r for r in self.drivers.values() if type_name is None or r.cfg.type == type_name]
            if not cands:
                raise RpcError(NOT_FOUND, f"no {type_name} driver is configured")
            if len(cands) > 1:
                raise RpcError(INVALID_PARAMS, f"several {type_name} drivers ({', '.join(r.id for r in cands)}): "
                                               "say which with driver=...")
            r = cands[0]
        if r.instance is None or r.state != "running":
            raise RpcError(UNAVAILABLE, f"driver {r.id!r} is not running ({r.state}"
                                        + (f": {r.last_error}" if r.last_error else "") + ")")
        return r.instance

    async def asyncio_bridge(self):
        """The one asyncio bridge of the process, started on first use, stopped at shutdown."""
        async with self._aio_lock:
            if self._aio is None:
                from .aio import open_asyncio_bridge

                async def host(task_status=trio.TASK_STATUS_IGNORED):
                    async with open_asyncio_bridge() as aio:
                        task_status.started(aio)
                        await trio.sleep_forever()

                assert self._core_nursery is not None, "asyncio bridge requested before the gateway runs"
                self._aio = await self._core_nursery.start(host)
            return self._aio

    def write_lock(self, device_id: str, key: Any = None) -> trio.Lock:
        """The gateway-wide read-modify-write lock of ``(device_id, key)`` (see :mod:`gatewayd.writes`)."""
        return self.writer.device_lock(device_id, key)

    def outbox_cursor(self, name: str):
        """The persisted outbox cursor ``name`` (created at the head when new)."""
        if self.outbox is None:
            raise RuntimeError("the outbox is not open")
        return self.outbox.cursor(name)

    # ------------------------------------------------------------------ writes
    async def write_point(self, point_id: str, value: Any, *, priority: int = 16, actor: str = "unknown") -> dict:
        """``points.write``: checks and limits, priority array, driver write, read-back, audit.

        ``value=None`` relinquishes ``priority``. Raises :class:`PointError` for a
        refused request and :class:`gatewayd.plugin.WriteError` when the device
        refused (the array is restored) or did not confirm (the command stays and is
        re-sent). See :mod:`gatewayd.writes`.
        """
        return await self.writer.write(point_id, value, priority=priority, actor=actor)

    async def audit(self, actor: str, action: str, target: str, detail: dict, ok: bool = True) -> None:
        try:
            await self.state.audit(actor, action, target, detail, ok=ok)
        except Exception:
            log.error("could not write the audit entry for %s %s", action, target, exc_info=True)

    # ------------------------------------------------------------------ outbox entries
    def decode_entry(self, entry) -> dict:
        """An outbox entry as an event dict (see ``gatewayd.recorder``)."""
        from .recorder import decode_entry

        return decode_entry(self, entry)

    # ------------------------------------------------------------------ reload
    async def reload(self, source: str = "SIGHUP") -> dict:
        """Apply the configuration file again; a reload that fails for any reason changes nothing.

        Phases: read and merge the files (worker thread), load the plugins they name
        (this, the registry's own thread), validate (worker thread, read-only
        registry), then apply. Any failure before applying — a syntax or schema
        error, a validator's surprise, a store error — refuses the reload with the
        reasons (``file:line:col: message``), logs them and leaves the running
        configuration untouched. Never raises (SIGHUP runs it in the core nursery).
        """
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                try:
                    new = await self._load_new_config()
                    pa = await self._preflight(new)
                except ConfigError as e:
                    return self._refuse(source, [str(p) for p in e.problems])
                except Exception as e:
                    log.error("reload (%s): unexpected error while reading the new configuration", source,
                              exc_info=True)
                    return self._refuse(source, [f"{self.config.path}:1:1: the new configuration could not be "
                                                 f"checked ({type(e).__name__}: {e}); see the log"])
                for w in new.warnings:
                    log.warning("reload (%s): %s", source, w)
                try:
                    changed = await self._apply(new, pa)
                except Exception as e:
                    # past the point of no return: what could be applied runs; say so loudly
                    log.error("reload (%s) failed while applying the new configuration", source, exc_info=True)
                    self.last_reload_error = [f"applying the configuration failed: {type(e).__name__}: {e}"]
                    self.bus.publish(ConfigReloaded(time.time(), False, (), self.last_reload_error[0]))
                    return {"ok": False, "errors": self.last_reload_error, "changed": []}
                self.reloads += 1
                self.last_reload_error = None
                log.info("reload (%s) applied: %s", source, ", ".join(changed) or "nothing changed")
                self.bus.publish(ConfigReloaded(time.time(), True, tuple(changed)))
                return {"ok": True, "errors": [], "changed": changed,
                        **({"warnings": [str(w) for w in new.warnings]} if new.warnings else {})}
            finally:
                self.notifier.ready(status=self._status_line())

    async def _reload_guarded(self, source: str) -> None:
        """A reload started by a signal: whatever happens, it never reaches the core nursery."""
        try:
            await self.reload(source)
        except Exception:
            log.error("reload (%s) failed; the daemon keeps running", source, exc_info=True)

    def _refuse(self, source: str, errors: list[str]) -> dict:
        _release_memory()  # a big refused file's parse garbage goes back to the OS, not kept in the heap
        self.last_reload_error = errors
        text = "\n".join(errors)
        log.error("reload (%s) refused, the running configuration is unchanged:\n%s", source, text)
        self.bus.publish(ConfigReloaded(time.time(), False, (), text))
        return {"ok": False, "errors": errors, "changed": []}

    async def _load_new_config(self) -> Config:
        """Read + validate in worker threads; plugins load on this (the registry's) thread only."""
        from .config import read_config, validate_config

        raw = await trio.to_thread.run_sync(read_config, self.config.path)
        errors = self.registry.load_for(raw)
        try:
            return await trio.to_thread.run_sync(lambda: validate_config(raw, self.registry, plugin_errors=errors))
        finally:
            del raw  # a large refused file must not stay referenced

    async def _preflight(self, new: Config) -> dict:
        """What applying needs and can fail (the state store's priority arrays) read before anything stops."""
        return self.state.load_priority_arrays() if self.state else {}

    async def _apply(self, new: Config, pa: dict | None = None) -> list[str]:
        old = self.config
        changed: list[str] = []
        for key in ("control",):
            if getattr(old, key) != getattr(new, key):
                log.warning("[%s] changed: takes effect after a restart", key)
        # drivers
        for did, r in list(self.drivers.items()):
            nd = new.drivers.get(did)
            if nd is None or nd != r.cfg:
                await r.stop()
                del self.drivers[did]
                self.points.remove_driver(did)
                changed.append(f"driver {did} {'removed' if nd is None else 'restarted'}")
        for cid, r in list(self.connectors.items()):
            nc = new.connectors.get(cid)
            if nc is None or nc != r.cfg:
                await r.stop()
                del self.connectors[cid]
                changed.append(f"connector {cid} {'removed' if nc is None else 'restarted'}")
                if nc is None and self.outbox is not None:
                    pass  # keep its cursor: re-adding the connector resumes where it left off
        self.config = new
        if self.recorder is not None:
            self.recorder.configure(new)
        try:  # fresh: a write may have landed since the preflight read
            pa = self.state.load_priority_arrays() if self.state else {}
        except Exception:
            if pa is None:
                raise
            log.error("reload: re-reading priority arrays failed; using the ones read before applying",
                      exc_info=True)
        for did, dcfg in new.drivers.items():
            if did not in self.drivers:
                self.points.apply_driver(dcfg, pa)
                await self._start_runner("driver", dcfg)
                if not any(c.startswith(f"driver {did} ") for c in changed):
                    changed.append(f"driver {did} added")
        for cid, ccfg in new.connectors.items():
            if cid not in self.connectors:
                await self._start_runner("connector", ccfg)
                if not any(c.startswith(f"connector {cid} ") for c in changed):
                    changed.append(f"connector {cid} added")
        for kind, runners in (("driver", self.drivers), ("connector", self.connectors)):
            for rid, r in list(runners.items()):
                if r.instance is None or any(c.startswith(f"{kind} {rid} ") for c in changed):
                    continue
                try:
                    hook = getattr(r.instance, "reloaded", None)
                    if hook is not None:
                        await hook()
                except Exception as e:
                    log.error("%s %s: reloaded() failed: %s: %s", kind, rid, type(e).__name__, e, exc_info=True)
        self._build_rpc_methods()
        return changed

    async def _start_runner(self, kind: str, cfg) -> Runner:
        cls = self.registry.get(kind, cfg.type)
        r = Runner(self, kind, cfg, cls)
        (self.drivers if kind == "driver" else self.connectors)[cfg.id] = r
        nursery = self._drv_nursery if kind == "driver" else self._conn_nursery
        nursery.start_soon(r.run, name=f"{kind}:{cfg.id}")
        return r

    # ------------------------------------------------------------------ status
    def degraded(self) -> list[dict]:
        """Driver/connector instances not running although enabled: failed to start, or crashed and
        waiting to restart (``kind``, ``id``, ``state``, ``error``)."""
        out = []
        for kind, runners in (("driver", self.drivers), ("connector", self.connectors)):
            for r in runners.values():
                if r.state == "backoff" or (r.start_failed and r.state != "running"):
                    out.append({"kind": kind, "id": r.id, "state": r.state, "error": r.last_error})
        return out

    def _degraded_text(self) -> str:
        parts = []
        for d in self.degraded():
            r = (self.drivers if d["kind"] == "driver" else self.connectors).get(d["id"])
            what = "failed to start" if r is not None and r.start_failed else "crashed, restarting"
            parts.append(f"{d['kind']} {d['id']} {what} ({d['error']})")
        return "; ".join(parts)

    def _counts_line(self) -> str:
        counts: dict[str, int] = {}
        for p in self.points.points.values():
            counts[p.status] = counts.get(p.status, 0) + 1
        down = sum(1 for d in self.devices_down())
        return (f"{len(self.drivers)} drivers, {len(self.points.points)} points "
                f"({counts.get('ok', 0)} ok), {down} devices down")

    def _status_line(self) -> str:
        """systemd's STATUS text: counts, prefixed by what is degraded (by name) if anything is."""
        line = self._counts_line()
        bad = self._degraded_text()
        return f"degraded: {bad}; {line}" if bad else line

    def _status_changed(self) -> None:
        """An instance failed or recovered: refresh systemd's STATUS text (once READY was sent)."""
        if self.ready.is_set() and not self.stopping.is_set():
            self.notifier.status(self._status_line())

    def devices_down(self):
        return [d for d in self.points.devices.values() if d.conn_status == "down"]

    def status(self) -> dict:
        counts: dict[str, int] = {}
        for p in self.points.points.values():
            counts[p.status] = counts.get(p.status, 0) + 1
        return {
            "gateway": self.config.gateway.id, "version": __version__, "pid": os.getpid(),
            "config": self.config.path, "started": self.started, "uptime": time.time() - self.started,
            "ready": self.ready.is_set(), "degraded": self.degraded(),
            "reloads": self.reloads, "last_reload_error": self.last_reload_error,
            "drivers": len(self.drivers), "connectors": len(self.connectors),
            "devices": len(self.points.devices), "devices_down": len(self.devices_down()),
            "points": len(self.points.points), "points_by_status": counts,
            "events_published": self.bus.published, "values_ingested": self.points.ingested,
            "bus": self.bus.stats(), "recorder": self.recorder.stats() if self.recorder else None,
            "writes": self.writer.status(),
        }

    def _build_rpc_methods(self) -> None:
        """Rebuild the method table (plugins may have been loaded by a reload)."""
        from .api import build_registry

        self.rpc_registry = build_registry(self)

    # ------------------------------------------------------------------ main
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED, handle_signals: bool = True) -> None:
        """Run until :meth:`shutdown` (or SIGTERM/SIGINT when ``handle_signals``)."""
        from .api import build_registry
        from .recorder import Recorder
        from .store import HistoryStore, Outbox, StateStore

        cfg = self.config
        os.makedirs(cfg.gateway.state_dir, exist_ok=True)
        self.notifier.status("opening stores")
        self.state = StateStore(cfg.state_path("state.db"))
        try:
            self.history = HistoryStore(cfg.state_path("history.db"))
            self.outbox = (Outbox(None, memory=True, max_age=cfg.outbox.max_age, max_bytes=cfg.outbox.max_bytes)
                           if cfg.outbox.memory else
                           Outbox(cfg.state_path("outbox.db"), max_age=cfg.outbox.max_age,
                                  max_bytes=cfg.outbox.max_bytes))
            pa = self.state.load_priority_arrays()
            current = self.history.load_current()
            self.points.load(cfg, pa, current)
            async with trio.open_nursery() as core:
                self._core_nursery = core
                self.recorder = Recorder(self)
                await core.start(self.recorder.run)
                core.start_soon(self._stale_loop)
                await core.start(self.writer.run)
                if handle_signals:
                    core.start_soon(self._signal_loop)
                from .systemd import run_watchdog

                core.start_soon(run_watchdog, self.notifier)
                from .backup import backup_loop

                core.start_soon(backup_loop, self)
                async with trio.open_nursery() as conn_n:
                    self._conn_nursery = conn_n
                    async with trio.open_nursery() as drv_n:
                        self._drv_nursery = drv_n
                        for dcfg in cfg.drivers.values():
                            await self._start_runner("driver", dcfg)
                        for ccfg in cfg.connectors.values():
                            await self._start_runner("connector", ccfg)
                        self.rpc_registry = build_registry(self)
                        await drv_n.start(self._serve_rpc)
                        with trio.move_on_after(START_TIMEOUT) as cs:
                            for r in list(self.drivers.values()) + list(self.connectors.values()):
                                await r.ready.wait()
                        if cs.cancelled_caught:
                            slow = [r.id for r in list(self.drivers.values()) + list(self.connectors.values())
                                    if not r.ready.is_set()]
                            log.warning("still starting after %.0fs: %s", START_TIMEOUT, ", ".join(slow))
                        self.ready.set()
                        self.notifier.ready(status=self._status_line())
                        bad = self._degraded_text()
                        if bad:
                            log.error("gatewayd %s ready, DEGRADED: %s; %s; control socket %s", __version__, bad,
                                      self._counts_line(), cfg.control.socket)
                        else:
                            log.info("gatewayd %s ready: %s; control socket %s", __version__, self._status_line(),
                                     cfg.control.socket)
                        task_status.started(self)
                        await self.stopping.wait()
                        deadline = trio.current_time() + cfg.gateway.shutdown_grace
                        self.notifier.stopping()
                        log.info("stopping: drivers first, then the recorder commits everything accepted, then "
                                 "connectors drain within the rest of shutdown_grace (%.1fs)",
                                 cfg.gateway.shutdown_grace)
                        drv_n.cancel_scope.cancel()
                    # nothing new is accepted now; committing what was accepted is not bounded by the grace
                    await self.recorder.drain()
                    await self._stop_connectors(deadline)
                    conn_n.cancel_scope.cancel()
                with trio.move_on_after(max(1.0, cfg.gateway.shutdown_grace)):
                    await self.recorder.final_flush()
                core.cancel_scope.cancel()
        finally:
            for store in (self.outbox, self.history, self.state):
                if store is not None:
                    try:
                        store.close()
                    except Exception:  # pragma: no cover
                        log.error("closing a store failed", exc_info=True)
            log.info("stopped")
            if hasattr(self.notifier, "close"):
                self.notifier.close()

    async def _stop_connectors(self, deadline: float) -> None:
        """Call every running connector's ``drain()`` concurrently until ``deadline``, then cancel them all.

        The recorder has committed everything by now, so a connector draining sees the final
        outbox head. A ``drain()`` that raises is logged; one still running at the deadline is
        cancelled with its connector.
        """
        if not self.connectors:
            return

        async def drain_one(r: Runner) -> None:
            inst = r.instance
            if inst is None or r.state != "running":
                return
            try:
                await inst.drain()
            except Exception:
                log.error("connector %s: drain() failed at shutdown", r.id, exc_info=True,
                          extra={"CONNECTOR": r.id})

        with trio.move_on_at(deadline) as cs:
            async with trio.open_nursery() as n:
                for r in self.connectors.values():
                    n.start_soon(drain_one, r)
        if cs.cancelled_caught:
            log.warning("shutdown_grace ended while connectors were draining; cancelling them")
        for r in self.connectors.values():
            r.scope.cancel()
        for r in self.connectors.values():
            await r.done.wait()

    def shutdown(self) -> None:
        """Ask the gateway to stop (idempotent)."""
        self.stopping.set()

    async def _serve_rpc(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from .rpc import RoleMap, serve_unix

        ctl = self.config.control
        d = os.path.dirname(os.path.abspath(ctl.socket))
        os.makedirs(d, exist_ok=True)
        role_map = RoleMap.from_config(admin=ctl.admin, operator=ctl.operator, viewer=ctl.viewer,
                                       audit=getattr(ctl, "audit", ["role:operator"]))
        self.rpc = _RegistryHolder(self)
        limits = {k: getattr(ctl, k) for k in ("max_connections", "max_connections_per_uid", "max_watchers",
                                               "idle_timeout", "request_timeout") if hasattr(ctl, k)}
        await serve_unix(ctl.socket, self.rpc, role_map, mode=ctl.socket_mode, group=ctl.socket_group,
                         max_request_bytes=ctl.max_request_bytes, task_status=task_status, **limits)

    async def _stale_loop(self) -> None:
        while True:
            await trio.sleep(min(1.0, _min_stale(self.points) / 4))
            self.points.check_stale()

    async def _signal_loop(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    self._core_nursery.start_soon(self._reload_guarded, "SIGHUP")
                else:
                    log.info("received %s", signal.Signals(sig).name)
                    self.shutdown()


def _release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), best effort."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _min_stale(points: PointTable) -> float:
    m = math.inf
    for p in points.points.values():
        if p.cfg.stale_time < m:
            m = p.cfg.stale_time
    return m if m != math.inf else 4.0


class _RegistryHolder:
    """Lets the RPC server see a rebuilt method table after a reload."""

    def __init__(self, gw: Gateway) -> None:
        self._gw = gw

    def __getattr__(self, name):
        return getattr(self._gw.rpc_registry, name)


async def run_daemon(config_path: str, *, log_level: str | None = None) -> int:
    """``gatewayd run``: load, validate, run until signalled. Returns the exit code."""
    from .systemd import Notifier

    registry = PluginRegistry()
    try:
        config = load_config(config_path, registry=registry)
    except ConfigError as e:
        log.error("configuration has %d problem(s), not starting:\n%s", len(e.problems), e)
        return 2
    gw = Gateway(config, registry, notifier=Notifier.from_env())
    await gw.run()
    return 0


def dumps(obj: Any) -> str:  # pragma: no cover - small helper used by the CLI
    return json.dumps(obj, default=str, ensure_ascii=False)
